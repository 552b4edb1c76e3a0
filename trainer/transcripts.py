"""Rollouts from stored transcripts (episodes another policy played, oracle demonstrations).

A transcript is text: its actions are turned into ids with the *evaluated* model's tokenizer, and
each observation is appended as a chat-template delta by the same RolloutBuilder the sampler
uses, so masks mean the same thing as in training. This is how the environment-token CE of a
checkpoint is measured on rollouts it did not generate, and how SFT reads oracle demonstrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from taskforge.agent.episode import Episode
from taskforge.trial import TRANSCRIPT_FILE
from trainer.rollout import Rollout, RolloutBuilder, collate_rollouts


def action_text(turn) -> str:
    """A turn's action as plain text. Tool-call turns (API models in tool mode) are written in
    the loop's plain-text action format, so every transcript reads the same to the model."""
    if turn.tool_call is None:
        return turn.text
    if turn.action == "command" and turn.command is not None:
        action = f"```bash\n{turn.command}\n```"
    elif turn.action == "done":
        action = "DONE"
    else:
        action = turn.tool_call.arguments
    return f"{turn.text}\n{action}" if turn.text else action


def rollout_from_episode(tokenizer, episode: Episode, *, group_id: str = "") -> Rollout:
    """The episode's conversation as ids + masks for `tokenizer` (actions tokenised once each)."""
    end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    builder = RolloutBuilder(
        tokenizer,
        [{"role": "system", "content": episode.system_prompt}, {"role": "user", "content": episode.instruction}],
        task_name=episode.task_name,
        group_id=group_id,
    )
    for turn in episode.turns:
        action_ids = tokenizer.encode(action_text(turn), add_special_tokens=False, split_special_tokens=True) + [
            end_of_turn_id
        ]
        builder.add_action(action_ids, [0.0] * len(action_ids))
        if turn.action == "done":
            break
        builder.add_observation(turn.observation, turn.warning)
    return builder.build(reward=episode.reward or 0.0, stop_reason=episode.stop_reason or "")


def load_transcripts(paths: Iterable[Path]) -> list[Episode]:
    """Episodes from transcript.json files, or from folders holding them (a run's trials)."""
    episodes = []
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.rglob(TRANSCRIPT_FILE))
        if not files:
            raise FileNotFoundError(
                f"{path}: no {TRANSCRIPT_FILE} found "
                "(pass a run directory of `taskforge filter`/`eval`/`train`, or transcript files)"
            )
        episodes.extend(Episode.model_validate_json(f.read_text()) for f in files)
    return episodes


@torch.no_grad()
def environment_cross_entropy(
    model, tokenizer, episodes: list[Episode], *, batch_size: int = 4, max_tokens: int | None = None
) -> dict[str, float]:
    """Mean per-sequence CE (nats/token) of `model` on the observation-body tokens of `episodes`,
    and on harness-warning tokens apart. Sequences are cut at `max_tokens` (the model's context)."""
    from trainer.logprobs import sequence_logprobs
    from trainer.loss import per_sequence_ce

    max_tokens = max_tokens or getattr(model.config, "max_position_embeddings", 32768)
    rollouts = [rollout_from_episode(tokenizer, e) for e in episodes if e.turns]
    rollouts = [_truncate(r, max_tokens) for r in rollouts]
    rollouts = [r for r in rollouts if any(r.observation_mask)]
    if not rollouts:
        raise ValueError("none of the transcripts has an observation token to score")
    was_training = model.training
    model.eval()
    per_sequence: list[float] = []
    warning_sum = warning_count = 0.0
    n_tokens = 0
    try:
        for start in range(0, len(rollouts), batch_size):
            batch = collate_rollouts(rollouts[start : start + batch_size], tokenizer.pad_token_id)
            logprobs = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"])
            observation = batch["observation_mask"]
            has_observation = observation.any(dim=1)
            per_sequence.extend(per_sequence_ce(logprobs, observation)[has_observation].tolist())
            n_tokens += int(observation.sum())
            warning = batch["warning_mask"]
            warning_sum += float(-(logprobs * warning).sum())
            warning_count += float(warning.sum())
    finally:
        model.train(was_training)
    return {
        "env_ce": sum(per_sequence) / len(per_sequence),
        "warning_ce": warning_sum / warning_count if warning_count else float("nan"),
        "n_sequences": float(len(per_sequence)),
        "n_obs_tokens": float(n_tokens),
    }


def _truncate(rollout: Rollout, max_tokens: int) -> Rollout:
    if len(rollout.token_ids) <= max_tokens:
        return rollout
    fields = (
        "token_ids",
        "prompt_mask",
        "template_mask",
        "action_mask",
        "observation_mask",
        "warning_mask",
        "sampler_logprobs",
    )
    return rollout.model_copy(update={name: getattr(rollout, name)[:max_tokens] for name in fields})
