"""The RL and SFT loops under torchrun on 2 CPU ranks (gloo, FSDP2, DCP checkpoints) equal one process.

The loop is `trainer.train.train` itself: task split across ranks, sharded update with the whole
batch's normalisers, checkpoints and resume. Only the episodes are replaced, by fixed rollouts
(`fixed_rollouts`, passed as `collect`), so the test needs no Docker and takes seconds. One task's
group loses an episode (an episode that produced no rollout), so the ranks hold 2 and 3 rollouts:
different micro-batch counts, which the padding passes must even out.

SFT trains on transcripts written here (no Docker either), in batches that do not split evenly
over the ranks.

This file is also the worker: `python -m torch.distributed.run ... -m tests.test_fsdp rl|sft RUN_DIR CONFIG`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from trainer.model import default_cache_dir
from trainer.rollout import RolloutBuilder
from trainer.sft import SFTConfig, sft
from trainer.train import StepBatch, TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENT_TASKS = REPO_ROOT / "tests" / "fixtures" / "agent-tasks"
HANG_AT_STEP = "TASKFORGE_TEST_HANG_AT_STEP"
WORLD_SIZE = 2


def fixed_rollouts(model, tokenizer, task_dirs, config, out_dir, step) -> StepBatch:
    """The same episodes for a (task, step, member) whichever rank asks: random action tokens and
    observation text from a seeded RNG, rewards that differ within each group."""
    if os.environ.get(HANG_AT_STEP) == str(step):
        time.sleep(600)  # a step whose rollouts never finish: the test kills the run here
    batch = StepBatch()
    for task_dir in task_dirs:
        for member in range(config.group_size):
            reward = float(member % 2)
            batch.records.append(SimpleNamespace(reward=reward, agent_timed_out=False, n_turns=2))
            if task_dir.name == "count-lines" and member == config.group_size - 1:
                continue  # an episode that ended without a rollout
            rng = random.Random(f"{task_dir.name}:{step}:{member}")
            builder = RolloutBuilder.from_instruction(
                tokenizer, f"Solve {task_dir.name}.", task_name=task_dir.name, group_id=f"{step}:{task_dir.name}"
            )
            for turn in range(2):
                ids = [rng.randrange(300, 4000) for _ in range(rng.randrange(3, 9))]
                builder.add_action(ids, [-1.0] * len(ids))
                builder.add_observation(" ".join(str(rng.randrange(1000)) for _ in range(rng.randrange(2, 12 + turn))))
            batch.rollouts.append(builder.build(reward=reward, stop_reason="max_turns"))
    return batch


def _config(**overrides) -> TrainConfig:
    values = dict(
        tasks=str(AGENT_TASKS),
        policy="tiny",
        steps=2,
        tasks_per_step=2,
        group_size=3,
        micro_batch_size=2,
        epochs_per_batch=2,
        lr=1e-3,
        checkpoint_every=1,
    )
    return TrainConfig(**{**values, **overrides})


def _torchrun(run_dir: Path, config: TrainConfig | SFTConfig, *extra: str, **env) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(WORLD_SIZE),
        "-m",
        "tests.test_fsdp",
        "sft" if isinstance(config, SFTConfig) else "rl",
        str(run_dir),
        json.dumps(asdict(config)),
        *extra,
    ]
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TASKFORGE_TORCH_THREADS": "1", **env},
    )


def _finish(child: subprocess.Popen, run_dir: Path) -> None:
    code = child.wait(timeout=600)
    assert code == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-4000:]


def _weights(run_dir: Path, step: int | str) -> dict[str, torch.Tensor]:
    name = step if isinstance(step, str) else f"step-{step}"
    return load_file(run_dir / "checkpoints" / name / "model.safetensors")


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_ranks_equal_one_process_and_a_killed_run_resumes(tmp_path):
    config = _config()
    # One process first: it also builds the tiny model's cache the ranks then read.
    single = tmp_path / "single"
    train(config, single, log=lambda *_: None, collect=fixed_rollouts)

    sharded, killed = tmp_path / "sharded", tmp_path / "killed"
    uninterrupted = _torchrun(sharded, config)
    interrupted = _torchrun(killed, config, **{HANG_AT_STEP: "2"})
    _finish(uninterrupted, sharded)

    single_weights = _weights(single, 2)
    sharded_weights = _weights(sharded, 2)
    gap = _max_abs_diff(sharded_weights, single_weights)
    print(f"max |2 ranks - 1 process| over parameters after 2 steps: {gap:.3g}")
    assert gap <= 1e-5
    start = load_file(default_cache_dir() / "model.safetensors")
    assert _max_abs_diff(sharded_weights, start) > 1e-4, "the steps should have moved the parameters"
    assert sorted(p.name for p in (sharded / "checkpoints" / "step-2" / "dcp").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # one shard file per rank
    rows = [json.loads(line) for line in (sharded / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["n_rollouts"] == 5  # every rank's rollouts counted

    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-1").is_dir():
        assert interrupted.poll() is None, (killed.parent / "killed.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no step-1 checkpoint within 300 s"
        time.sleep(0.2)
    os.killpg(interrupted.pid, signal.SIGKILL)
    interrupted.wait()
    assert not (killed / "checkpoints" / "step-2").exists()

    _finish(_torchrun(killed, config), killed)
    assert "resuming" in (killed.parent / "killed.log").read_text()
    resumed_gap = _max_abs_diff(_weights(killed, 2), sharded_weights)
    print(f"max |resumed - uninterrupted| after 2 steps: {resumed_gap:.3g}")
    assert resumed_gap <= 1e-6
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def _write_transcripts(directory: Path, n: int) -> list[Path]:
    """n successful two-turn episodes of different lengths, as transcript.json files."""
    from datetime import UTC, datetime

    from taskforge.agent.episode import Episode, EpisodeConfig, Turn

    now = datetime.now(UTC)
    paths = []
    for i in range(n):
        turns = [
            Turn(
                index=0,
                text=f"```bash\nwc -l data{i}.txt\n```",
                action="command",
                command=f"wc -l data{i}.txt",
                output=" ".join(["12 data.txt"] * (i + 1)),
                exit_code=0,
                started_at=now,
            ),
            Turn(index=1, text="DONE", action="done", started_at=now),
        ]
        episode = Episode(
            task_name=f"t{i}",
            policy="oracle",
            system_prompt="Solve it.",
            instruction=f"Count {i}.",
            config=EpisodeConfig(),
            turns=turns,
            stop_reason="done",
            reward=1.0,
            started_at=now,
        )
        path = directory / f"t{i}" / "transcript.json"
        path.parent.mkdir(parents=True)
        path.write_text(episode.model_dump_json())
        paths.append(path)
    return paths


def test_sft_on_two_ranks_equals_one_process(tmp_path):
    transcripts = _write_transcripts(tmp_path / "demos", 5)
    # batches of 3 and 2 demonstrations: ranks hold 2 + 1, then 1 + 1; lambda > 0 trains both terms
    config = SFTConfig(epochs=2, batch_size=3, lr=1e-3, env_coef=0.5)
    single = tmp_path / "single"
    sft(config, single, log=lambda *_: None, demonstrations=transcripts)
    sharded = tmp_path / "sharded"
    _finish(_torchrun(sharded, config, *map(str, transcripts)), sharded)
    gap = _max_abs_diff(_weights(sharded, "final"), _weights(single, "final"))
    print(f"SFT: max |2 ranks - 1 process| over parameters after 2 epochs: {gap:.3g}")
    assert gap <= 1e-5
    assert _max_abs_diff(_weights(single, "final"), load_file(default_cache_dir() / "model.safetensors")) > 1e-4
    rows = [json.loads(line) for line in (sharded / "metrics.jsonl").read_text().splitlines()]
    single_rows = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    for row, reference in zip(rows, single_rows, strict=True):
        assert row["tokens"] == reference["tokens"]


class _Interrupted(Exception):
    """Raised from the log callback: the run stops there, as a kill between epochs would stop it."""


def test_an_interrupted_sft_run_resumes_after_its_last_epoch(tmp_path):
    """Stopped after epoch 2 of 3, the same call continues at epoch 3 (model, Adam moments, scheduler,
    batch order restored) and ends with the weights of an uninterrupted run."""
    transcripts = _write_transcripts(tmp_path / "demos", 5)
    config = SFTConfig(epochs=3, batch_size=2, lr=1e-3, env_coef=0.5)
    whole = tmp_path / "whole"
    sft(config, whole, log=lambda *_: None, demonstrations=transcripts)

    def stop_after_epoch_2(message: str, *_) -> None:
        if message.startswith("epoch 2/3"):
            raise _Interrupted

    resumed = tmp_path / "resumed"
    with pytest.raises(_Interrupted):
        sft(config, resumed, log=stop_after_epoch_2, demonstrations=transcripts)
    assert (resumed / "checkpoints" / "epoch-state" / "sft_state.pt").is_file()
    assert not (resumed / "checkpoints" / "final").exists()
    said: list[str] = []
    sft(config, resumed, log=said.append, demonstrations=transcripts)
    assert any(line.startswith("resuming after epoch 2/3") for line in said), said
    assert [line for line in said if line.startswith("epoch ")] == [next(x for x in said if x.startswith("epoch 3/3"))]
    assert _max_abs_diff(_weights(resumed, "final"), _weights(whole, "final")) <= 1e-7
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert not (resumed / "checkpoints" / "epoch-state").exists()  # the final weights replace it


def test_mixed_precision_keeps_float32_masters_that_take_the_papers_small_updates(tmp_path):
    """`fsdp_compute_dtype=bfloat16` (the Qwen3-8B recipe): layers compute in bf16 while the sharded
    parameters stay float32, so one AdamW step at the paper's lr 1e-6 moves them; the same step on
    a bf16 model rounds most updates away, which is why the recipe keeps float32 masters."""
    import torch.distributed as dist

    from trainer.distributed import policy_logprobs, shard_model
    from trainer.model import load_policy

    ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def one_step(model) -> float:
        """Share of parameter elements that one lr-1e-6 AdamW step changed."""
        before = [p.detach().float().clone() for p in _full(model.parameters())]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
        (-policy_logprobs(model, ids, mask).float().mean()).backward()
        optimizer.step()
        after = [p.detach().float() for p in _full(model.parameters())]
        changed = sum(int((a != b).sum()) for a, b in zip(after, before, strict=True))
        return changed / sum(b.numel() for b in before)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        masters, _ = load_policy("tiny")
        shard_model(masters, "bfloat16")
        seen = []
        hook = masters.get_decoder().layers[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
        moved_masters = one_step(masters)
        hook.remove()
        layer_output = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
        assert layer_output.dtype == torch.bfloat16  # computed in bf16
        assert all(p.dtype == torch.float32 for p in masters.parameters())  # stored in fp32
    finally:
        dist.destroy_process_group()
    bf16_model, _ = load_policy("tiny", dtype="bfloat16")
    moved_bf16 = one_step(bf16_model)
    print(f"share of parameters moved by one lr-1e-6 step: fp32 masters {moved_masters:.3f}, bf16 {moved_bf16:.3f}")
    assert moved_masters > 0.9
    assert moved_bf16 < 0.5


def _full(parameters):
    """Whole tensors of (possibly sharded) parameters."""
    for parameter in parameters:
        yield parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter


if __name__ == "__main__":
    kind, run_dir, settings = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    if kind == "sft":
        sft(SFTConfig(**settings), run_dir, demonstrations=[Path(p) for p in sys.argv[4:]])
    else:
        train(TrainConfig(**settings), run_dir, collect=fixed_rollouts)
