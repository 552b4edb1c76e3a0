"""Data-parallel training under torchrun: FSDP2, whole-batch normalisers, DCP checkpoints.

    torchrun --standalone --nproc-per-node 2 -m taskforge.cli -- train echo ...   # or: taskforge train echo --nproc 2

`trainer.train.train` and `trainer.sft.sft` call `init_distributed` first. Without torchrun's
variables (WORLD_SIZE unset or 1) everything here is a no-op and the loops run as one process.
With them, each rank:

- joins the process group (gloo on CPU, nccl on CUDA; a CUDA rank uses `cuda:LOCAL_RANK`);
- shards the policy with torch's `fully_shard`: every decoder layer, then the root (embeddings,
  final norm and LM head, which stay in one group so tied embeddings stay tied);
- trains on its share of the batch with the counts of the *whole* batch as loss denominators
  (`whole_batch_normalizers`), so FSDP's gradient average is the single-process gradient;
- runs the same number of forward/backward passes as every other rank (FSDP's all-gathers and
  reduce-scatters are collectives): a rank with fewer micro-batches runs zero-loss padding passes;
- saves and loads model + optimizer state as sharded torch.distributed.checkpoint (DCP) files,
  which load into any world size (DCP reshards), including one process.

The same DCP route is used by one process, so a checkpoint's layout does not depend on how many
ranks wrote it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MethodType

import torch
import torch.distributed as dist

from trainer.logprobs import sequence_logprobs
from trainer.loss import LossNormalizers, global_normalizers

# Ranks wait for each other at every collective; a step's rollouts on the slowest rank (16 x 16
# episodes at paper settings) can take far longer than torch's default 30 minutes.
COLLECTIVE_TIMEOUT = timedelta(hours=6)
# sequence_logprobs runs the decoder body and reads the LM-head weight itself instead of calling
# model.forward, so under FSDP it is registered as a forward method under this name.
LOGPROBS_METHOD = "taskforge_sequence_logprobs"


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, value) -> list:
        """Every rank's `value`, in rank order (a list of one without torchrun)."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value):
        """Rank 0's `value` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def max_over_ranks(self, value: int) -> int:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def sum_over_ranks(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item())


SINGLE_PROCESS = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT) and returns it with this rank's device. Without torchrun: (SINGLE_PROCESS, device)."""
    if not launched_by_torchrun():
        return SINGLE_PROCESS, device
    context = DistContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )
    if torch.device(device).type == "cuda":
        device = f"cuda:{context.local_rank}"  # one GPU per rank, whatever index the config named
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return context, device


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_model(model, compute_dtype: str | None = None) -> None:
    """FSDP2 in place: each decoder layer is one group, the root (embeddings, final norm, LM head) another.

    Parameters keep the model's dtype; gradients are reduced in float32 (a no-op for a float32
    model, and bf16 gradients averaged over many ranks would lose precision). `compute_dtype`
    ("bfloat16"/"float16") is FSDP's mixed precision: the sharded float32 parameters and Adam states
    stay the masters, and each layer is gathered in that dtype for forward and backward. A bf16 model
    trained at the paper's lr 1e-6 loses most updates to rounding (bf16 keeps ~3 digits); fp32 masters
    with bf16 compute do not."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    param_dtype = getattr(torch, compute_dtype) if compute_dtype else None
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.get_decoder().layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    # Without this the root's parameters would stay sharded during sequence_logprobs, which never
    # calls model.forward: registered, it gathers them (and FSDP's backward hooks follow it).
    setattr(model, LOGPROBS_METHOD, MethodType(sequence_logprobs, model))
    register_fsdp_forward_method(model, LOGPROBS_METHOD)


def policy_logprobs(model, input_ids, attention_mask, *, temperature: float = 1.0) -> torch.Tensor:
    """`sequence_logprobs`, through FSDP's gathering when the model is sharded."""
    method = getattr(model, LOGPROBS_METHOD, None)
    if method is None:
        return sequence_logprobs(model, input_ids, attention_mask, temperature=temperature)
    return method(input_ids, attention_mask, temperature=temperature)


def whole_batch_normalizers(
    action_mask: torch.Tensor, observation_mask: torch.Tensor, context: DistContext
) -> LossNormalizers:
    """The loss denominators of the whole batch: this rank's counts alone in one process, else the
    counts over all ranks divided by the world size (`trainer.loss.global_normalizers`)."""
    if not context.enabled:
        return LossNormalizers.from_masks(action_mask, observation_mask)
    return global_normalizers(action_mask, observation_mask)


def empty_masks(device) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a rank that holds no sequence this step (it still joins the normaliser all-reduce)."""
    empty = torch.zeros(0, 0, dtype=torch.bool, device=device)
    return empty, empty


def padding_pass(model, pad_token_id: int, device, *, backward: bool, temperature: float = 1.0) -> None:
    """A forward (and backward) pass that contributes nothing: a rank with fewer micro-batches than
    the others runs it so every rank takes part in the same FSDP collectives."""
    ids = torch.full((1, 2), pad_token_id, dtype=torch.long, device=device)
    logprobs = policy_logprobs(model, ids, torch.ones_like(ids), temperature=temperature)
    if backward:
        (logprobs.sum() * 0.0).backward()


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm as a float (a DTensor under FSDP)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns on every save/load without a process group; one process is a supported layout
    here (the same files, resharded on load), so the warning would only alarm the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_training_state(directory: Path, model, optimizer) -> None:
    """Model and optimizer state as DCP files in `directory`; every rank writes its own shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _single_process_is_intended():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))


def load_training_state(directory: Path, model, optimizer) -> None:
    """The inverse of `save_training_state`, into a model sharded for this job's world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with _single_process_is_intended():
        dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_model_state(model, context: DistContext) -> dict[str, torch.Tensor] | None:
    """The unsharded weights on rank 0's CPU (None on other ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not context.enabled:
        return model.state_dict()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not context.is_main:
        return None
    # Gathered, tied embeddings come back as two tensors; one object again lets save_pretrained
    # drop the LM head's copy as it does for the unsharded model, so both write the same files.
    if getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        names = {id(module): name for name, module in model.named_modules()}
        head = names.get(id(model.get_output_embeddings()))
        embeddings = names.get(id(model.get_input_embeddings()))
        if head is not None and embeddings is not None and f"{embeddings}.weight" in state:
            state[f"{head}.weight"] = state[f"{embeddings}.weight"]
    return state


def copy_weights_to(model, replica) -> None:
    """Loads the sharded model's current weights into an unsharded replica on every rank (a
    collective): the replica samples episodes in-process, where ranks run different numbers of
    forward passes and so cannot share FSDP's collectives."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    replica.load_state_dict(state, strict=False)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --nproc-per-node N -m taskforge.cli -- ARGS` for a command line
    with its --nproc option removed (what `--nproc N` re-executes)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "taskforge.cli",
        "--",  # else torchrun's parser takes our --run for an abbreviation of its --run-path
        *args,
    ]
