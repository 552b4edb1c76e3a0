"""`taskforge serve`: a checkpoint behind an OpenAI-compatible endpoint, checked with the openai
client over real HTTP, including vLLM's token-id extension the trainer's remote sampler uses."""

from __future__ import annotations

import openai
import pytest

from taskforge.agent.episode import EpisodeConfig
from taskforge.agent.loop import run_episode
from taskforge.openai_http import OpenAIError
from taskforge.sandbox.docker import DockerSandbox
from taskforge.tasks import load_task
from trainer.model import load_policy
from trainer.rollout import RolloutBuilder, TokenKind
from trainer.sampler import InProcessSampler, LocalModelPolicy, RemoteSampler
from trainer.serve import CheckpointServer

from .conftest import FIXTURES


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


class StopCheckingServer(CheckpointServer):
    """`taskforge serve` whose model is replaced by a scripted reply ending with <|im_end|> (the tiny
    untrained model rarely stops by itself), and which refuses a completion request that does not ask
    for include_stop_str_in_output. The HTTP side and the reply's shaping are the real server's."""

    def __init__(self, *args, reply_ids: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.reply_ids = reply_ids

    def completion(self, body):
        if body.get("include_stop_str_in_output") is not True and not body.get("allow_without_stop_str"):
            raise OpenAIError(400, "this test server needs include_stop_str_in_output: true")
        return super().completion(body)

    def generate(self, prompt_ids, *, max_tokens, temperature, seed, stop_ids):
        ids = self.reply_ids[:max_tokens]
        return ids, [-0.5] * len(ids), "stop" if ids and ids[-1] in stop_ids else "length"


def test_remote_sampler_asks_to_keep_the_stop_token_and_the_rollout_holds_it_as_sampled(served):
    _, model, tokenizer = served
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reply_ids = tokenizer.encode("```bash\nls\n```", add_special_tokens=False) + [im_end]
    with StopCheckingServer(model, tokenizer, model_name="stopper", reply_ids=reply_ids) as server:
        sampler = RemoteSampler(server.base_url, "stopper", tokenizer, temperature=0.0)
        ids, logprobs = sampler([1, 2, 3], 32)
        assert server.request_log[-1]["include_stop_str_in_output"] is True
        assert ids == reply_ids and ids[-1] == im_end and logprobs == [-0.5] * len(ids)

        # The server honours the parameter as vLLM does: the ids always end with the stop token, the
        # text only with include_stop_str_in_output.
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        for keep in (True, False):
            extra = {"return_token_ids": True, "include_stop_str_in_output": keep, "allow_without_stop_str": True}
            choice = client.completions.create(model="stopper", prompt=[1, 2, 3], max_tokens=32, extra_body=extra)
            choice = choice.choices[0]
            assert choice.model_extra["token_ids"] == reply_ids and choice.finish_reason == "stop"
            assert choice.text == "```bash\nls\n```" + ("<|im_end|>" if keep else "")

        # In an episode's policy the stop token is an action token (sampled), not template the builder adds.
        policy = LocalModelPolicy(model, tokenizer, max_new_tokens=32, sampler=sampler)
        reply = policy.next_action([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        assert reply.finish_reason == "stop" and reply.text == "```bash\nls\n```"
        rollout = policy.rollout(0.0, "done")
        assert rollout.ids_of(TokenKind.ACTION) == reply_ids


@pytest.fixture(scope="module")
def sandbox(base_image):
    with DockerSandbox(base_image) as box:
        yield box


def test_context_cap_ends_episodes_before_the_prompt_passes_it_in_both_samplers(served, sandbox):
    """Cap = first prompt + one turn's budget: turn 1 is sampled, turn 2 (a longer prompt) is not, and
    the episode stops with context_exceeded. Greedy sampling in-process and over HTTP gives the same
    token-exact rollout, and the server is never asked for more than the cap."""
    server, model, tokenizer = served
    task = load_task(FIXTURES / "harbor-hello")
    config = EpisodeConfig(max_turns=4, system_prompt="Reply with one ```bash block.")
    first_prompt = RolloutBuilder(
        tokenizer, [{"role": "system", "content": config.system_prompt}, {"role": "user", "content": task.instruction}]
    ).token_ids
    max_new = 8
    cap = len(first_prompt) + max_new
    rollouts = {}
    for kind in ("in-process", "remote"):
        sampler = None
        if kind == "remote":
            sampler = RemoteSampler(server.base_url, "tiny-policy", tokenizer, temperature=0.0, max_context_tokens=cap)
            n_requests = len(server.request_log)
        policy = LocalModelPolicy(
            model, tokenizer, temperature=0.0, max_new_tokens=max_new, max_context_tokens=cap, sampler=sampler
        )
        episode = run_episode(task, sandbox, policy, config, timeout_sec=120)
        assert episode.stop_reason == "context_exceeded" and len(episode.turns) == 1, episode.error_message
        assert f"would pass max_context_tokens={cap}" in episode.error_message
        rollout = policy.rollout(0.0, episode.stop_reason)
        assert rollout.stop_reason == "context_exceeded" and rollout.token_ids[: len(first_prompt)] == first_prompt
        # No observation past the cap is kept: at most the cap plus the turn's closing template tokens.
        assert len(rollout) <= cap + 2
        if kind == "remote":
            requests = server.request_log[n_requests:]
            assert len(requests) == 1 and len(requests[0]["prompt"]) + requests[0]["max_tokens"] <= cap
        rollouts[kind] = rollout
    assert rollouts["remote"].token_ids == rollouts["in-process"].token_ids
    assert rollouts["remote"].action_mask == rollouts["in-process"].action_mask
