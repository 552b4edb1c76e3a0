"""The training loop with the real tiny model and real Docker sandboxes: one update uses both
loss terms, metrics and checkpoints are written, and a run killed with SIGKILL resumes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.model import load_checkpoint, load_policy
from trainer.serve import CheckpointServer
from trainer.sft import SFTConfig, collect_demonstrations
from trainer.train import TrainConfig, update
from trainer.transcripts import environment_cross_entropy, rollout_from_episode

from .conftest import FIXTURES, REPO_ROOT

AGENT_TASKS = FIXTURES / "agent-tasks"


@pytest.fixture(scope="module")
def demonstrations(tmp_path_factory, base_image):
    task_dirs = sorted(p for p in AGENT_TASKS.iterdir() if (p / "task.toml").is_file())
    episodes = collect_demonstrations(task_dirs, tmp_path_factory.mktemp("demos"), SFTConfig())
    assert len(episodes) == len(task_dirs), "every fixture task's solution should score 1.0 through the loop"
    return episodes


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["echo", "grpo", "env-only"])
def test_one_update_trains_the_terms_its_mode_names(demonstrations, mode):
    torch.manual_seed(0)
    model, tokenizer = load_policy("tiny")
    rollouts = []
    for i, episode in enumerate(demonstrations[:2]):
        for reward in (1.0, 0.0):  # a group with a success and a failure: non-zero advantages
            rollouts.append(
                rollout_from_episode(tokenizer, episode.model_copy(update={"reward": reward}), group_id=f"g{i}")
            )
    assert all(any(r.observation_mask) for r in rollouts)
    config = TrainConfig(mode=mode, epochs_per_batch=1, lr=1e-3, micro_batch_size=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    before = _snapshot(model)
    metrics = update(
        model,
        optimizer,
        scheduler,
        rollouts,
        config,
        env_coef=config.schedule().lambda_at(0),
        pad_token_id=tokenizer.pad_token_id,
    )
    assert metrics["env_ce"] > 0 and metrics["n_obs_tokens"] > 0  # always measured, whatever the mode
    assert metrics["grad_norm"] > 0
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changed
    if mode == "grpo":
        assert metrics["env_coef"] == 0.0
    if mode == "env-only":
        assert metrics["loss"] == pytest.approx(metrics["env_ce"] * metrics["env_coef"], rel=1e-4)


def test_env_only_updates_lower_the_env_cross_entropy(demonstrations):
    torch.manual_seed(0)
    model, tokenizer = load_policy("tiny")
    before = environment_cross_entropy(model, tokenizer, demonstrations)["env_ce"]
    rollouts = [rollout_from_episode(tokenizer, e, group_id=str(i)) for i, e in enumerate(demonstrations)]
    config = TrainConfig(mode="env-only", epochs_per_batch=1, lr=3e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for _ in range(5):
        update(model, optimizer, scheduler, rollouts, config, env_coef=1.0, pad_token_id=tokenizer.pad_token_id)
    after = environment_cross_entropy(model, tokenizer, demonstrations)["env_ce"]
    assert after < before - 0.5, (before, after)


def test_config_file_with_a_misspelt_key_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "echo.toml"
    path.write_text('mode = "grpo"\ngroup_szie = 8\nsteps = "ten"\n')
    with pytest.raises(ValueError) as error:
        TrainConfig.from_file(path)
    message = str(error.value)
    assert message.startswith(str(path))
    assert "unknown setting 'group_szie' (did you mean 'group_size'?)" in message
    assert "setting 'steps'" in message and "valid integer" in message
    assert "Fix or remove these keys" in message and "tasks_per_step" in message  # what to do, and the known keys


def test_config_file_values_and_flag_overrides(tmp_path):
    path = tmp_path / "echo.json"
    settings = {"mode": "env-only", "steps": 3, "lr": 1e-5, "lambda_schedule": "linear", "system_prompt": None}
    path.write_text(json.dumps(settings))
    config = TrainConfig.from_file(path, steps=7, seed=None)  # flags win; an unset flag (None) does not
    assert isinstance(config, TrainConfig)
    assert (config.mode, config.lr, config.lambda_schedule, config.system_prompt) == ("env-only", 1e-5, "linear", None)
    assert config.steps == 7
    assert config.seed == 0 and config.group_size == TrainConfig().group_size
    toml = tmp_path / "empty.toml"
    toml.write_text("")
    assert TrainConfig.from_file(toml) == TrainConfig()


def _train_command(run_dir: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "taskforge.cli",
        "train",
        "echo",
        "--tasks",
        str(AGENT_TASKS),
        "--policy",
        "tiny",
        "--steps",
        str(steps),
        "--tasks-per-step",
        "1",
        "-g",
        "2",
        "--max-turns",
        "2",
        "--max-new-tokens",
        "24",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--run",
        run_dir.name,
        "--runs-dir",
        str(run_dir.parent),
    ]


def test_training_writes_metrics_and_checkpoints_and_resumes_after_kill_9(tmp_path, base_image):
    run_dir = tmp_path / "runs" / "echo-kill"
    child = subprocess.Popen(
        _train_command(run_dir, 3),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "step-1").is_dir():
        assert child.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    steps_logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged[0] == 1 and len(steps_logged) < 3

    resumed = subprocess.run(
        _train_command(run_dir, 3),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # each step exactly once
    for key in (
        "reward_mean",
        "pass_rate",
        "env_ce",
        "policy_loss",
        "warning_ce",
        "clip_fraction",
        "env_to_policy_ratio",
        "tokens",
        "turns_mean",
        "timeout_rate",
        "seconds",
        "lambda",
        "signal_group_share",
        "output_tokens_per_episode",
    ):
        assert key in rows[-1], key
    for row in rows:
        assert 0.0 <= row["signal_group_share"] <= 1.0
        assert row["output_tokens_per_episode"] == row["action_tokens"] / row["n_rollouts"]
    assert rows[-1]["n_rollouts"] == 2
    model, tokenizer = load_checkpoint(run_dir / "checkpoints" / "step-3")
    assert model.config.model_type == "qwen3" and tokenizer.chat_template
    # --keep-checkpoints 2: the older ones were deleted as newer ones were written
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-3"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["mode"] == "echo" and config["steps"] == 3


def test_keep_checkpoints_below_one_is_refused_when_the_config_is_made():
    """Keeping no checkpoint would delete the one a run resumes from: refused before any step."""
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        TrainConfig(keep_checkpoints=0)


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskforge.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_rl_without_policy_starts_from_the_sft_checkpoint_of_the_same_tasks(tmp_path, base_image):
    """An untrained model emits no runnable command, so RL from it learns nothing: without --policy,
    train echo says what to run first, and after `train sft` on the same tasks it starts from there."""
    runs = tmp_path / "runs"
    rl = ["train", "grpo", "--tasks", str(AGENT_TASKS), "--runs-dir", str(runs), "--steps", "1"]
    rl += ["--tasks-per-step", "1", "-g", "2", "--max-turns", "1", "--max-new-tokens", "16", "--run", "rl"]
    refused = _cli(*rl)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join((refused.stdout + refused.stderr).split())
    assert "untrained model will not act" in message and f"taskforge train sft --tasks {AGENT_TASKS}" in message
    assert not (runs / "rl").exists()

    sft_run = _cli("train", "sft", "--tasks", str(AGENT_TASKS), "--epochs", "1", "--runs-dir", str(runs))
    assert sft_run.returncode == 0, sft_run.stdout[-2000:] + sft_run.stderr[-2000:]
    (checkpoint,) = runs.glob("sft-*/checkpoints/final")
    other_tasks = _cli(*[str(tmp_path) if a == str(AGENT_TASKS) else a for a in rl])
    # An SFT run of another task set is not a start for this one.
    assert other_tasks.returncode == 2 and "untrained model will not act" in other_tasks.stdout + other_tasks.stderr

    started = _cli(*rl)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    assert json.loads((runs / "rl" / "config.json").read_text())["policy"] == str(checkpoint)


def test_the_config_files_task_set_is_used_when_tasks_is_not_given(tmp_path):
    """`--config` with a `tasks` key and no --tasks: the config's task set is trained on (the flag's
    default no longer overrides it), so the SFT start is looked up for that set."""
    config = tmp_path / "run.toml"
    config.write_text(f'tasks = "{AGENT_TASKS}"\nsteps = 1\n')
    from typer.testing import CliRunner

    from taskforge.cli import app

    refused = CliRunner().invoke(app, ["train", "echo", "--config", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert refused.exit_code == 2, refused.output
    unwrapped = "".join(refused.output.split())  # the console may wrap a long path anywhere
    assert f"taskforgetrainsft--tasks{AGENT_TASKS}" in unwrapped, refused.output


def test_without_reward_signal_adam_makes_the_echo_step_independent_of_lambda(demonstrations):
    """The regime behind ECHO drift when no group has a reward signal: the loss is lambda x env CE
    alone, and Adam divides each gradient by its own running scale, so the first step is about
    lr x sign(gradient) whatever lambda is. lambda 0.05 then moves the weights as far as lambda 1.0
    (env-only) would: lambda only weighs the env term against a policy term that is present."""
    deltas = {}
    for env_coef in (0.05, 1.0):
        torch.manual_seed(0)
        model, tokenizer = load_policy("tiny")
        rollouts = [
            rollout_from_episode(tokenizer, e.model_copy(update={"reward": 0.0}), group_id="g")
            for e in demonstrations[:2]
        ]
        config = TrainConfig(mode="echo", epochs_per_batch=1, lr=1e-3, weight_decay=0.0, micro_batch_size=2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        before = _snapshot(model)
        metrics = update(model, optimizer, scheduler, rollouts, config, env_coef, tokenizer.pad_token_id)
        assert metrics["loss"] == pytest.approx(env_coef * metrics["env_ce"], rel=1e-4)  # no policy term
        deltas[env_coef] = torch.cat([(v - before[k]).flatten() for k, v in model.state_dict().items()])
    small, full = deltas[0.05].norm().item(), deltas[1.0].norm().item()
    assert small > 0
    assert small / full == pytest.approx(1.0, abs=0.05), (small, full)  # a 20x smaller loss, the same step


class _CommandServer(CheckpointServer):
    """`taskforge serve` whose replies are always one ```bash block (the untrained tiny model never writes
    one, so its episodes have no command output for the env term to train on)."""

    def generate(self, prompt_ids, *, max_tokens, temperature, seed, stop_ids):
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ids = self.tokenizer.encode("```bash\nls /app\n```", add_special_tokens=False)[: max_tokens - 1] + [im_end]
        return ids, [-0.5] * len(ids), "stop"


def test_rl_loop_in_bfloat16_on_cpu_trains_bfloat16_parameters(tmp_path, base_image):
    """`--dtype bfloat16 --device cpu` (and gradient_checkpointing from a --config file) reach model
    loading, the old-log-prob pass and the update: one real
    step (tiny model, Docker sandboxes, replies from a served command so the rollouts hold command output)
    leaves a checkpoint whose weights are bf16 and differ from the start's."""
    from safetensors.torch import load_file

    start, tokenizer = load_policy("tiny", dtype="bfloat16")
    # A copy: the served model takes the trainer's pushed weights (trainer.weight_sync).
    start_weights = {name: tensor.clone() for name, tensor in start.state_dict().items()}
    run_dir = tmp_path / "runs" / "bf16"
    with _CommandServer(start, tokenizer, model_name="tiny") as server:
        command = _train_command(run_dir, 1) + ["--dtype", "bfloat16", "--device", "cpu", "--lr", "1e-3"]
        settings = tmp_path / "settings.json"  # the config-file route, with the 8B recipe's recompute on
        settings.write_text(json.dumps({"gradient_checkpointing": True}))
        command += ["--sampler-url", server.base_url, "--config", str(settings)]
        result = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"}
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert len(server.request_log) == 4  # 2 episodes x 2 turns
        assert server.weight_version == "step-1"  # the trainer pushed its weights after the update
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["dtype"], config["device"], config["gradient_checkpointing"]) == ("bfloat16", "cpu", True)
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["obs_tokens"] > 0 and row["grad_norm"] > 0  # the env term had command output to train on
    trained = load_file(run_dir / "checkpoints" / "step-1" / "model.safetensors")
    assert trained and all(tensor.dtype == torch.bfloat16 for tensor in trained.values())
    changed = [name for name, tensor in trained.items() if not torch.equal(tensor, start_weights[name])]
    assert len(changed) > len(trained) // 2, changed
    served = start.state_dict()  # after the push, the server samples from exactly the step-1 weights
    assert all(torch.equal(served[name], tensor) for name, tensor in trained.items())
    resumed, _ = load_checkpoint(run_dir / "checkpoints" / "step-1", dtype="auto")
    assert next(resumed.parameters()).dtype == torch.bfloat16 and next(resumed.parameters()).device.type == "cpu"


def test_in_process_sampling_runs_in_the_models_dtype():
    from trainer.sampler import InProcessSampler

    model, tokenizer = load_policy("tiny", dtype="bfloat16")
    prompt = [1, 2, 3]
    ids, logprobs = InProcessSampler(model, tokenizer, seed=0)(prompt, 6)
    assert len(ids) == len(logprobs) == 6 and all(math.isfinite(lp) and lp <= 0 for lp in logprobs)
    greedy, _ = InProcessSampler(model, tokenizer, temperature=0.0)(prompt, 1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    assert logits.dtype == torch.bfloat16 and greedy == [int(torch.argmax(logits.float()))]


def test_device_flag_reaches_the_model_and_an_unavailable_device_is_named(tmp_path):
    from trainer.checkpoint_eval import checkpoint_policy_factory
    from trainer.model import PolicyLoadError
    from trainer.sft import sft

    model, _ = load_policy("tiny", device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"} and model.device.type == "cpu"
    make_eval_policy = checkpoint_policy_factory(
        "tiny", temperature=0.0, max_new_tokens=8, max_context_tokens=100, device="cpu", dtype="bfloat16"
    )
    eval_policy = make_eval_policy()  # eval's flags reach its policy: the cap, the device, the dtype
    assert eval_policy.max_context_tokens == 100
    assert next(eval_policy.sampler.model.parameters()).dtype == torch.bfloat16
    assert not torch.cuda.is_available()  # this test is about a machine without a GPU
    unavailable = "--device cuda: cuda requested but torch.cuda.is_available() is False"
    with pytest.raises(PolicyLoadError, match="only cpu, cuda"):
        load_policy("tiny", device="meta")
    with pytest.raises(PolicyLoadError, match="--dtype 'fp8'"):
        load_policy("tiny", dtype="fp8")
    with pytest.raises(PolicyLoadError, match=unavailable.replace("(", r"\(").replace(")", r"\)")):
        checkpoint_policy_factory("tiny", temperature=0.0, max_new_tokens=8, device="cuda")  # eval
    with pytest.raises(PolicyLoadError, match="cuda requested"):
        sft(SFTConfig(device="cuda"), tmp_path / "sft-cuda")  # before any demonstration runs
    assert not (tmp_path / "sft-cuda").exists()
    refused = _cli(*_train_command(tmp_path / "runs" / "cuda", 1)[3:], "--device", "cuda", timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert unavailable in " ".join((refused.stdout + refused.stderr).split())
    assert not (tmp_path / "runs" / "cuda").exists()  # refused before the run directory is made


def test_paper_preset_caps_the_context_and_config_files_carry_device_and_dtype(tmp_path):
    assert TrainConfig.paper().max_context_tokens == 16_384
    assert (TrainConfig().max_context_tokens, TrainConfig().device, TrainConfig().dtype) == (None, "cpu", "float32")
    path = tmp_path / "gpu.toml"
    path.write_text('device = "cuda:1"\ndtype = "bfloat16"\nmax_context_tokens = 8192\n')
    config = TrainConfig.from_file(path)
    assert (config.device, config.dtype, config.max_context_tokens) == ("cuda:1", "bfloat16", 8192)
    path.write_text('dtype = "fp8"\n')
    with pytest.raises(ValueError, match=r"gpu.toml: setting 'dtype'"):
        TrainConfig.from_file(path)
