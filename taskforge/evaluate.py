"""`taskforge eval`: k attempts per task of a checkpoint or an API model; pass@1, pass@k,
timeouts, turns and tokens per family, domain and difficulty; optionally the checkpoint's
environment-token cross-entropy on transcripts another policy played.

Episodes are stored exactly like the filter's (runs/<run>/ledger.jsonl, trials/<t>/result.json +
transcript.json), so `taskforge report` reads an eval run like any other and a re-run resumes.
"""

from __future__ import annotations

from pathlib import Path

from taskforge.agent.episode import EpisodeConfig
from taskforge.filter import run_attempts
from taskforge.report import RunSummary, load_run
from taskforge.runner import write_json
from taskforge.tasks import Task


def evaluate(tasks: list[Task], run_dir: Path, policy_factory, *, attempts: int, concurrency: int, episode: EpisodeConfig) -> tuple[RunSummary, list[str]]:
    """Runs the attempts (resuming), writes eval.json and returns the summary and the errors of
    attempts that could not run."""
    not_recorded = run_attempts(tasks, run_dir, policy_factory, attempts=attempts, concurrency=concurrency, episode=episode, description="eval")
    summary = load_run(run_dir)
    write_json(run_dir / "eval.json", summary.model_dump())
    return summary, not_recorded


def checkpoint_policy_factory(checkpoint: str, *, temperature: float, max_new_tokens: int):
    """A factory of per-episode LocalModelPolicy objects sharing one loaded model."""
    from trainer.model import load_policy
    from trainer.sampler import LocalModelPolicy

    model, tokenizer = load_policy(checkpoint)
    name = Path(checkpoint).name if checkpoint not in ("tiny", "default") else "tiny"

    def make():
        return LocalModelPolicy(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens, name=f"local:{name}")

    return make


def env_ce_of_checkpoint(checkpoint: str, transcripts: list[Path], *, before: str | None = None) -> dict[str, float]:
    """Environment-token CE (nats/token, mean over sequences) of `checkpoint` on stored
    transcripts; with `before`, the same for another checkpoint (e.g. the starting point)."""
    from trainer.model import load_policy
    from trainer.transcripts import environment_cross_entropy, load_transcripts

    episodes = load_transcripts(transcripts)
    model, tokenizer = load_policy(checkpoint)
    measured = environment_cross_entropy(model, tokenizer, episodes)
    result = {"after": measured["env_ce"], "warning_ce": measured["warning_ce"], "n_sequences": measured["n_sequences"], "n_obs_tokens": measured["n_obs_tokens"]}
    if before is not None:
        model, tokenizer = load_policy(before)
        result["before"] = environment_cross_entropy(model, tokenizer, episodes)["env_ce"]
    result["checkpoint"] = checkpoint
    result["transcripts"] = [str(p) for p in transcripts]
    return result


def write_env_ce(run_dir: Path, result: dict) -> Path:
    path = run_dir / "env_ce.json"
    write_json(path, result)
    return path

