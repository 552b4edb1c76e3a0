"""Expert SFT, the paper's baseline: fine-tune on oracle transcripts executed in real containers.

A demonstration is an episode of `SolutionTextPolicy`: its first action is the task's own
solve.sh as a ```bash block, its second DONE. It runs through the same agent loop, sandbox and
verifier as any policy, so the observations are the real terminal output and only episodes the
verifier scores 1.0 are kept. Training is cross-entropy on the action tokens of those rollouts
(token mean), optionally plus lambda x the environment CE (ECHO-style SFT); with action_coef 0 it
trains the observation model alone (the study's control: a start that already models observations).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from taskforge.agent.episode import Episode
from taskforge.agent.scripted import demonstrator_policy
from trainer.rollout import collate_rollouts
from trainer.train import TINY_SYSTEM_PROMPT, truncate_metrics
from trainer.transcripts import load_transcripts, rollout_from_episode


@dataclass
class SFTConfig:
    tasks: str = "tasks/sample"
    policy: str = "tiny"
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    env_coef: float = 0.0  # > 0 adds lambda x env CE on the demonstrations' observations
    action_coef: float = 1.0  # 0 with env_coef > 0: train a world model only (the study's control start)
    demonstrator: str = "oracle-text"  # or "explorer": ls/head first, then the solution
    max_turns: int = 5
    command_timeout_sec: float = 30.0
    max_output_chars: int = 2000
    system_prompt: str | None = TINY_SYSTEM_PROMPT
    concurrency: int = 2
    seed: int = 0
    device: str = "cpu"  # the policy's device; batches go there (trainer.model.resolve_device checks it)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"


def collect_demonstrations(task_dirs: list[Path], out_dir: Path, config: SFTConfig) -> list[Episode]:
    """Runs the solution of every task through the agent loop in Docker; keeps reward-1.0 episodes.
    Resumes: tasks whose transcript is already there are not run again."""
    from taskforge.agent.episode import EpisodeConfig
    from taskforge.runner import run_concurrently
    from taskforge.tasks import load_task
    from taskforge.trial import run_episode_trial

    episode_config = EpisodeConfig(
        max_turns=config.max_turns,
        command_timeout_sec=config.command_timeout_sec,
        max_output_chars=config.max_output_chars,
        system_prompt=config.system_prompt,
    )

    def demonstrate(task_dir: Path) -> Episode | None:
        trial_dir = out_dir / task_dir.name
        transcript = trial_dir / "transcript.json"
        if transcript.is_file():
            return Episode.model_validate_json(transcript.read_text())
        task = load_task(task_dir)
        policy = demonstrator_policy(config.demonstrator, task)
        _, episode = run_episode_trial(task, policy, trial_dir, episode_config)
        return episode

    episodes = run_concurrently(task_dirs, demonstrate, jobs=config.concurrency, description="demonstrations")
    return [e for e in episodes if e is not None and e.reward == 1.0]


def demonstration_actions(task_dir: Path, demonstrator: str) -> list[str]:
    """The replies the scripted demonstrator types on this task, in order (DONE last)."""
    from taskforge.agent.scripted import ExplorerPolicy, SolutionTextPolicy
    from taskforge.tasks import load_task

    if demonstrator == "explorer":
        commands = ExplorerPolicy(task_dir, load_task(task_dir).instruction).actions
    else:
        commands = [SolutionTextPolicy(task_dir).command]
    return [f"```bash\n{command}\n```" for command in commands] + ["DONE"]


def longest_demonstration_action(tokenizer, task_dirs: list[Path], demonstrator: str) -> tuple[int, Path | None]:
    """(tokens, task) of the longest demonstration reply, counting the end-of-turn token the sampler
    must also emit: the per-turn budget (max_new_tokens) has to cover it, or the policy is trained to
    write replies it can never finish."""
    longest, where = 0, None
    for task_dir in task_dirs:
        for action in demonstration_actions(task_dir, demonstrator):
            n = len(tokenizer.encode(action, add_special_tokens=False)) + 1
            if n > longest:
                longest, where = n, task_dir
    return longest, where


def _length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length sequences (little padding), in shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 8
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sft(
    config: SFTConfig,
    run_dir: Path,
    *,
    log=print,
    demonstrations: list[Path] | None = None,
    observation_transcripts: list[Path] | None = None,
) -> Path:
    """Collects (or reads) demonstrations and fine-tunes; returns the checkpoint directory.

    observation_transcripts: more episodes trained on for their observation tokens only (env CE,
    weighted by env_coef); their actions are not imitated. The study's control start uses it to
    learn how the environment answers without changing what the policy does.

    Under torchrun (trainer.distributed) rank 0 collects the demonstrations, every rank trains on
    its share of each batch with FSDP2 and the whole batch's token counts as loss denominators,
    and rank 0 writes the final checkpoint."""
    from trainer.distributed import init_distributed, shutdown

    context, device = init_distributed(config.device)
    try:
        return _sft(
            config,
            run_dir,
            context,
            device,
            log if context.is_main else (lambda *a, **k: None),
            demonstrations,
            observation_transcripts,
        )
    finally:
        shutdown(context)


def _sft(config, run_dir, context, device, log, demonstrations, observation_transcripts) -> Path:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

    from taskforge.runner import append_jsonl
    from taskforge.tasks import discover_task_dirs
    from trainer.distributed import (
        empty_masks,
        full_model_state,
        padding_pass,
        policy_logprobs,
        shard_model,
        whole_batch_normalizers,
    )
    from trainer.loss import per_sequence_ce
    from trainer.model import load_policy, resolve_device, save_checkpoint

    resolve_device(device)  # an unavailable device fails before any demonstration runs
    if not (config.action_coef or config.env_coef):
        raise ValueError("SFT with action_coef 0 and env_coef 0 trains nothing: set one of them above 0")
    from taskforge.runner import run_settings_mismatch

    changed = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A finished run is reused only if it was trained with these settings (not a stale checkpoint).
        changed = run_settings_mismatch(
            run_dir, {**asdict(config), "steps": config.epochs, "mode": "sft"}, file="config.json"
        )
    changed = context.broadcast_object(changed)
    if changed:
        raise ValueError(
            f"{run_dir} was trained with other settings ({changed}); use a new --run, or the same settings to resume"
        )
    final = run_dir / "checkpoints" / "final"
    if final.is_dir():
        log(f"{final} exists: SFT already done")
        return final
    episodes = None
    if not context.is_main:
        pass  # rank 0 reads or collects the demonstrations (in Docker) and sends them
    elif demonstrations:
        episodes = [e for e in load_transcripts(demonstrations) if e.reward == 1.0]
    else:
        episodes = collect_demonstrations(discover_task_dirs([Path(config.tasks)]), run_dir / "demonstrations", config)
    episodes = context.broadcast_object(episodes)
    if not episodes:
        raise RuntimeError("no demonstration scored 1.0: nothing to fine-tune on")
    log(f"{len(episodes)} demonstrations")

    torch.manual_seed(config.seed)
    if not context.is_main:
        context.barrier()  # rank 0 loads first: it builds the tiny model's cache if needed
    model, tokenizer = load_policy(config.policy, device=device, dtype=config.dtype)
    if context.is_main:
        context.barrier()
    if context.enabled:
        shard_model(model)
    rollouts = [rollout_from_episode(tokenizer, e) for e in episodes]
    if observation_transcripts:
        observed = (
            [e for e in load_transcripts(observation_transcripts) if e.reward == 1.0] if context.is_main else None
        )
        observed = context.broadcast_object(observed)
        for episode in observed:
            rollout = rollout_from_episode(tokenizer, episode)
            rollouts.append(rollout.model_copy(update={"action_mask": [False] * len(rollout.action_mask)}))
        log(f"{len(observed)} transcripts for their observations only")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    total_steps = config.epochs * math.ceil(len(rollouts) / config.batch_size)
    # Linear warmup over 10 steps from lr/10 (the _lr_rate variant: no step is spent at lr 0),
    # then a cosine down to 0.1 x lr, reached on the last step.
    scheduler = get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer, num_warmup_steps=10, num_training_steps=total_steps, min_lr_rate=0.1
    )
    metrics_path = run_dir / "metrics.jsonl"
    epoch_state = run_dir / "checkpoints" / EPOCH_STATE
    done = 0
    if (epoch_state / "sft_state.pt").is_file():  # an interrupted run: continue after its last epoch
        done = _restore_epoch_state(epoch_state, model, optimizer, scheduler, rng, context)
        log(f"resuming after epoch {done}/{config.epochs} ({epoch_state})")
    if context.is_main:
        if done:
            truncate_metrics(metrics_path, done)
        else:
            metrics_path.unlink(missing_ok=True)
    model.train()
    for epoch in range(done + 1, config.epochs + 1):
        started = time.monotonic()
        losses, env_ces, tokens = [], [], 0
        for batch_indices in _length_bucketed_batches([len(r.token_ids) for r in rollouts], config.batch_size, rng):
            mine = batch_indices[context.rank :: context.world_size]  # all of it in one process
            optimizer.zero_grad(set_to_none=True)
            if mine:
                batch = collate_rollouts([rollouts[i] for i in mine], tokenizer.pad_token_id)
                batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
                logprobs = policy_logprobs(model, batch["input_ids"], batch["attention_mask"])
                action = batch["action_mask"].float()
                # Denominators of the whole batch (every rank's share): FSDP's gradient average
                # is then the single-process gradient.
                counts = whole_batch_normalizers(batch["action_mask"], batch["observation_mask"], context)
                loss = -(logprobs * action).sum() / _positive(counts.action_tokens)
                env_ce = per_sequence_ce(logprobs, batch["observation_mask"]).sum() / _positive(
                    counts.observation_sequences
                )
                # Terms with a zero coefficient are left out, not multiplied by 0: a batch without
                # observation tokens has a NaN env CE, and 0 x NaN is NaN.
                total = config.action_coef * loss if config.action_coef else 0.0
                if config.env_coef:
                    total = total + config.env_coef * env_ce
                total.backward()
                losses.append(loss.item())
                tokens += int(batch["attention_mask"].sum())
                env_ces.append(env_ce.item())
            else:  # a batch smaller than the world: this rank joins the collectives with nothing
                whole_batch_normalizers(*empty_masks(model.device), context)
                padding_pass(model, tokenizer.pad_token_id, model.device, backward=True)
                losses.append(0.0)
                env_ces.append(0.0)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
        # A rank's loss is its share x world size: the mean over ranks is the whole batch's.
        world = context.world_size
        row = {
            "step": epoch,
            "mode": "sft",
            "sft_loss": context.sum_over_ranks(sum(losses)) / world / len(losses),
            "env_ce": context.sum_over_ranks(sum(env_ces)) / world / len(env_ces),
            "n_demonstrations": len(rollouts),
            "tokens": int(context.sum_over_ranks(tokens)),  # every token of the epoch, forward and backward
            "seconds": round(time.monotonic() - started, 2),
        }
        if epoch < config.epochs:
            _save_epoch_state(epoch_state, epoch, model, optimizer, scheduler, rng, context)
        if context.is_main:
            append_jsonl(metrics_path, row)
        log(f"epoch {epoch}/{config.epochs}: action CE {row['sft_loss']:.3f}, env CE {row['env_ce']:.3f}")
    tmp = final.with_name("final.tmp")
    weights = full_model_state(model, context)  # a collective under torchrun: rank 0 gets the weights
    if context.enabled and context.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
    elif context.is_main:
        save_checkpoint(model, tokenizer, tmp)
    if context.is_main:
        os.replace(tmp, final)
        shutil.rmtree(epoch_state, ignore_errors=True)  # the final weights make it redundant
    context.barrier()
    return final


# checkpoints/epoch-state: model + optimizer (DCP shards, any world size), scheduler, the batch order's
# RNG and every rank's torch RNG after the last finished epoch; sft_state.pt, written last, marks it
# complete. One is kept (each epoch replaces it), and the final checkpoint removes it.
EPOCH_STATE = "epoch-state"


def _save_epoch_state(directory: Path, epoch: int, model, optimizer, scheduler, rng: random.Random, context) -> None:
    from trainer.distributed import save_training_state

    tmp = directory.with_name(directory.name + ".tmp")
    if context.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    context.barrier()
    save_training_state(tmp / "dcp", model, optimizer)
    torch_rngs = context.all_gather_object(torch.random.get_rng_state())
    if context.is_main:
        state = {"epoch": epoch, "scheduler": scheduler.state_dict(), "batch_rng": rng.getstate()}
        torch.save({**state, "torch_rng_per_rank": torch_rngs}, tmp / "sft_state.pt")
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)  # the state exists whole or not at all
    context.barrier()


def _restore_epoch_state(directory: Path, model, optimizer, scheduler, rng: random.Random, context) -> int:
    """Loads `_save_epoch_state`'s files into this job's model, optimizer, scheduler and RNGs; the epoch."""
    from trainer.distributed import load_training_state

    state = torch.load(directory / "sft_state.pt", weights_only=False)
    load_training_state(directory / "dcp", model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(state["batch_rng"])
    per_rank = state["torch_rng_per_rank"]
    torch.random.set_rng_state(per_rank[context.rank] if len(per_rank) == context.world_size else per_rank[0])
    return state["epoch"]


def _positive(count: float) -> float:
    return count if count > 0 else 1.0
