"""`taskforge serve`: a checkpoint behind an OpenAI-compatible endpoint, checked with the openai
client over real HTTP, including vLLM's token-id extension the trainer's remote sampler uses."""

from __future__ import annotations

import openai
import pytest

from trainer.model import load_policy
from trainer.sampler import InProcessSampler, RemoteSampler
from trainer.serve import CheckpointServer


@pytest.fixture(scope="module")
def served():
    model, tokenizer = load_policy("tiny")
    with CheckpointServer(model, tokenizer, model_name="tiny-policy") as server:
        yield server, model, tokenizer


def test_chat_completion_with_usage_logprobs_and_token_ids(served):
    server, _, tokenizer = served
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny-policy"]
    response = client.chat.completions.create(
        model="tiny-policy",
        messages=[{"role": "system", "content": "Solve it."}, {"role": "user", "content": "List /tmp."}],
        max_tokens=12,
        temperature=0.8,
        seed=3,
        logprobs=True,
        extra_body={"return_token_ids": True},
    )
    choice = response.choices[0]
    extra = response.model_extra
    token_ids = choice.model_extra["token_ids"]
    assert response.usage.completion_tokens == len(token_ids) == len(choice.logprobs.content) <= 12
    assert response.usage.prompt_tokens == len(extra["prompt_token_ids"])
    expected_prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "List /tmp."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert extra["prompt_token_ids"] == list(expected_prompt)
    assert all(entry.logprob <= 0 for entry in choice.logprobs.content)
    text_ids = token_ids[:-1] if choice.finish_reason == "stop" else token_ids
    assert choice.message.content == tokenizer.decode(text_ids)


def test_unknown_model_is_a_404(served):
    server, _, _ = served
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])


def test_model_routes_accept_a_provider_prefix_and_errors_have_openai_shape(served):
    server, _, _ = served
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    assert client.models.retrieve("tiny-policy").id == "tiny-policy"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-5")
    assert missing.value.code == "model_not_found"
    completion = client.completions.create(model="openai/tiny-policy", prompt=[1, 2, 3], max_tokens=2)
    assert completion.model == "tiny-policy" and server.request_log[-1]["model"] == "openai/tiny-policy"
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
        client.chat.completions.create(model="tiny-policy", messages=[])


def test_remote_sampler_over_token_ids_matches_in_process_sampling(served):
    server, model, tokenizer = served
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Count the lines of /app/a.csv"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    remote = RemoteSampler(server.base_url, "tiny-policy", tokenizer, temperature=0.0)
    local = InProcessSampler(model, tokenizer, temperature=0.0)
    remote_ids, remote_logprobs = remote(list(prompt), 16)
    local_ids, local_logprobs = local(list(prompt), 16)
    assert remote_ids == local_ids and len(remote_ids) > 0
    assert remote_logprobs == pytest.approx(local_logprobs, abs=1e-5)


@pytest.mark.harbor
def test_harbor_terminus_2_talks_to_the_served_checkpoint(served, write_hello, base_image, tmp_path):
    """Harbor's reference agent runs against our endpoint: requests arrive with Harbor's
    rollout-detail options (logprobs, return_token_ids), and Harbor writes its trial result.
    The untrained tiny model cannot solve anything, so the trial ends at its agent timeout."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    server, _, _ = served
    task_dir = write_hello("hello", agent_timeout_sec=15.0)
    before = len(server.request_log)
    env = {**os.environ, "HARBOR_TELEMETRY": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "OPENAI_API_KEY": "unused"}
    harbor = Path(sys.executable).parent / "harbor"
    overlay = Path(__file__).resolve().parent.parent / "envs" / "harbor-fast.yaml"
    completed = subprocess.run(
        [
            str(harbor),
            "run",
            "-p",
            str(task_dir),
            "-a",
            "terminus-2",
            "-m",
            "openai/tiny-policy",
            "--ak",
            f"api_base={server.base_url}",
            "--ak",
            "collect_rollout_details=true",
            "--ak",
            "enable_summarize=false",
            "-o",
            str(tmp_path / "jobs"),
            "--job-name",
            "t2",
            "-y",
            "--extra-docker-compose",
            str(overlay),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    (result_path,) = (tmp_path / "jobs" / "t2").glob("*/result.json")
    result = json.loads(result_path.read_text())
    assert result["agent_info"]["name"] == "terminus-2"
    assert result["verifier_result"]["rewards"] == {"reward": 0.0}
    assert result["exception_info"] is None or result["exception_info"]["exception_type"] == "AgentTimeoutError"
    requests = server.request_log[before:]
    assert requests, "terminus-2 sent no request to the served checkpoint"
    assert all(r["model"] == "tiny-policy" and r.get("logprobs") and r.get("return_token_ids") for r in requests)
    assert (result_path.parent / "agent" / "trajectory.json").is_file()
