"""LLM-staged generation over real HTTP against a scripted OpenAI-compatible server, with the
real validation gates in Docker: good tasks are kept, a failed gate goes back to its stage with
the error, tasks are rejected with their reason once the repair rounds run out."""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskforge.forge.llm import (
    LLMForgeConfig,
    SkeletonIndex,
    StageReplyError,
    expected_fragments,
    generate_llm,
    hardcoded_expected,
    llm_forge_summary,
    parse_consistency,
    parse_dockerfile,
    parse_idea,
    redact,
)
from taskforge.tasks import TaskMetadata, TaskSpec, lint_task, load_task, write_task
from taskforge.testing.openai_server import ErrorReply, Malformed, Reply, ScriptedOpenAIServer, fail_first

REPAIR_MARK = "failed a validation gate"  # forge_repair.md's wording
SEED_TASK = "seed-count-lines"


def _fence(language: str, body: str) -> str:
    return f"Here it is.\n```{language}\n{body}\n```\n"


@dataclass
class Play:
    """One scripted task: what each stage replies. `solutions` and `dockerfile_extras` are
    indexed by the number of repairs the stage's thread has seen (the last one repeats)."""

    title: str
    instruction: str
    output: str  # the path the test checks; it also tells the script which play a prompt is about
    files: dict[str, str]
    expected: Any
    solutions: list[str]
    final_check: str = ""  # default: the output holds `expected`
    initial_check: str = ""  # default: the output does not exist yet
    dockerfile_extras: list[str] = field(default_factory=lambda: [""])
    stricter: bool = False  # the consistency stage finds the final test stricter than the instruction
    fenced_solution: bool = True  # False: the solution reply has no ```bash block

    def initial_test(self) -> str:
        lines = [f"    assert Path({path!r}).read_text() == {content!r}" for path, content in self.files.items()]
        check = self.initial_check or f"assert not Path({self.output!r}).exists()"
        return "from pathlib import Path\n\n\ndef test_inputs():\n" + "\n".join(lines) + f"\n    {check}\n"

    def final_test(self) -> str:
        check = self.final_check or f"assert int(Path({self.output!r}).read_text().strip()) == {self.expected}"
        return f"from pathlib import Path\n\n\ndef test_outcome():\n    {check}\n"

    def dockerfile(self, n_repairs: int) -> str:
        extra = self.dockerfile_extras[min(n_repairs, len(self.dockerfile_extras) - 1)]
        runs = []
        for path, content in self.files.items():
            folder = path.rsplit("/", 1)[0]
            runs.append(f"RUN mkdir -p {folder} && printf '{content.replace(chr(10), '\\n')}' > {path}")
        out_folder = self.output.rsplit("/", 1)[0]
        return "FROM debian:bookworm\n" + extra + "\n".join(runs) + f"\nRUN mkdir -p {out_folder}\nWORKDIR /srv"

    def idea(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "instruction": self.instruction,
            "truth": {"files": self.files, "expected": {self.output: self.expected}},
            "outputs": [self.output],
        }


def _numbers(*values: int) -> str:
    return "".join(f"{v}\n" for v in values)


PLAYS = {
    "good": Play(
        "Sum numbers",
        "Add up the integers in `/srv/in/numbers.txt` (one per line) and write the total to `/srv/out/sum.txt`.",
        "/srv/out/sum.txt",
        {"/srv/in/numbers.txt": _numbers(170, 205, 48)},
        423,
        ["awk '{s += $1} END {print s}' /srv/in/numbers.txt > /srv/out/sum.txt"],
    ),
    # The first solve.sh sums instead of summing squares: the oracle gate fails, the error goes
    # back to the solution stage (expected result redacted), the second solve.sh passes.
    "oracle_repair": Play(
        "Sum of squares",
        "Add up the squares of the integers in `/srv/in/side.txt` (one per line) and write the total to "
        "`/srv/out/squares.txt`.",
        "/srv/out/squares.txt",
        {"/srv/in/side.txt": _numbers(12, 25, 9)},
        850,
        [
            "awk '{s += $1} END {print s}' /srv/in/side.txt > /srv/out/squares.txt",
            "awk '{s += $1 * $1} END {print s}' /srv/in/side.txt > /srv/out/squares.txt",
        ],
    ),
    "build_fails": Play(
        "Word count",
        "Write the number of words in `/srv/in/words.txt` to `/srv/out/words.txt`.",
        "/srv/out/words.txt",
        {"/srv/in/words.txt": "alpha beta gamma\n"},
        3,
        ["wc -w < /srv/in/words.txt > /srv/out/words.txt"],
        dockerfile_extras=["RUN exit 3\n"],
    ),
    "initial_fails": Play(
        "Line total",
        "Count the non-empty lines of `/srv/in/rows.txt` and write the number to `/srv/out/rows.txt`.",
        "/srv/out/rows.txt",
        {"/srv/in/rows.txt": "a\nb\n"},
        2,
        ["grep -c . /srv/in/rows.txt > /srv/out/rows.txt"],
        initial_check="assert Path('/srv/out/rows.txt').exists()",
    ),
    "hardcoded": Play(
        "Product",
        "Multiply the integers in `/srv/in/factors.txt` (one per line) and write the product to "
        "`/srv/out/product.txt`.",
        "/srv/out/product.txt",
        {"/srv/in/factors.txt": _numbers(6, 707)},
        4242,
        ["echo 4242 > /srv/out/product.txt"],
    ),
    "strict": Play(
        "Largest value",
        "Write the largest integer of `/srv/in/values.txt` to `/srv/out/largest.txt`.",
        "/srv/out/largest.txt",
        {"/srv/in/values.txt": _numbers(31, 770, 5)},
        770,
        ["sort -n /srv/in/values.txt | tail -n 1 > /srv/out/largest.txt"],
        final_check="assert Path('/srv/out/largest.txt').stat().st_mode & 0o777 == 0o600",
        stricter=True,
    ),
    # The set already holds SEED_TASK: this instruction is its skeleton with other paths.
    "duplicate": Play(
        "Count lines again",
        "Count the lines of `/srv/in/log.txt` and write the count to `/srv/out/lines.txt`.",
        "/srv/out/lines.txt",
        {"/srv/in/log.txt": "x\ny\n"},
        2,
        ["wc -l < /srv/in/log.txt > /srv/out/lines.txt"],
    ),
    # Other words, but SEED_TASK's program with other paths.
    "same_program": Play(
        "How long is the journal",
        "How many lines does `/srv/in/journal.txt` hold? Put that number in `/srv/out/journal/n.txt`.",
        "/srv/out/journal/n.txt",
        {"/srv/in/journal.txt": "x\ny\nz\n"},
        3,
        ["mkdir -p /srv/out/journal\nwc -l < /srv/in/journal.txt > /srv/out/journal/n.txt"],
    ),
    "malformed_solution": Play(
        "Digits",
        "Write how many digits `/srv/in/digits.txt` holds to `/srv/out/digits.txt`.",
        "/srv/out/digits.txt",
        {"/srv/in/digits.txt": "123\n"},
        3,
        ["Just count them."],
        fenced_solution=False,
    ),
}


def seed_set(folder) -> None:
    """The set the run adds to: one task, written as any generator would."""
    spec = TaskSpec(
        name=f"taskforge/{SEED_TASK}",
        instruction="Count the lines of `/data/notes.txt` and write the count to `/data/out/count.txt`.",
        tests={"test_outputs.py": "def test_x():\n    assert False\n"},
        solution="mkdir -p /data/out\nwc -l < /data/notes.txt > /data/out/count.txt",
        metadata=TaskMetadata(
            family="line_count", domain="data_processing", difficulty="easy", seed=0, generator_version="test"
        ),
    )
    write_task(spec, folder / SEED_TASK)


def _play_in(text: str, plays: dict[str, Play]) -> Play:
    return next(play for play in plays.values() if f"`{play.output}`" in text)


def forge_script(order: list[str], *, malformed_idea_at: int | None = None):
    """Plays each stage. Fresh idea k (in arrival order) is PLAYS[order[k]]; later stages find
    their play by the output path in the instruction, which every stage's prompt repeats."""
    plays = {name: PLAYS[name] for name in order}
    ideas = itertools.count()
    lock = threading.Lock()
    judged = set()

    def script(request):
        stage = re.search(r"Stage: ([a-z -]+)\.", request.text_of("system")).group(1)
        messages = request.messages
        n_repairs = sum(REPAIR_MARK in m["content"] for m in messages if m["role"] == "user")
        if stage == "idea":
            if len(messages) == 2 and request.index == malformed_idea_at:
                return Reply(content="I think a nice task would be about sums!")  # no JSON: asked again
            if n_repairs:  # the idea was sent back: offer it again
                play = _play_in([m["content"] for m in messages if m["role"] == "assistant"][-1], plays)
            else:
                with lock:
                    play = plays[order[next(ideas) % len(order)]]
            return Reply(content=_fence("json", json.dumps(play.idea())))
        play = _play_in(messages[1]["content"], plays)
        if stage == "initial-state test":
            return Reply(content=_fence("python", play.initial_test()))
        if stage == "dockerfile":
            return Reply(content=_fence("dockerfile", play.dockerfile(n_repairs)))
        if stage == "final-state test":
            return Reply(content=_fence("python", play.final_test()))
        if stage == "consistency":
            with lock:
                first_judgement = play.title not in judged
                judged.add(play.title)
            if play is plays.get("good") and first_judgement:
                return Reply(content="The test looks consistent to me.")  # not the JSON asked for: asked again
            stricter = play.stricter and "st_mode" in messages[1]["content"]
            verdict = {"verdict": "stricter", "unstated": ["the file mode 600"]} if stricter else None
            return Reply(content=_fence("json", json.dumps(verdict or {"verdict": "consistent", "unstated": []})))
        if stage == "solution":
            solution = play.solutions[min(n_repairs, len(play.solutions) - 1)]
            return Reply(content=_fence("bash", solution) if play.fenced_solution else solution)
        raise AssertionError(stage)

    return script


def _stage_requests(requests, stage: str) -> list:
    return [r for r in requests if f"Stage: {stage}." in r.text_of("system")]


def _prompts_of(request) -> str:
    """What the forge sent in one request (system and user messages, not the replies it quotes)."""
    return "\n".join(str(m["content"]) for m in request.messages if m["role"] != "assistant")


def test_llm_forge_repairs_failed_gates_and_logs_rejections(tmp_path, base_image):
    # The first two requests fail with 429 and 500 (retried by the client); one reply later is
    # not a chat completion at all (retried too); one idea reply has no JSON (asked again).
    order = list(PLAYS)
    script = fail_first(
        fail_first(forge_script(order, malformed_idea_at=2), 1, ErrorReply(500, "overloaded")),
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
    seed_set(out)
    with ScriptedOpenAIServer(flaky, models=["forge-model"]) as server:
        config = LLMForgeConfig(
            model="forge-model",
            base_url=server.base_url,
            concurrency=2,
            stage_retries=1,
            max_retries=3,
            repair_rounds=1,
        )
        records = generate_llm(len(order), seed=7, out_dir=out, config=config)
        requests = list(server.requests)

    by_title = {PLAYS[name].title: name for name in order}
    outcome = {by_title[_title_of(r)]: r for r in records}
    assert {name: (r.status, r.reason) for name, r in outcome.items()} == {
        "good": ("kept", None),
        "oracle_repair": ("kept", None),
        "build_fails": ("rejected", "build_failed"),
        "initial_fails": ("rejected", "initial_test_failed"),
        "hardcoded": ("rejected", "solution_hardcodes_expected"),
        "strict": ("rejected", "test_stricter_than_instruction"),
        "duplicate": ("rejected", "duplicate"),
        "same_program": ("rejected", "duplicate"),
        "malformed_solution": ("rejected", "malformed_reply"),
    }
    # Each rejection after a repair round names it; the ledger keeps the repairs tried.
    assert outcome["good"].repairs == []
    assert outcome["oracle_repair"].repairs == ["oracle_failed"]
    for name, reason in [
        ("build_fails", "build_failed"),
        ("initial_fails", "initial_test_failed"),
        ("hardcoded", "solution_hardcodes_expected"),
        ("strict", "test_stricter_than_instruction"),
        ("duplicate", "duplicate"),
        ("same_program", "duplicate"),
    ]:
        assert outcome[name].repairs == [reason], name
        assert f"(after 1 repair round: {reason})" in outcome[name].detail, name
    assert "'4242' verbatim" in outcome["hardcoded"].detail
    assert f"instruction has the same skeleton as the set's task {SEED_TASK}" in outcome["duplicate"].detail
    assert f"solution has the same skeleton as the set's task {SEED_TASK}" in outcome["same_program"].detail
    assert "no ```bash block" in outcome["malformed_solution"].detail

    # The solution stage never sees the hidden truth, nor the expected results in a repair.
    solution_requests = _stage_requests(requests, "solution")
    assert solution_requests
    for request in solution_requests:
        play = _play_in(request.messages[1]["content"], PLAYS)
        prompts = _prompts_of(request)
        assert "Hidden truth" not in prompts and '"expected"' not in prompts
        assert hardcoded_expected(prompts, expected_fragments(play.idea())) is None, play.title
    # The failed oracle gate went back to the solution stage with the test's error, redacted.
    repaired = [r for r in solution_requests if "squares" in r.messages[1]["content"] and len(r.messages) > 2]
    assert len(repaired) == 1
    feedback = repaired[0].messages[-1]["content"]
    assert REPAIR_MARK in feedback and "(oracle_failed)" in feedback and "<hidden>" in feedback
    assert "assert" in feedback and "850" not in feedback
    hardcoded_feedback = [r.messages[-1]["content"] for r in solution_requests if "factors" in _prompts_of(r)][-1]
    assert "(solution_hardcodes_expected)" in hardcoded_feedback and "4242" not in hardcoded_feedback
    # The failed build went back to the Dockerfile stage with the build's error.
    dockerfile_repairs = [r for r in _stage_requests(requests, "dockerfile") if len(r.messages) > 2]
    by_output = {PLAYS["build_fails"].output: "(build_failed)", PLAYS["initial_fails"].output: "initial_test_failed"}
    assert sorted(_play_in(r.messages[1]["content"], PLAYS).title for r in dockerfile_repairs) == sorted(
        ["Word count", "Line total"]
    )
    for request in dockerfile_repairs:
        play = _play_in(request.messages[1]["content"], PLAYS)
        assert by_output[play.output] in request.messages[-1]["content"]
    assert (
        "exit 3" in next(r for r in dockerfile_repairs if "words" in r.messages[1]["content"]).messages[-1]["content"]
    )
    # The consistency verdict went back to the final-test stage with what the test asks beyond the text.
    final_repairs = [r for r in _stage_requests(requests, "final-state test") if len(r.messages) > 2]
    assert [_play_in(r.messages[1]["content"], PLAYS).title for r in final_repairs] == ["Largest value"]
    assert "the file mode 600" in final_repairs[0].messages[-1]["content"]
    # The initial-state test reaches the Dockerfile and final-test stages.
    for stage in ("dockerfile", "final-state test"):
        for request in _stage_requests(requests, stage):
            play = _play_in(request.messages[1]["content"], PLAYS)
            assert play.initial_test() in request.messages[1]["content"], stage
    # The consistency stage's free-text reply was asked again; the judge saw instruction and test only.
    consistency = _stage_requests(requests, "consistency")
    assert any("That reply cannot be used" in _prompts_of(r) for r in consistency)
    assert all("Hidden truth" not in r.messages[1]["content"] for r in consistency)
    # Duplicates stop before any later stage.
    later_stages = [r for r in requests if "Stage: idea." not in r.text_of("system")]
    assert later_stages and not any("/srv/out/lines.txt" in r.messages[1]["content"] for r in later_stages)

    for name in ("good", "oracle_repair"):
        task = load_task(outcome[name].path)
        assert lint_task(task.path) == []
        assert task.metadata["generator_version"] == "llm-2.0" and task.metadata["model"] == "forge-model"
        assert task.metadata["repairs"] == ",".join(outcome[name].repairs)
        assert (task.path / "environment" / "Dockerfile").read_text().startswith(f"FROM {base_image}\n")
    assert "$1 * $1" in (load_task(outcome["oracle_repair"].path).path / "solution" / "solve.sh").read_text()
    # Only solve.sh changed in the repair round: nop's verdict on the same environment and tests stands.
    rounds = out / ".forge" / "trials" / f"{outcome['oracle_repair'].index:06d}"
    assert [sorted(p.name.rsplit("__", 1)[1] for p in (rounds / r).iterdir()) for r in ("round-0", "round-1")] == [
        ["nop", "oracle"],
        ["oracle"],
    ]

    summary = llm_forge_summary(records)
    assert summary.n_kept == 2 and summary.n_input_tokens > 0 and summary.n_output_tokens > 0
    assert summary.n_kept_after_repair == 1 and summary.repairs["duplicate"] == 2
    assert (out / "rejected.jsonl").read_text().count("\n") == len(order) - 2
    assert len(requests) > summary.n_requests  # the 429, 500 and malformed body were retried over HTTP

    # Re-running resumes: no request is sent, nothing changes.
    with ScriptedOpenAIServer(flaky, models=["forge-model"]) as server:
        again = generate_llm(
            len(order), seed=7, out_dir=out, config=LLMForgeConfig(model="forge-model", base_url=server.base_url)
        )
        assert server.requests == []
    assert [r.model_dump() for r in again] == [r.model_dump() for r in records]


def _title_of(record) -> str:
    """The play a record is about, from its name's slug."""
    for play in PLAYS.values():
        slug = re.sub(r"[^a-z0-9]+", "-", play.title.lower())
        if record.name and record.name.split("/")[-1].startswith(slug + "-"):
            return play.title
    raise AssertionError(record)


def test_stage_parsers_name_what_is_wrong():
    with pytest.raises(StageReplyError, match="not JSON"):
        parse_idea("a sum task")
    with pytest.raises(StageReplyError, match="does not name the output"):
        parse_idea(
            json.dumps(
                {
                    "title": "t",
                    "instruction": "do it",
                    "truth": {"files": {"/i": "1"}, "expected": {"/x/out.txt": 1}},
                    "outputs": ["/x/out.txt"],
                }
            )
        )
    with pytest.raises(StageReplyError, match="truth lacks a non-empty 'expected'"):
        parse_idea(
            json.dumps({"title": "t", "instruction": "do /o", "truth": {"files": {"/i": "1"}}, "outputs": ["/o"]})
        )
    with pytest.raises(StageReplyError, match="uses the network"):
        parse_dockerfile("```dockerfile\nFROM x\nRUN apt-get install -y jq\n```", "taskforge/base:1")
    steps, workdir = parse_dockerfile("```dockerfile\nFROM anything\nRUN mkdir /a\nWORKDIR /a\n```", "taskforge/base:1")
    assert steps == ["RUN mkdir /a"] and workdir == "/a"


def test_consistency_verdict_is_parsed_strictly():
    assert parse_consistency('```json\n{"verdict": "consistent", "unstated": []}\n```').verdict == "consistent"
    stricter = parse_consistency('{"verdict": "stricter", "unstated": ["sorted by name"]}')
    assert stricter.unstated == ["sorted by name"]
    for reply, problem in [
        ("Consistent.", "not"),
        ('{"verdict": "ok", "unstated": []}', "verdict"),
        ('{"verdict": "stricter", "unstated": []}', "only when"),
        ('{"verdict": "consistent", "unstated": ["x"]}', "only when"),
        ('{"verdict": "consistent"}', "unstated"),
        ('{"verdict": "consistent", "unstated": [], "why": "fine"}', "why"),
        ('{"verdict": "consistent", "unstated": "none"}', "unstated"),
    ]:
        with pytest.raises(StageReplyError, match=problem):
            parse_consistency(reply)


def test_expected_results_verbatim_are_found_and_redacted():
    idea = {
        "instruction": "Write `name,total` then one row per name to `/out/totals.csv`, sorted by name.",
        "truth": {
            "files": {"/in/sales.csv": "name,amount\nana,5\nbo,7\nana,12\n"},
            "expected": {"/out/totals.csv": "name,total\nana,17\nbo,7\n", "rows": 2},
        },
    }
    fragments = expected_fragments(idea)
    # The header is stated by the instruction and "2" is too short to tell: not evidence. "bo,7" is
    # an input line too, yet an honest solve.sh reads it rather than quoting it.
    assert "name,total" not in fragments and "bo,7" in fragments and "ana,17" in fragments
    assert hardcoded_expected("printf 'name,total\\nana,17\\nbo,7\\n' > /out/totals.csv", fragments)
    honest = "{ echo name,total; awk -F, 'NR > 1 {s[$1] += $2} END {for (n in s) print n \",\" s[n]}' "
    assert hardcoded_expected(honest + "/in/sales.csv | sort; } > /out/totals.csv", fragments) is None
    assert redact("E  assert 'ana,16' == 'ana,17'", fragments) == "E  assert 'ana,16' == '<hidden>'"


def test_skeleton_index_finds_the_same_program_with_other_data(tmp_path):
    seed_set(tmp_path)
    (tmp_path / ".forge" / "staging" / "000000").mkdir(parents=True)
    write_task(_spec_like_seed("Describe the weather."), tmp_path / ".forge" / "staging" / "000000")
    index = SkeletonIndex.of_folder(tmp_path)
    assert len(index) == 1  # staging is not the set
    assert index.duplicate_of(instruction="Count the lines of `/x/y.txt` and write the count to `/z.txt`.") == (
        "instruction",
        SEED_TASK,
    )
    assert index.duplicate_of(instruction="Sort the lines of `/x/y.txt` into `/z.txt`.") is None
    assert index.claim("other", "Reverse `/a`.", "#!/bin/bash\nset -euo pipefail\ntac /a > /b\n") is None
    # A one-line solution skeleton is shared by different programs (its awk text is abstracted): not compared.
    assert index.duplicate_of(solve_sh="#!/bin/bash\nset -euo pipefail\ntac /c > /d\n") is None


def _spec_like_seed(instruction: str) -> TaskSpec:
    return TaskSpec(
        name="taskforge/staged",
        instruction=instruction,
        tests={"test_outputs.py": "def test_x():\n    assert False\n"},
        solution="true",
        metadata=TaskMetadata(family="x", domain="data_processing", difficulty="easy", seed=0, generator_version="t"),
    )


def test_generate_llm_cli_summarises_and_checks_its_model(tmp_path):
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
        "--repair-rounds",
        "1",
    ]
    env = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "unused"}
    # Plays rejected before Docker: the command's wiring is under test here, the gates above.
    script = forge_script(["hardcoded", "strict"])
    with ScriptedOpenAIServer(script, models=["forge-model"]) as server:
        completed = subprocess.run(
            [*command, "--model", "forge-model", "--base-url", server.base_url],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=600,
        )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "0 kept, 2 rejected of 2 tasks" in completed.stdout and "tokens:" in completed.stdout
    assert "rejected: solution_hardcodes_expected 1, test_stricter_than_instruction 1" in completed.stdout
    assert (
        "sent back to their stage: solution_hardcodes_expected 1, test_stricter_than_instruction 1; "
        "0 kept tasks passed after a repair" in completed.stdout
    )
    assert "(after 1 repair round: solution_hardcodes_expected)" in (out / "rejected.jsonl").read_text()
    assert not [p for p in out.iterdir() if (p / "task.toml").is_file()]
    with ScriptedOpenAIServer(script, models=["forge-model"]) as server:
        wrong_model = subprocess.run(
            [*command, "--model", "other-model", "--base-url", server.base_url, "--n", "3"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=600,
        )
    assert wrong_model.returncode == 1 and "other-model" in wrong_model.stderr
