"""The RL training loop, top to bottom: rollouts in real sandboxes, advantages, ECHO update.

    for step in steps:
        tasks   <- tasks_per_step tasks (a deterministic function of seed and step)
        rollouts <- group_size episodes of the current policy per task, in Docker sandboxes
        advantages <- group-normalised rewards (GRPO)
        old log-probs <- one no-grad forward pass of the policy that sampled
        for epoch in epochs_per_batch: for micro-batch: one forward pass -> echo_loss -> backward
        metrics.jsonl += one line; every checkpoint_every steps: checkpoints/step-N

Modes: "echo" (GRPO + lambda * env CE), "grpo" (lambda 0), "env-only" (verifier-free: the reward
is never used). A run killed at any point resumes from its last checkpoint with the same command.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError

from taskforge.runner import append_jsonl, run_settings_mismatch
from trainer.advantages import group_advantages
from trainer.distributed import (
    SINGLE_PROCESS,
    DistContext,
    copy_weights_to,
    empty_masks,
    full_model_state,
    grad_norm_value,
    init_distributed,
    load_training_state,
    padding_pass,
    policy_logprobs,
    save_training_state,
    shard_model,
    shutdown,
    whole_batch_normalizers,
)
from trainer.loss import EchoLossConfig, LambdaSchedule, echo_loss
from trainer.rollout import Rollout, collate_rollouts

Mode = Literal["echo", "grpo", "env-only"]

# A short system prompt: the tiny default model reads every token of it on every turn.
TINY_SYSTEM_PROMPT = (
    "Solve the task in the Linux shell. Reply with one ```bash block per turn. Reply DONE when finished."
)


@dataclass
class TrainConfig:
    """Defaults are sized for the tiny CPU model; `paper()` gives the paper's values for real models."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # read by `from_file`'s validation, not a field

    mode: Mode = "echo"
    tasks: str = "tasks/sample"
    policy: str = "tiny"  # "tiny", a checkpoint directory (e.g. an SFT run's), or a HF model name
    steps: int = 10
    tasks_per_step: int = 2
    group_size: int = 4
    env_coef: float | None = None  # lambda; None: 0.05 for echo, 1.0 for env-only
    lambda_schedule: Literal["constant", "linear", "step"] = "constant"
    lambda_final: float = 0.0
    lambda_decay_steps: int = 1000
    lambda_step_every: int = 100
    lambda_step_factor: float = 0.5
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    epochs_per_batch: int = 2
    micro_batch_size: int = 4
    scale_advantages_by_std: bool = True
    temperature: float = 1.0
    max_new_tokens: int = 96  # per turn
    max_turns: int = 4
    # Context cap: a turn is sampled only if its prompt + max_new_tokens fits, else the episode ends with
    # context_exceeded (trainer.sampler.LocalModelPolicy). None: the model's max_position_embeddings.
    max_context_tokens: int | None = None
    command_timeout_sec: float = 10.0
    max_output_chars: int = 2000
    system_prompt: str | None = TINY_SYSTEM_PROMPT  # None: the agent loop's full prompt
    concurrency: int = 2  # episodes at once; in-process sampling batches their turns (trainer.sampler)
    # GPU route: sample from an OpenAI-compatible server with vLLM's token-id extension (vLLM,
    # `taskforge serve`) instead of in-process; None = in-process. See docs/gpu.md.
    sampler_url: str | None = None
    sampler_model: str | None = None
    # The dtype pushed weights are written in for the --sampler-url server (None: the trainer's own);
    # bfloat16 halves each push of float32 masters, and vLLM serves bf16.
    sampler_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    checkpoint_every: int = 5
    # Complete checkpoints kept (the newest ones; older ones are deleted after each save); None keeps
    # every one (an 8B checkpoint with its optimizer state is ~131 GB).
    keep_checkpoints: int | None = None
    seed: int = 0
    # Where the policy lives and trains: sampling inputs and training batches go to its device. An
    # unavailable device is an error (trainer.model.resolve_device); float32 is the tiny CPU model's.
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    # Recompute each decoder layer in the backward pass: a 16k-token episode of an 8B model needs it
    # (docs/gpu.md, memory); the tiny CPU model does not.
    gradient_checkpointing: bool = False
    # Under FSDP (--nproc / torchrun): compute in this dtype, keep float32 masters (dtype float32).
    # None: compute in the parameters' dtype. Ignored in one process.
    fsdp_compute_dtype: Literal["bfloat16", "float16"] | None = None

    @classmethod
    def paper(cls, **overrides) -> TrainConfig:
        """The public hyperparameters of the paper's reference implementation."""
        values = dict(
            env_coef=0.05,
            lr=1e-6,
            warmup_steps=20,
            weight_decay=0.01,
            grad_clip=0.2,
            clip_eps_low=0.2,
            clip_eps_high=0.2,
            kl_coef=0.0,
            tasks_per_step=16,
            group_size=16,
            epochs_per_batch=2,
            temperature=0.8,
            max_new_tokens=2048,
            max_turns=16,
            max_context_tokens=16_384,
            max_output_chars=50_000,
            command_timeout_sec=120.0,
            system_prompt=None,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_preset(cls, preset: str, config_file: Path | None = None, **overrides) -> TrainConfig:
        """What `taskforge train` runs: the preset ("tiny": the defaults, "paper": `paper()`), then the
        config file's keys over it, then the overrides (flags) that are not None."""
        if preset not in ("tiny", "paper"):
            raise ValueError(f"--preset must be tiny or paper, not {preset!r}")
        if config_file is not None:
            base = {k: v for k, v in asdict(cls.paper()).items() if k != "mode"} if preset == "paper" else {}
            return cls.from_file(config_file, base=base, **overrides)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return cls.paper(**overrides) if preset == "paper" else cls(**overrides)

    @classmethod
    def from_file(cls, path: Path, base: dict | None = None, **overrides) -> TrainConfig:
        """A JSON or TOML file of TrainConfig fields, validated by pydantic (`__pydantic_config__`: extra
        keys forbidden), so a misspelt key or a wrong-typed value is an error naming the file and the key
        instead of a silently ignored setting. The file's keys override `base` (a preset's settings, e.g.
        paper()'s system_prompt None, which TOML cannot write); overrides that are not None (command-line
        flags) win over both."""
        import tomllib

        text = Path(path).read_text()
        data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object of TrainConfig settings, got {type(data).__name__}")
        data = {**(base or {}), **data, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return TypeAdapter(cls).validate_python(data)
        except ValidationError as exc:
            raise ValueError(_settings_error(path, exc)) from None

    def __post_init__(self) -> None:
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(
                f"keep_checkpoints must be >= 1 (the newest checkpoint is what a run resumes from), "
                f"not {self.keep_checkpoints}"
            )

    def loss_config(self) -> EchoLossConfig:
        return EchoLossConfig(
            mode=self.mode,
            env_coef=None if self.mode == "grpo" else self.env_coef,
            clip_eps_low=self.clip_eps_low,
            clip_eps_high=self.clip_eps_high,
            kl_coef=self.kl_coef,
        )

    def schedule(self) -> LambdaSchedule:
        initial = self.loss_config().resolved_env_coef
        return LambdaSchedule(
            kind=self.lambda_schedule,
            initial=initial,
            final=self.lambda_final,
            decay_steps=self.lambda_decay_steps,
            step_every=self.lambda_step_every,
            step_factor=self.lambda_step_factor,
        )


def _settings_error(path: Path, exc: ValidationError) -> str:
    """One entry per bad key of a settings file: what is wrong and, for an unknown key, the closest known one."""
    known = [f.name for f in fields(TrainConfig)]
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"][:1])
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            close = difflib.get_close_matches(key, known, n=1)
            problems.append(f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        else:
            problems.append(f"setting {key!r}: {error['msg']}, got {error['input']!r}")
    problems = list(dict.fromkeys(problems))
    return (
        f"{path}: {'; '.join(problems)}. Fix or remove these keys; "
        f"the settings are TrainConfig's fields: {', '.join(known)}"
    )


@dataclass
class StepBatch:
    rollouts: list[Rollout] = field(default_factory=list)
    records: list = field(default_factory=list)


def _task_dirs(config: TrainConfig) -> list[Path]:
    from taskforge.tasks import discover_task_dirs

    return discover_task_dirs([Path(config.tasks)])


def tasks_for_step(task_dirs: list[Path], config: TrainConfig, step: int) -> list[Path]:
    """Deterministic in (seed, step): a resumed run trains on the same tasks it would have."""
    rng = random.Random(f"{config.seed}:{step}")
    return rng.sample(task_dirs, min(config.tasks_per_step, len(task_dirs)))


def collect_rollouts(
    model, tokenizer, task_dirs: list[Path], config: TrainConfig, out_dir: Path, step: int
) -> StepBatch:
    """group_size episodes of the current policy per task, each in its own sandbox."""
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.runner import run_concurrently
    from taskforge.tasks import load_task
    from taskforge.trial import run_episode_trial
    from trainer.sampler import LocalModelPolicy, RemoteSampler

    episode_config = EpisodeConfig(
        max_turns=config.max_turns,
        command_timeout_sec=config.command_timeout_sec,
        max_output_chars=config.max_output_chars,
        system_prompt=config.system_prompt,
    )
    jobs = [(task_dir, member) for task_dir in task_dirs for member in range(config.group_size)]

    def play(job):
        task_dir, member = job
        task = load_task(task_dir)
        group_id = f"{step}:{task.name}"
        seed = int.from_bytes(hashlib.sha256(f"{config.seed}:{step}:{task_dir}:{member}".encode()).digest()[:4], "big")
        sampler = None
        if config.sampler_url:
            sampler = RemoteSampler(
                config.sampler_url,
                config.sampler_model or config.policy,
                tokenizer,
                temperature=config.temperature,
                seed=seed,
                max_context_tokens=config.max_context_tokens or 32768,
            )
        policy = LocalModelPolicy(
            model,
            tokenizer,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            max_context_tokens=config.max_context_tokens,
            task_name=task.name,
            group_id=group_id,
            seed=seed,
            sampler=sampler,
        )
        record, episode = run_episode_trial(
            task, policy, out_dir / f"{task_dir.name}__g{member}", episode_config, attempt=member
        )
        reward = record.reward if record.reward is not None else 0.0
        rollout = policy.rollout(reward, (episode.stop_reason if episode else None) or "error")
        return record, rollout

    batch = StepBatch()
    for record, rollout in run_concurrently(jobs, play, jobs=config.concurrency, description=f"step {step} rollouts"):
        batch.records.append(record)
        if rollout is not None:
            batch.rollouts.append(rollout)
    return batch


def signal_group_share(rollouts: list[Rollout]) -> float:
    """Share of the batch's groups whose rewards are not all equal (non-zero GRPO advantages)."""
    rewards_by_group: dict[str, set[float]] = {}
    for rollout in rollouts:
        rewards_by_group.setdefault(rollout.group_id, set()).add(rollout.reward)
    return sum(len(rewards) > 1 for rewards in rewards_by_group.values()) / max(len(rewards_by_group), 1)


def update(
    model,
    optimizer,
    scheduler,
    rollouts: list[Rollout],
    config: TrainConfig,
    env_coef: float,
    pad_token_id: int,
    dist_context: DistContext = SINGLE_PROCESS,
) -> dict[str, float]:
    """epochs_per_batch passes over the batch in micro-batches; one forward pass per micro-batch
    feeds both loss terms. Returns metrics averaged over micro-batches.

    Under torchrun, `rollouts` is this rank's share (whole groups, so advantages are local), the
    loss denominators count the whole batch of every rank, and a rank with fewer micro-batches
    pads with zero-loss passes (trainer.distributed)."""
    device = model.device
    micro = [
        list(range(i, min(i + config.micro_batch_size, len(rollouts))))
        for i in range(0, len(rollouts), config.micro_batch_size)
    ]
    n_passes = dist_context.max_over_ranks(len(micro))
    padding = n_passes - len(micro)
    if rollouts:
        rewards = [r.reward for r in rollouts]
        advantages = group_advantages(
            rewards, [r.group_id for r in rollouts], scale_by_std=config.scale_advantages_by_std
        ).to(device)
    loss_config = EchoLossConfig(
        mode=config.mode,
        env_coef=None if config.mode == "grpo" else env_coef,
        clip_eps_low=config.clip_eps_low,
        clip_eps_high=config.clip_eps_high,
        kl_coef=config.kl_coef,
    )
    batches = [_to_device(collate_rollouts([rollouts[i] for i in idx], pad_token_id), device) for idx in micro]

    # The policy that sampled, re-scored by the training forward pass (no kernel mismatch).
    model.eval()
    with torch.no_grad():
        old = [
            policy_logprobs(model, b["input_ids"], b["attention_mask"], temperature=config.temperature) for b in batches
        ]
        for _ in range(padding):
            padding_pass(model, pad_token_id, device, backward=False, temperature=config.temperature)
    model.train()

    if rollouts:
        totals = _to_device(collate_rollouts(rollouts, pad_token_id), device)
        masks = totals["action_mask"], totals["observation_mask"]
    else:
        masks = empty_masks(device)
    normalizers = whole_batch_normalizers(*masks, dist_context)
    sums: dict[str, float] = {}
    n = 0
    for _epoch in range(config.epochs_per_batch):
        optimizer.zero_grad(set_to_none=True)
        for idx, batch, old_logprobs in zip(micro, batches, old, strict=True):
            logprobs = policy_logprobs(
                model, batch["input_ids"], batch["attention_mask"], temperature=config.temperature
            )
            loss, metrics = echo_loss(
                logprobs,
                old_logprobs,
                advantages[idx],
                batch["action_mask"],
                batch["observation_mask"],
                batch["warning_mask"],
                config=loss_config,
                normalizers=normalizers,
            )
            loss.backward()  # the global normalisers make the micro-batch losses add up to the batch loss
            for key, value in metrics.items():
                # "loss" is a share of the batch loss (global normalisers): it adds up over micro-
                # batches; the other metrics are micro-batch means and are averaged.
                weight = len(micro) if key == "loss" else 1
                sums[key] = sums.get(key, 0.0) + float(value) * weight
            n += 1
        for _ in range(padding):
            padding_pass(model, pad_token_id, device, backward=True, temperature=config.temperature)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm_value(grad_norm) * len(micro)
    scheduler.step()
    return {k: v / n for k, v in sums.items() if not math.isnan(v)} if n else {}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoints/step-N with their trainer_state.pt, oldest first (a step-N.tmp left by a run
    killed while saving is not a checkpoint)."""
    steps = [p for p in (run_dir / "checkpoints").glob("step-*") if p.name.split("-", 1)[1].isdigit()]
    checkpoints = sorted(steps, key=lambda p: int(p.name.split("-")[1]))
    return [p for p in checkpoints if (p / "trainer_state.pt").is_file()]


def _latest_checkpoint(run_dir: Path) -> Path | None:
    complete = _complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def prune_checkpoints(run_dir: Path, keep: int | None) -> list[Path]:
    """Deletes all but the newest `keep` complete checkpoints (none when keep is None); the deleted."""
    if keep is None:
        return []
    old = _complete_checkpoints(run_dir)[:-keep]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def _save(
    run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, dist_context: DistContext = SINGLE_PROCESS
) -> Path:
    """checkpoints/step-N: the full weights as a Hugging Face directory (eval, serve, vLLM and the
    next stage load it), dcp/ with model + optimizer state as torch.distributed.checkpoint shards
    (one per rank; loads into any world size), and trainer_state.pt (step, scheduler, every
    rank's RNG), written last: its presence marks a complete checkpoint."""
    from trainer.model import save_checkpoint

    final = run_dir / "checkpoints" / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if dist_context.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist_context.barrier()
    weights = full_model_state(model, dist_context)  # a collective under torchrun: rank 0 gets them
    if dist_context.is_main:
        if dist_context.enabled:
            model.save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
        else:
            save_checkpoint(model, tokenizer, tmp)
    save_training_state(tmp / "dcp", model, optimizer)
    rng_states = dist_context.all_gather_object(torch.random.get_rng_state())
    if dist_context.is_main:
        torch.save(
            {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "torch_rng": rng_states[0],
                "torch_rng_per_rank": rng_states,
            },
            tmp / "trainer_state.pt",
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint exists whole or not at all
    dist_context.barrier()
    return final


def _restore(latest: Path, model, optimizer, scheduler, dist_context: DistContext) -> int:
    """Loads a checkpoint written by `_save` (by any number of ranks) and returns its step."""
    state = torch.load(latest / "trainer_state.pt", weights_only=False)
    if (latest / "dcp").is_dir():
        load_training_state(latest / "dcp", model, optimizer)
    elif dist_context.enabled:
        raise ValueError(
            f"{latest} predates sharded checkpoints (no dcp/ folder): resume it once in one process, "
            "then under torchrun from its next checkpoint"
        )
    else:
        optimizer.load_state_dict(state["optimizer"])  # a checkpoint from before DCP
    scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("torch_rng_per_rank") or []
    same_ranks = len(per_rank) == dist_context.world_size
    torch.random.set_rng_state(per_rank[dist_context.rank] if same_ranks else state["torch_rng"])
    return state["step"]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drops metric lines of steps after the checkpoint a resumed run restarts from."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


@dataclass
class _RolloutStats:
    """What the metrics row needs of a rollout, gathered from every rank instead of the token ids."""

    group_id: str
    reward: float
    tokens: int
    action_tokens: int
    obs_tokens: int


def _stats(rollout: Rollout) -> _RolloutStats:
    return _RolloutStats(
        rollout.group_id,
        rollout.reward,
        len(rollout.token_ids),
        sum(rollout.action_mask),
        sum(rollout.observation_mask),
    )


def _mean_over_ranks(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Each rank's update metrics averaged (a rank's "loss" is its share x world size, so the mean
    is the whole batch's loss); ranks that held no rollout are left out."""
    held = [m for m in metrics if m]
    keys = dict.fromkeys(k for m in held for k in m)
    return {k: sum(m[k] for m in held if k in m) / sum(1 for m in held if k in m) for k in keys}


def train(config: TrainConfig, run_dir: Path, *, log=print, collect=None) -> Path:
    """Trains and returns the final checkpoint's directory. Resumes from run_dir if it has one.

    Under torchrun (trainer.distributed) each rank plays its share of every step's groups (tasks
    rank, rank + world, ...) in its own sandboxes, the policy is sharded with FSDP2, rank 0 writes
    the metrics and every rank its checkpoint shards. `collect` replaces `collect_rollouts` (same
    arguments): the tests feed fixed rollouts through the real update and checkpoint path."""
    context, device = init_distributed(config.device)
    try:
        return _train(config, run_dir, context, device, log if context.is_main else _quiet, collect or collect_rollouts)
    finally:
        shutdown(context)


def _quiet(*_args, **_kwargs) -> None:
    pass


def _train(config: TrainConfig, run_dir: Path, context: DistContext, device: str, log, collect) -> Path:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

    from trainer.model import load_checkpoint, load_policy, resolve_device
    from trainer.weight_sync import WeightPusher

    resolve_device(device)  # an unavailable device fails before the run directory is made
    changed = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        changed = run_settings_mismatch(
            run_dir, asdict(config), file="config.json", ignore=("steps", "device")
        )  # more steps, or another device (a CPU run continued on a GPU): resume
    changed = context.broadcast_object(changed)
    if changed:
        raise ValueError(
            f"{run_dir} was started with other settings ({changed}); use a new --run, or the same settings to resume"
        )

    torch.manual_seed(config.seed)
    latest = context.broadcast_object(_latest_checkpoint(run_dir) if context.is_main else None)
    placement = dict(device=device, dtype=config.dtype, gradient_checkpointing=config.gradient_checkpointing)
    if not context.is_main:
        context.barrier()  # rank 0 loads first: it builds the tiny model's cache if needed (HF writes on rank 0 only)
    model, tokenizer = load_checkpoint(latest, **placement) if latest else load_policy(config.policy, **placement)
    if context.is_main:
        context.barrier()
    sampling_model = model
    if context.enabled:
        # In-process sampling needs the whole model on each rank (ranks play different numbers of
        # turns, so they cannot share FSDP's collectives); a --sampler-url server needs none.
        sampling_model = None if config.sampler_url else copy.deepcopy(model)
        shard_model(model, config.fsdp_compute_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Linear warmup from lr/warmup_steps, then constant: a cosine whose floor is the peak (min_lr_rate=1.0).
    # Not get_constant_schedule_with_warmup: its warmup starts at lr 0, which would waste the first step's rollouts.
    scheduler = get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps, min_lr_rate=1.0
    )
    start = 1
    metrics_path = run_dir / "metrics.jsonl"
    if latest is not None:
        last_step = _restore(latest, model, optimizer, scheduler, context)
        start = last_step + 1
        if context.is_main:
            truncate_metrics(metrics_path, last_step)
        log(f"resuming {run_dir} after step {last_step} ({latest})")
    elif context.is_main:
        metrics_path.unlink(missing_ok=True)

    task_dirs = _task_dirs(config)
    schedule = config.schedule()
    pad_id = tokenizer.pad_token_id
    final = latest
    # A --sampler-url server samples from the trainer's weights: pushed now (a resumed run's) and after each update.
    pusher = (
        WeightPusher(config.sampler_url, run_dir / "sampler_weights", dtype=config.sampler_dtype)
        if config.sampler_url
        else None
    )
    if pusher is not None:
        pusher.push(model, start - 1, context)
    for step in range(start, config.steps + 1):
        started = time.monotonic()
        env_coef = schedule.lambda_at(step - 1)
        my_tasks = tasks_for_step(task_dirs, config, step)[context.rank :: context.world_size]
        batch = StepBatch()
        if my_tasks:
            batch = collect(
                sampling_model,
                tokenizer,
                my_tasks,
                config,
                run_dir / "rollouts" / f"step-{step:05d}",
                step,
            )
        rollout_seconds = time.monotonic() - started
        if not context.sum_over_ranks(len(batch.rollouts)):
            raise RuntimeError(f"step {step}: no rollout was produced (see {run_dir / 'rollouts'})")
        metrics = update(model, optimizer, scheduler, batch.rollouts, config, env_coef, pad_id, context)
        if pusher is not None:
            pusher.push(model, step, context)
        if sampling_model is not None and sampling_model is not model:
            copy_weights_to(model, sampling_model)
        gathered = context.all_gather_object((batch.records, [_stats(r) for r in batch.rollouts], metrics))
        records = [record for part in gathered for record in part[0]]
        rollouts = [stats for part in gathered for stats in part[1]]
        metrics = _mean_over_ranks([part[2] for part in gathered])
        action_tokens = sum(r.action_tokens for r in rollouts)
        row = {
            "step": step,
            "mode": config.mode,
            "lambda": env_coef if config.mode != "grpo" else 0.0,
            "reward_mean": sum(r.reward or 0.0 for r in records) / len(records),
            "pass_rate": sum(1 for r in records if (r.reward or 0.0) >= 1.0) / len(records),
            "timeout_rate": sum(1 for r in records if r.agent_timed_out) / len(records),
            "turns_mean": sum(r.n_turns or 0 for r in records) / len(records),
            "tokens": sum(r.tokens for r in rollouts),
            "action_tokens": action_tokens,
            "obs_tokens": sum(r.obs_tokens for r in rollouts),
            "n_rollouts": len(rollouts),
            # The policy term only learns from groups whose rewards differ; 0 means GRPO had no signal.
            "signal_group_share": signal_group_share(rollouts),
            "output_tokens_per_episode": action_tokens / len(rollouts),
            "rollout_seconds": round(rollout_seconds, 2),
            "seconds": round(time.monotonic() - started, 2),
            **{k: round(v, 6) for k, v in metrics.items()},
        }
        if not row["obs_tokens"]:
            row["env_ce"] = None  # no observation token in this batch: nothing was measured
        if context.is_main:
            append_jsonl(metrics_path, row)
        env_ce_text = f"{row['env_ce']:.3f}" if row["env_ce"] is not None else "- (no observation tokens)"
        log(
            f"step {step}/{config.steps}: reward {row['reward_mean']:.3f} pass {row['pass_rate']:.2f} "
            f"groups with signal {row['signal_group_share']:.2f} env_ce {env_ce_text} "
            f"out tokens/episode {row['output_tokens_per_episode']:.0f} ({row['seconds']:.1f} s)"
        )
        if step % config.checkpoint_every == 0 or step == config.steps:
            final = _save(run_dir, step, model, tokenizer, optimizer, scheduler, context)
            if context.is_main:
                prune_checkpoints(run_dir, config.keep_checkpoints)
    if final is None:
        final = _save(run_dir, 0, model, tokenizer, optimizer, scheduler, context)
    return final
