"""The Qwen3-8B recipe (`recipes/qwen3-8b-8gpu.toml`, docs/gpu.md) cannot drift from the code: the
file loads through the same path `taskforge train` uses and carries the paper's settings, the CLI
reads it up to the GPU check, and every taskforge command line the doc quotes parses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from taskforge.commands import app
from trainer.train import TrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "recipes" / "qwen3-8b-8gpu.toml"
GPU_DOC = REPO_ROOT / "docs" / "gpu.md"


def test_recipe_is_the_papers_run_with_float32_masters_and_recompute():
    config = TrainConfig.from_preset("paper", RECIPE, mode="echo")
    paper = TrainConfig.paper()
    for key in ("env_coef", "lr", "warmup_steps", "weight_decay", "grad_clip", "clip_eps_low", "clip_eps_high"):
        assert getattr(config, key) == getattr(paper, key), key
    for key in ("kl_coef", "tasks_per_step", "epochs_per_batch", "temperature", "max_new_tokens", "max_output_chars"):
        assert getattr(config, key) == getattr(paper, key), key
    assert (config.group_size, config.env_coef, config.max_turns, config.max_context_tokens) == (16, 0.05, 16, 16_384)
    assert config.system_prompt is None  # from the preset: TOML has no null
    assert (config.dtype, config.fsdp_compute_dtype, config.gradient_checkpointing) == ("float32", "bfloat16", True)
    assert (config.device, config.sampler_model, config.sampler_dtype) == ("cuda", "policy", "bfloat16")
    assert config.keep_checkpoints == 2
    assert config.tasks_per_step % 4 == 0  # whole groups per rank on the doc's 4 training GPUs


def test_a_flag_overrides_the_recipe_and_the_recipe_the_preset():
    config = TrainConfig.from_preset("paper", RECIPE, mode="echo", lr=3e-6, seed=None)
    assert config.lr == 3e-6 and config.seed == 0
    assert TrainConfig.from_preset("tiny", RECIPE, mode="echo").system_prompt is not None
    with pytest.raises(ValueError, match="--preset must be tiny or paper"):
        TrainConfig.from_preset("huge", RECIPE, mode="echo")


def test_the_cli_reads_the_recipe_and_stops_at_the_missing_gpu(tmp_path):
    """Without CUDA the recipe's `device = "cuda"` is a clear error before any run starts (GPUs hidden,
    so this holds on a GPU machine too)."""
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "taskforge.cli", "train", "echo", "--preset", "paper", "--config", str(RECIPE)]
    command += ["--tasks", str(REPO_ROOT / "tasks" / "sample"), "--runs-dir", str(runs)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cuda requested but torch.cuda.is_available() is False" in result.stdout + result.stderr
    assert not runs.exists()


def _doc_commands() -> list[list[str]]:
    """taskforge command lines in docs/gpu.md's bash blocks: continuations joined, comments and
    leading VAR=value assignments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", GPU_DOC.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if words and words[0] == "taskforge" and "..." not in words:
                commands.append(words[1:])
    return commands


def test_every_taskforge_command_in_the_gpu_doc_parses():
    commands = _doc_commands()
    assert len(commands) >= 4  # generate, filter, train, eval of the recipe at least
    runner = CliRunner()
    for words in commands:
        # --help after the options: click rejects an unknown option before it prints help
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"docs/gpu.md: `taskforge {' '.join(words)}`: {result.output[-800:]}"
