"""Fresh weights for remote sampling: the trainer pushes its weights to a real `taskforge serve`
process over vLLM's weight-transfer routes (disk backend), and the server's log-probs for fixed
token ids then equal the trainer's. Real processes, real HTTP, the real trainer update."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import save_file

from trainer.logprobs import sequence_logprobs
from trainer.model import load_checkpoint, load_policy, save_checkpoint
from trainer.rollout import RolloutBuilder
from trainer.serve import CheckpointServer
from trainer.train import TrainConfig, update
from trainer.weight_sync import WeightPusher, WeightSyncError

from .conftest import REPO_ROOT

FIXED_TEXT = "List the files in /app, then count the lines of /app/data.csv."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory) -> Path:
    model, tokenizer = load_policy("tiny")
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("start") / "policy")


@pytest.fixture(scope="module")
def served(start_checkpoint):
    """`taskforge serve CHECKPOINT` as its own process; yields its /v1 URL."""
    port = _free_port()
    env = {**os.environ, "TASKFORGE_TORCH_THREADS": "1"}
    command = [sys.executable, "-m", "taskforge.cli", "serve", str(start_checkpoint), "--port", str(port)]
    command += ["--model-name", "policy"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300  # a hang guard, not a speed target
    while True:
        assert process.poll() is None, f"taskforge serve exited: {process.stdout.read()[-2000:]}"
        try:
            if httpx.get(url + "/models", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "taskforge serve did not answer within 300 s"
        time.sleep(0.5)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _fixed_ids(tokenizer) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": FIXED_TEXT}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def _server_logprobs(url: str, ids: list[int]) -> torch.Tensor:
    """vLLM's prompt_logprobs for `ids` from the server: log p(ids[t] | ids[:t]) for t >= 1."""
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    response = client.completions.create(
        model="policy", prompt=ids, max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": 0}
    )
    rows = response.choices[0].model_extra["prompt_logprobs"]
    assert rows[0] is None and len(rows) == len(ids)
    return torch.tensor([row[str(token)]["logprob"] for row, token in zip(rows[1:], ids[1:], strict=True)])


def _trainer_logprobs(model, ids: list[int]) -> torch.Tensor:
    """The trainer's own log-probs (the chunked path the loss uses), same positions."""
    model.eval()
    with torch.no_grad():
        return sequence_logprobs(model, torch.tensor([ids]), temperature=1.0)[0, 1:].float()


def _rollouts(tokenizer):
    """Two groups of two episodes with a command, its output and different rewards: a real
    ECHO batch (policy and env terms both non-zero) without sandboxes."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rollouts = []
    for group, (command, output) in enumerate([("ls /app", "data.csv\nnotes.txt\n"), ("wc -l data.csv", "41\n")]):
        for reward in (1.0, 0.0):
            builder = RolloutBuilder.from_instruction(tokenizer, FIXED_TEXT, system="Reply with one ```bash block.")
            action = tokenizer.encode(f"```bash\n{command}\n```", add_special_tokens=False) + [im_end]
            builder.add_action(action, [-1.0] * len(action))
            builder.add_observation(output)
            rollout = builder.build(reward=reward, stop_reason="max_turns")
            rollouts.append(rollout.model_copy(update={"group_id": f"g{group}"}))
    return rollouts


def test_after_a_real_update_the_server_scores_fixed_ids_as_the_trainer_does(served, start_checkpoint, tmp_path):
    model, tokenizer = load_checkpoint(start_checkpoint)
    ids = _fixed_ids(tokenizer)
    before = _server_logprobs(served, ids)
    start_trainer = _trainer_logprobs(model, ids)
    assert (before - start_trainer).abs().max() < 1e-5  # the same checkpoint on both sides

    pusher = WeightPusher(served, tmp_path / "sampler_weights")
    pusher.push(model, 0)  # what the training loop does before its first step

    config = TrainConfig(mode="echo", epochs_per_batch=1, lr=1e-3, micro_batch_size=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    metrics = update(model, optimizer, scheduler, _rollouts(tokenizer), config, 0.05, tokenizer.pad_token_id)
    assert metrics["grad_norm"] > 0 and metrics["n_obs_tokens"] > 0

    pushed = pusher.push(model, 1)
    after = _server_logprobs(served, ids)
    trained = _trainer_logprobs(model, ids)
    diff_after = (after - trained).abs().max().item()
    moved = (after - before).abs().max().item()
    print(f"\nmax |server - trainer| after the push: {diff_after:.2e}; max |after - before|: {moved:.2e}")
    assert diff_after < 1e-5
    assert moved > 1e-3  # the step moved the log-probs, and the server followed

    assert httpx.get(served.removesuffix("/v1") + "/weight_info").json() == {"weight_version": "step-1"}
    # Only the latest push is kept on disk.
    assert pushed == (tmp_path / "sampler_weights" / "step-1").absolute()
    assert sorted(p.name for p in (tmp_path / "sampler_weights").iterdir()) == ["step-1"]


def test_a_bfloat16_push_writes_half_the_bytes_keeps_ties_and_the_server_serves_it(served, start_checkpoint, tmp_path):
    """sampler_dtype=bfloat16: float32 masters are written as bf16 (half the bytes; tied embeddings
    once), and the server loads them: its log-probs are the bf16 copy's, near the trainer's."""
    from safetensors import safe_open

    model, tokenizer = load_checkpoint(start_checkpoint)
    ids = _fixed_ids(tokenizer)
    full = WeightPusher(served, tmp_path / "fp32")._write(model, model.state_dict(), 0)
    half = WeightPusher(served, tmp_path / "bf16", dtype="bfloat16").push(model, 7)
    with safe_open(str(half / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        half_names = set(f.keys())  # noqa: SIM118
    with safe_open(str(full / "model.safetensors"), "pt") as f:
        assert half_names == set(f.keys())  # noqa: SIM118 - the same tensors (a tied head written once in both)
    assert dtypes == {torch.bfloat16}
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    assert httpx.get(served.removesuffix("/v1") + "/weight_info").json() == {"weight_version": "step-7"}
    gap = (_server_logprobs(served, ids) - _trainer_logprobs(model, ids)).abs().max().item()
    assert 0 < gap < 0.1, gap  # bf16 rounding of the weights, nothing else
    with pytest.raises(ValueError, match="bfloat16, float16 or float32"):
        WeightPusher(served, tmp_path / "x", dtype="int8")


def test_a_checkpoint_that_does_not_fit_is_refused_whole_and_the_served_weights_stay(served, tmp_path):
    root = served.removesuffix("/v1")
    _, tokenizer = load_policy("tiny")
    ids = _fixed_ids(tokenizer)
    before = _server_logprobs(served, ids)
    bad = tmp_path / "bad"
    bad.mkdir()
    model, _ = load_policy("tiny")
    state = {k: v.clone() + 1.0 for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["model.norm.weight"] = torch.ones(3)  # one wrong shape among otherwise valid tensors
    save_file(state, str(bad / "model.safetensors"))

    assert httpx.post(root + "/start_weight_update").status_code == 200
    refused = httpx.post(root + "/update_weights", json={"update_info": {"path": str(bad)}})
    assert refused.status_code == 400 and "model.norm.weight" in refused.text, refused.text
    # The failed update ended the session, as in vLLM, and nothing was copied in.
    assert httpx.post(root + "/finish_weight_update", json={"weight_version": "bad"}).status_code == 409
    assert torch.equal(_server_logprobs(served, ids), before)
    assert httpx.post(root + "/start_weight_update").status_code == 200
    relative = httpx.post(root + "/update_weights", json={"update_info": {"path": "relative/dir"}})
    assert relative.status_code == 400 and "absolute" in relative.text


def test_a_server_without_the_routes_fails_the_push_naming_url_route_and_what_to_start(tmp_path):
    model, tokenizer = load_policy("tiny")
    with CheckpointServer(model, tokenizer, model_name="frozen", weight_updates=False) as server:
        pusher = WeightPusher(server.base_url, tmp_path / "w")
        with pytest.raises(WeightSyncError) as failed:
            pusher.push(model, 3)
    message = str(failed.value)
    root = server.base_url.removesuffix("/v1")
    assert f"POST {root}/init_weight_transfer_engine answered 404" in message
    assert "VLLM_SERVER_DEV_MODE=1" in message and '{"backend": "disk"}' in message
    unreachable = WeightPusher("http://127.0.0.1:9/v1", tmp_path / "w2")
    with pytest.raises(WeightSyncError, match=r"POST http://127.0.0.1:9/init_weight_transfer_engine failed"):
        unreachable.push(model, 3)
