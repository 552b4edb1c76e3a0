"""LLM-staged generation over real HTTP against a scripted OpenAI-compatible server, with the
real validation gates in Docker: good tasks are kept, bad ones rejected with their reason."""

from __future__ import annotations

import itertools
import json
import re
import threading

import pytest

from taskforge.forge.llm import (
    LLMForgeConfig,
    StageReplyError,
    generate_llm,
    llm_forge_summary,
    parse_dockerfile,
    parse_idea,
)
from taskforge.tasks import lint_task, load_task
from taskforge.testing.openai_server import ErrorReply, Malformed, Reply, ScriptedOpenAIServer, fail_first

VARIANTS = ["good", "good", "build_fails", "nop_passes", "malformed_solution", "initial_fails"]


def _fence(language: str, body: str) -> str:
    return f"Here it is.\n```{language}\n{body}\n```\n"


def forge_script():
    """Plays the five stages. Idea k (in arrival order) gets VARIANTS[k]; the variant rides in the
    instruction, which every later stage's prompt repeats. The first idea reply is malformed."""
    ideas = itertools.count()
    lock = threading.Lock()

    def script(request):
        system = request.text_of("system")
        prompt = request.messages[1]["content"]  # the stage prompt (later messages are re-asks)
        stage = re.search(r"Stage: ([a-z -]+)\.", system).group(1)
        if stage == "idea":
            if len(request.messages) == 2 and request.index == 2:
                return Reply(content="I think a nice task would be about sums!")  # no JSON: asked again
            with lock:
                k = next(ideas)
            variant = VARIANTS[k % len(VARIANTS)]
            numbers = [k + 3, 10 * k + 7, 5]
            idea = {
                "title": f"Sum numbers {variant}",
                "instruction": (
                    "Add up the integers in /srv/in/numbers.txt (one per line) and write the total to "
                    f"/srv/out/sum.txt. Variant {variant}-{k}."
                ),
                "truth": {
                    "files": {"/srv/in/numbers.txt": "\n".join(map(str, numbers)) + "\n"},
                    "expected": {"/srv/out/sum.txt": sum(numbers)},
                },
                "outputs": ["/srv/out/sum.txt"],
            }
            return Reply(content=_fence("json", json.dumps(idea)))
        variant = re.search(r"Variant ([a-z_]+)-(\d+)", prompt).group(1)
        truth = json.loads(prompt.split("(inputs and expected results):\n", 1)[1].split("\n\n", 1)[0])
        total = truth["expected"]["/srv/out/sum.txt"]
        numbers_text = truth["files"]["/srv/in/numbers.txt"]
        if stage == "initial-state test":
            check = (
                "assert Path('/srv/out/sum.txt').exists()"
                if variant == "initial_fails"
                else "assert not Path('/srv/out/sum.txt').exists()"
            )
            return Reply(
                content=_fence(
                    "python",
                    "from pathlib import Path\n\ndef test_inputs():\n"
                    f"    assert Path('/srv/in/numbers.txt').read_text() == {numbers_text!r}\n"
                    f"    {check}\n",
                )
            )
        if stage == "final-state test":
            body = (
                "    assert True\n"
                if variant == "nop_passes"
                else f"    assert int(Path('/srv/out/sum.txt').read_text().strip()) == {total}\n"
            )
            return Reply(content=_fence("python", f"from pathlib import Path\n\ndef test_sum():\n{body}"))
        if stage == "dockerfile":
            broken = "RUN exit 3\n" if variant == "build_fails" else ""
            printf = numbers_text.replace("\n", "\\n")
            return Reply(
                content=_fence(
                    "dockerfile",
                    f"FROM debian:bookworm\n{broken}"
                    f"RUN mkdir -p /srv/in /srv/out && printf '{printf}' > /srv/in/numbers.txt\n"
                    "WORKDIR /srv",
                )
            )
        if stage == "solution":
            if variant == "malformed_solution":
                return Reply(content="Just add them up with awk.")
            return Reply(content=_fence("bash", "awk '{s += $1} END {print s}' /srv/in/numbers.txt > /srv/out/sum.txt"))
        raise AssertionError(stage)

    return script


def test_llm_forge_keeps_good_tasks_and_logs_rejections(tmp_path, base_image):
    # The first two requests fail with 429 and 500 (retried by the client); one reply later is
    # not a chat completion at all (retried too); one idea reply has no JSON (asked again).
    script = fail_first(
        fail_first(forge_script(), 1, ErrorReply(500, "overloaded")),
        1,
        ErrorReply(429, "slow down", retry_after_sec=0.1),
    )
    broken_once = {"done": False}

    def flaky(request):
        if request.index == 5 and not broken_once["done"]:
            broken_once["done"] = True
            return Malformed()
        return script(request)

    out = tmp_path / "llm-set"
    with ScriptedOpenAIServer(flaky, models=["forge-model"]) as server:
        config = LLMForgeConfig(
            model="forge-model", base_url=server.base_url, concurrency=2, stage_retries=1, max_retries=3
        )
        records = generate_llm(len(VARIANTS), seed=7, out_dir=out, config=config)
        n_requests = len(server.requests)

    assert sorted(r.status for r in records) == ["kept", "kept", "rejected", "rejected", "rejected", "rejected"]
    reasons = sorted(r.reason for r in records if r.reason)
    assert reasons == ["build_failed", "initial_test_failed", "malformed_reply", "nop_passed"]
    kept = [r for r in records if r.status == "kept"]
    for record in kept:
        task = load_task(record.path)
        assert lint_task(task.path) == []
        assert task.metadata["generator_version"] == "llm-1.0" and task.metadata["model"] == "forge-model"
        assert "numbers.txt" not in (task.path / "environment" / "Dockerfile").read_text().split("FROM")[0]
        assert (task.path / "environment" / "Dockerfile").read_text().startswith(f"FROM {base_image}\n")
    malformed = next(r for r in records if r.reason == "malformed_reply")
    assert "no ```bash block" in malformed.detail

    summary = llm_forge_summary(records)
    assert summary.n_kept == 2 and summary.n_requests >= 5 * 5
    assert summary.n_input_tokens > 0 and summary.n_output_tokens > 0
    assert (out / "rejected.jsonl").read_text().count("\n") == 4

    # Re-running resumes: no request is sent, nothing changes.
    with ScriptedOpenAIServer(flaky, models=["forge-model"]) as server:
        again = generate_llm(
            len(VARIANTS), seed=7, out_dir=out, config=LLMForgeConfig(model="forge-model", base_url=server.base_url)
        )
        assert server.requests == []
    assert [r.model_dump() for r in again] == [r.model_dump() for r in records]
    assert n_requests > summary.n_requests  # the 429, 500 and malformed body were retried over HTTP


def test_stage_parsers_name_what_is_wrong():
    with pytest.raises(StageReplyError, match="not JSON"):
        parse_idea("a sum task")
    with pytest.raises(StageReplyError, match="does not name the output"):
        parse_idea(json.dumps({"title": "t", "instruction": "do it", "truth": {"a": 1}, "outputs": ["/x/out.txt"]}))
    with pytest.raises(StageReplyError, match="uses the network"):
        parse_dockerfile("```dockerfile\nFROM x\nRUN apt-get install -y jq\n```", "taskforge/base:1")
    steps, workdir = parse_dockerfile("```dockerfile\nFROM anything\nRUN mkdir /a\nWORKDIR /a\n```", "taskforge/base:1")
    assert steps == ["RUN mkdir /a"] and workdir == "/a"


def test_generate_llm_cli_summarises_and_resumes(tmp_path, base_image):
    import os
    import subprocess
    import sys

    from .conftest import REPO_ROOT

    out = tmp_path / "cli-set"
    command = [
        sys.executable,
        "-m",
        "taskforge.cli",
        "generate",
        "--llm",
        "--n",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
        "--concurrency",
        "2",
    ]
    env = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "unused"}
    with ScriptedOpenAIServer(forge_script(), models=["forge-model"]) as server:
        completed = subprocess.run(
            [*command, "--model", "forge-model", "--base-url", server.base_url],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=600,
        )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "2 kept, 0 rejected of 2 tasks" in completed.stdout
    assert "tokens:" in completed.stdout
    assert len([p for p in out.iterdir() if (p / "task.toml").is_file()]) == 2
    with ScriptedOpenAIServer(forge_script(), models=["forge-model"]) as server:
        wrong_model = subprocess.run(
            [*command, "--model", "other-model", "--base-url", server.base_url, "--n", "3"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=600,
        )
    assert wrong_model.returncode == 1 and "other-model" in wrong_model.stderr
