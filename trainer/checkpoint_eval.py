"""A checkpoint as an eval policy, and its environment-token cross-entropy on stored transcripts
(the paper's world-model measure). The eval loop itself is taskforge's (`taskforge.evaluate`)."""

from __future__ import annotations

from pathlib import Path

from taskforge.runner import write_json

ENV_CE_FILE = "env_ce.json"


def checkpoint_policy_factory(
    checkpoint: str,
    *,
    temperature: float,
    max_new_tokens: int,
    max_context_tokens: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
):
    """A factory of per-episode LocalModelPolicy objects sharing one loaded model (on `device`, in
    `dtype`); `max_context_tokens` is the context cap (LocalModelPolicy; None: the model's own)."""
    from trainer.model import load_policy
    from trainer.sampler import LocalModelPolicy

    model, tokenizer = load_policy(checkpoint, device=device, dtype=dtype)
    name = Path(checkpoint).name if checkpoint not in ("tiny", "default") else "tiny"

    def make():
        return LocalModelPolicy(
            model,
            tokenizer,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            max_context_tokens=max_context_tokens,
            name=f"local:{name}",
        )

    return make


def env_ce_of_checkpoint(checkpoint: str, transcripts: list[Path], *, before: str | None = None) -> dict[str, float]:
    """Environment-token CE (nats/token, mean over sequences) of `checkpoint` on stored
    transcripts; with `before`, the same for another checkpoint (e.g. the starting point)."""
    from trainer.model import load_policy
    from trainer.transcripts import environment_cross_entropy, load_transcripts

    episodes = load_transcripts(transcripts)
    model, tokenizer = load_policy(checkpoint)
    measured = environment_cross_entropy(model, tokenizer, episodes)
    result = {
        "after": measured["env_ce"],
        "warning_ce": measured["warning_ce"],
        "n_sequences": measured["n_sequences"],
        "n_obs_tokens": measured["n_obs_tokens"],
    }
    if before is not None:
        model, tokenizer = load_policy(before)
        result["before"] = environment_cross_entropy(model, tokenizer, episodes)["env_ce"]
    result["checkpoint"] = checkpoint
    result["transcripts"] = [str(p) for p in transcripts]
    return result


def write_env_ce(run_dir: Path, result: dict) -> Path:
    """env_ce.json in a run directory, where `taskforge report` reads it."""
    path = run_dir / ENV_CE_FILE
    write_json(path, result)
    return path
