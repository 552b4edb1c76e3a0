"""Data-parallel ECHO gradients on 2 gloo ranks equal the single-process gradients.

The batch of 4 rollouts is split 2 + 2 across ranks, deliberately unbalanced: rank 0 holds long
actions and a sequence without observations, rank 1 short actions. Each rank's loss uses
`global_normalizers` (global action-token count and number of sequences with observations,
divided by the world size), and gradients are averaged over ranks as DDP/FSDP do. The result must
equal the gradient of the loss on the whole batch in one process. As a control, the same run with
per-rank (local) normalisers must NOT match, so the test can tell the difference.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import Qwen3Config, Qwen3ForCausalLM

from trainer.logprobs import sequence_logprobs
from trainer.loss import EchoLossConfig, echo_loss, global_normalizers

WORLD_SIZE = 2
CONFIG = EchoLossConfig(mode="echo", env_coef=0.3)  # a large lambda so the env term matters


def tiny_model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=0,
    )
    return Qwen3ForCausalLM(config)


def make_batch() -> dict[str, torch.Tensor]:
    """4 sequences of up to 12 tokens. Kinds: P prompt, A action, O observation, - padding."""
    layouts = [
        "PPAAAAAAOOA-",  # rank 0: long actions
        "PPAAAAAAAA--",  # rank 0: no observation at all
        "PPAOOOOOOOAO",  # rank 1: short actions, long observations
        "PPAOOAOO----",  # rank 1
    ]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 64, (4, 12), generator=generator)
    kinds = [[c for c in layout] for layout in layouts]
    attention_mask = torch.tensor([[c != "-" for c in row] for row in kinds], dtype=torch.long)
    input_ids = input_ids * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "action_mask": torch.tensor([[c == "A" for c in row] for row in kinds]),
        "observation_mask": torch.tensor([[c == "O" for c in row] for row in kinds]),
        # sampler log-probs: the policy's own shifted a little, so ratios differ from 1 and some clip
        "old_shift": torch.randn(4, 12, generator=generator) * 0.3,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]),
    }


def loss_and_grads(model, batch, normalizers=None) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logprobs = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], chunk_size=5)
    old = logprobs.detach() + batch["old_shift"]
    loss, _ = echo_loss(
        logprobs,
        old,
        batch["advantages"],
        batch["action_mask"],
        batch["observation_mask"],
        config=CONFIG,
        normalizers=normalizers,
    )
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def average_over_ranks(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    for grad in grads:
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        grad /= dist.get_world_size()
    return grads


def worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE)
    try:
        model = tiny_model()
        full = make_batch()
        shard = {key: value[2 * rank : 2 * rank + 2] for key, value in full.items()}
        normalizers = global_normalizers(shard["action_mask"], shard["observation_mask"])
        global_grads = average_over_ranks(loss_and_grads(model, shard, normalizers))
        local_grads = average_over_ranks(loss_and_grads(model, shard, None))
        if rank == 0:
            counts = [normalizers.action_tokens, normalizers.observation_sequences]
            torch.save(
                {"global": global_grads, "local": local_grads, "normalizers": counts}, os.path.join(out_dir, "grads.pt")
            )
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_gradients_equal_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    result = torch.load(tmp_path / "grads.pt")

    reference = loss_and_grads(tiny_model(), make_batch())

    # Global counts: 7 + 8 + 2 + 2 = 19 action tokens and 3 sequences with observations, / 2 ranks.
    assert result["normalizers"] == [19 / 2, 3 / 2]
    for distributed, single in zip(result["global"], reference, strict=True):
        torch.testing.assert_close(distributed, single, atol=1e-6, rtol=1e-5)
    largest_gap = max(
        (local - single).abs().max().item() for local, single in zip(result["local"], reference, strict=True)
    )
    assert largest_gap > 1e-4, "per-rank normalisers should differ from the single-process gradient"
