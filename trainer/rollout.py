"""A multi-turn episode as the exact token ids the policy saw, with a role for every token.

ECHO trains on whole-episode sequences: action tokens get the GRPO term, observation-body tokens
the environment cross-entropy, everything else (prompt, chat-template scaffolding, harness
warnings) no loss. That only works if the trainer sees the very ids the sampler conditioned on,
so the history is never re-tokenised:

- the prompt (system + instruction) is rendered once with `apply_chat_template`;
- each action appends the sampler's ids verbatim (their end-of-turn token included);
- each observation appends only the chat-template *delta* for one tool message.

The agent loop should feed `builder.token_ids` to the sampler as the prompt of the next turn
(token-in / token-out generation), so sampling and training condition on the same ids.

Observation content layout: taskforge.agent.episode's `observation_layout` is the one definition
(a harness warning, when there is one, on its own first line, then the command output verbatim);
`OBSERVATION_PIECE_TOKEN_KINDS` says which mask each piece gets: the warning WARNING, the newline
after it TEMPLATE, the output OBSERVATION.

    [harness] output truncated to 50000 characters
    <command output>

Locating the body inside the delta: the delta is rendered three ways, with empty content, with
the warning only and with warning + output; the common prefix and suffix of those renders are
the template scaffolding, and each render must equal scaffolding-prefix + content +
scaffolding-suffix, or `ObservationTemplateError` is raised (a template that trims, escapes or
reorders content would make the masks lie). The scaffolding split is pinned once per builder
with a probe content made of private-use characters, so content that happens to start or end
with the same character as the scaffolding (a body starting with "<" next to "<|im_end|>")
cannot shift it.

Tokenisation boundary: a BPE may merge characters across the boundary of template text and
content (e.g. "\\n" + a body starting with "\\n"). The delta is therefore tokenised piece by
piece (scaffolding prefix, warning, separator, body, scaffolding suffix), and the ids
concatenated: every mask is exact by construction, and decoding all ids still gives the chat
template's rendering character for character. The price is that at a boundary the ids may
differ from a canonical tokenisation of the whole string, which is harmless when the sampler
is given these ids (see above). Warning and body text are tokenised with special tokens split,
so a literal "<|im_end|>" printed by a command is text, never a control token.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import torch
from pydantic import BaseModel, model_validator
from transformers import PreTrainedTokenizerBase

from taskforge.agent.episode import ObservationPieceKind, observation_layout, render_observation

IM_END = "<|im_end|>"
# Private-use code points: no chat template writes them, so the probe's position is unambiguous.
SLOT_PROBE = "\ue000\ue001\ue002"
# A fixed conversation the observation delta is appended to; only the text after its last
# end-of-turn token matters.
ANCHOR_MESSAGES = (
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
)


class TokenKind(IntEnum):
    """What a token is, and so which loss term (if any) it belongs to."""

    PROMPT = 0  # the rendered initial prompt (system + instruction): context only
    TEMPLATE = 1  # chat-template scaffolding after the prompt: role headers, <|im_end|>, newlines
    ACTION = 2  # sampled by the policy: GRPO term
    OBSERVATION = 3  # environment output body: ECHO's env cross-entropy term
    WARNING = 4  # harness text the agent loop injects: logged, never trained


class RolloutError(ValueError):
    """The rollout could not be built as asked (wrong turn order, bad lengths)."""


class ObservationTemplateError(RolloutError):
    """The chat template does not place observation content verbatim, so masks cannot be exact."""


class TokenizationRoundTripError(RolloutError):
    """A piece of text does not decode back to itself after tokenisation."""


class Rollout(BaseModel):
    """One episode as token ids with disjoint masks that cover every token.

    `sampler_logprobs` holds the sampler's log-prob of each action token and 0.0 elsewhere.
    `prompt_mask` marks the initial prompt; the other four masks are as in `TokenKind`.
    """

    token_ids: list[int]
    prompt_mask: list[bool]
    template_mask: list[bool]
    action_mask: list[bool]
    observation_mask: list[bool]
    warning_mask: list[bool]
    sampler_logprobs: list[float]
    reward: float = 0.0
    stop_reason: str = ""
    task_name: str = ""
    group_id: str = ""

    @model_validator(mode="after")
    def _masks_partition_tokens(self) -> Rollout:
        n = len(self.token_ids)
        masks = self.masks()
        if any(len(mask) != n for mask in masks.values()) or len(self.sampler_logprobs) != n:
            raise ValueError(f"every mask and sampler_logprobs must have {n} entries (one per token)")
        coverage = [sum(flags) for flags in zip(*masks.values(), strict=True)]
        if any(count != 1 for count in coverage):
            raise ValueError("masks must be disjoint and cover every token (exactly one mask per token)")
        return self

    def masks(self) -> dict[TokenKind, list[bool]]:
        return {
            TokenKind.PROMPT: self.prompt_mask,
            TokenKind.TEMPLATE: self.template_mask,
            TokenKind.ACTION: self.action_mask,
            TokenKind.OBSERVATION: self.observation_mask,
            TokenKind.WARNING: self.warning_mask,
        }

    def ids_of(self, kind: TokenKind) -> list[int]:
        """The ids under one mask, in order."""
        mask = self.masks()[kind]
        return [token for token, keep in zip(self.token_ids, mask, strict=True) if keep]

    def __len__(self) -> int:
        return len(self.token_ids)


# Which loss term each piece of taskforge's observation layout belongs to: the body is trained
# (env CE), the harness warning only logged, the separator is scaffolding like the template's.
OBSERVATION_PIECE_TOKEN_KINDS: dict[ObservationPieceKind, TokenKind] = {
    "warning": TokenKind.WARNING,
    "separator": TokenKind.TEMPLATE,
    "body": TokenKind.OBSERVATION,
}


class RolloutBuilder:
    """Builds a `Rollout` turn by turn without ever re-tokenising history.

    builder = RolloutBuilder(tokenizer, [{"role": "system", ...}, {"role": "user", ...}])
    ids = builder.token_ids                     # prompt for the sampler
    builder.add_action(sampled_ids, sampled_logprobs)
    builder.add_observation(output, warning="[harness] output truncated")
    ...
    rollout = builder.build(reward=1.0, stop_reason="done")
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_messages: Sequence[dict[str, str]],
        *,
        observation_role: str = "tool",
        end_of_turn_token: str | None = None,
        task_name: str = "",
        group_id: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.observation_role = observation_role
        self.task_name, self.group_id = task_name, group_id
        self._end_of_turn = end_of_turn_token or _default_end_of_turn(tokenizer)
        self._end_of_turn_id = tokenizer.convert_tokens_to_ids(self._end_of_turn)
        self.messages: list[dict[str, str]] = [dict(message) for message in prompt_messages]
        self._ids: list[int] = []
        self._kinds: list[TokenKind] = []
        self._logprobs: list[float] = []
        self._expecting_action = True
        self._after_last_action: tuple[int, int] | None = None  # (ids, messages) right after the last action
        prompt_ids = tokenizer.apply_chat_template(
            self.messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        self._append(list(prompt_ids), TokenKind.PROMPT)
        self._anchor_text = self._anchor_up_to_end_of_turn()
        self._slot = self._locate_content_slot()

    @classmethod
    def from_instruction(
        cls, tokenizer: PreTrainedTokenizerBase, instruction: str, system: str | None = None, **kwargs
    ) -> RolloutBuilder:
        """Start from an agent system prompt (optional) and the task's instruction as the user turn."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": instruction}
        ]
        return cls(tokenizer, messages, **kwargs)

    # ----- public API -------------------------------------------------------------------

    @property
    def token_ids(self) -> list[int]:
        """All ids so far: the exact prompt to give the sampler for the next action."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def add_action(self, token_ids: Sequence[int], logprobs: Sequence[float]) -> None:
        """Append the sampler's ids verbatim, with their log-probs.

        If the sampler stopped without emitting the end-of-turn token (length limit), that token
        is appended as template, so the sequence stays a valid rendering.
        """
        if not self._expecting_action:
            raise RolloutError("add_action called twice in a row: add the observation of the previous action first")
        if len(token_ids) != len(logprobs):
            raise RolloutError(f"{len(token_ids)} action ids but {len(logprobs)} log-probs")
        ids = [int(token) for token in token_ids]
        for token, logprob in zip(ids, logprobs, strict=True):
            self._append([token], TokenKind.ACTION, float(logprob))
        emitted_end = bool(ids) and ids[-1] == self._end_of_turn_id
        if not emitted_end:
            self._append([self._end_of_turn_id], TokenKind.TEMPLATE)
        text_ids = ids[:-1] if emitted_end else ids
        self.messages.append({"role": "assistant", "content": self._decode(text_ids)})
        self._expecting_action = False
        self._after_last_action = (len(self._ids), len(self.messages))

    def drop_pending_observation(self) -> None:
        """Forget the observation added after the last action (the context cap: an observation
        the policy never acted on, which takes the sequence past the cap, is not trained on).
        The builder is back where it stood right after that action; no-op before any action."""
        if not self._expecting_action or self._after_last_action is None:
            return
        n_ids, n_messages = self._after_last_action
        del self._ids[n_ids:], self._kinds[n_ids:], self._logprobs[n_ids:], self.messages[n_messages:]
        self._expecting_action = False

    def add_observation(self, body: str, warning: str | None = None) -> None:
        """Append the chat-template delta of one observation message plus the next generation
        prompt, with the body under `observation_mask` and the warning under `warning_mask`."""
        if self._expecting_action:
            raise RolloutError("add_observation called before the action it answers")
        body = self._representable(body)
        warning = self._representable(warning) if warning else warning
        for text, kind in self._observation_delta_pieces(body, warning):
            self._append(self._encode_piece(text, kind), kind)
        self.messages.append({"role": self.observation_role, "content": render_observation(body, warning)})
        self._expecting_action = True

    def build(self, reward: float = 0.0, stop_reason: str = "") -> Rollout:
        """Freeze the episode. After a final action, the template's closing text (ChatML: the
        newline after `<|im_end|>`) is appended as template so the ids equal the template's
        rendering of the whole conversation."""
        ids, kinds, logprobs = list(self._ids), list(self._kinds), list(self._logprobs)
        if not self._expecting_action:
            closing = self._render_after_anchor(None)
            closing_ids = self._encode_piece(closing, TokenKind.TEMPLATE) if closing else []
            ids += closing_ids
            kinds += [TokenKind.TEMPLATE] * len(closing_ids)
            logprobs += [0.0] * len(closing_ids)
        return Rollout(
            token_ids=ids,
            prompt_mask=[kind == TokenKind.PROMPT for kind in kinds],
            template_mask=[kind == TokenKind.TEMPLATE for kind in kinds],
            action_mask=[kind == TokenKind.ACTION for kind in kinds],
            observation_mask=[kind == TokenKind.OBSERVATION for kind in kinds],
            warning_mask=[kind == TokenKind.WARNING for kind in kinds],
            sampler_logprobs=logprobs,
            reward=reward,
            stop_reason=stop_reason,
            task_name=self.task_name,
            group_id=self.group_id,
        )

    # ----- observation delta ------------------------------------------------------------

    def _observation_delta_pieces(self, body: str, warning: str | None) -> list[tuple[str, TokenKind]]:
        """Scaffolding prefix, content pieces, scaffolding suffix.

        The delta is rendered three ways (empty content, warning only, warning + output); each
        render must share the scaffolding prefix and suffix with the others and hold exactly its
        content in between, or the template is not inserting content verbatim and we raise.
        """
        prefix, suffix = self._slot
        layouts = {
            "empty": [],
            "warning only": observation_layout("", warning) if warning else [],
            "warning + output": observation_layout(body, warning),
        }
        for name, pieces in layouts.items():
            content = "".join(text for text, _ in pieces)
            rendered = self._render_after_anchor(content)
            if rendered != prefix + content + suffix:
                raise ObservationTemplateError(
                    f"the chat template does not render the {name!r} observation as scaffolding + content + "
                    f"scaffolding (expected {_clip(prefix + content + suffix)}, got {_clip(rendered)}); "
                    f"it must insert {self.observation_role!r} message content verbatim"
                )
        content_pieces = [(text, OBSERVATION_PIECE_TOKEN_KINDS[kind]) for text, kind in layouts["warning + output"]]
        return [(prefix, TokenKind.TEMPLATE), *content_pieces, (suffix, TokenKind.TEMPLATE)]

    def _locate_content_slot(self) -> tuple[str, str]:
        """Split the empty-content delta into scaffolding before and after the content slot, by
        comparing its render with that of a probe content (common prefix and suffix)."""
        empty = self._render_after_anchor("")
        probe = self._render_after_anchor(SLOT_PROBE)
        prefix_len = _common_prefix_len(empty, probe)
        suffix_len = _common_suffix_len(empty, probe)
        if prefix_len + suffix_len != len(empty) or probe[prefix_len : len(probe) - suffix_len] != SLOT_PROBE:
            raise ObservationTemplateError(
                f"cannot find where the chat template puts {self.observation_role!r} content: "
                f"empty render {empty!r}, probe render {probe!r}"
            )
        return empty[:prefix_len], empty[prefix_len:]

    def _anchor_up_to_end_of_turn(self) -> str:
        """The anchor conversation rendered up to and including its assistant's end-of-turn token."""
        anchor = self._render(list(ANCHOR_MESSAGES), add_generation_prompt=False)
        cut = anchor.rfind(self._end_of_turn)
        if cut < 0:
            raise ObservationTemplateError(
                f"the chat template does not end assistant turns with {self._end_of_turn!r}; "
                "pass end_of_turn_token= to RolloutBuilder"
            )
        return anchor[: cut + len(self._end_of_turn)]

    def _render_after_anchor(self, content: str | None) -> str:
        """The template's text after an assistant turn's end-of-turn token: followed by one
        observation message and the next generation prompt, or (content None) by nothing."""
        messages = list(ANCHOR_MESSAGES)
        if content is not None:
            messages.append({"role": self.observation_role, "content": content})
        rendered = self._render(messages, add_generation_prompt=content is not None)
        if not rendered.startswith(self._anchor_text):
            raise ObservationTemplateError(
                "adding an observation changes how earlier turns render, so a delta cannot be appended: "
                f"{_clip(self._anchor_text)} is not a prefix of {_clip(rendered)}"
            )
        return rendered[len(self._anchor_text) :]

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    # ----- tokens -----------------------------------------------------------------------

    def _representable(self, text: str) -> str:
        """text with every character the vocabulary cannot encode written as its UTF-8 bytes in
        \\xNN escapes. A byte-level vocabulary can lack rare bytes (SmolLM2-135M has no token for
        six ASCII control bytes, e.g. 0x14, which `head` of a gzip file prints) and its tokenizer
        then drops them without a word; escaped, the observation round-trips and the policy still
        sees that a byte was there."""
        if self._round_trips(text):
            return text
        return "".join(
            char if self._round_trips(char) else "".join(f"\\x{byte:02x}" for byte in char.encode()) for char in text
        )

    def _round_trips(self, text: str) -> bool:
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return self._decode(ids) == text

    def _encode_piece(self, text: str, kind: TokenKind) -> list[int]:
        """Tokenise one piece on its own. Template text keeps its control tokens; warning and
        body text have them split so command output can never forge a turn boundary."""
        if not text:
            return []
        as_text = kind in (TokenKind.OBSERVATION, TokenKind.WARNING)
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]
        if self._decode(ids) != text:
            raise TokenizationRoundTripError(
                f"{kind.name.lower()} text {text[:80]!r} does not decode back to itself with this tokenizer; "
                "masks would not be exact (a byte-level BPE tokenizer is required)"
            )
        return list(ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _append(self, ids: Sequence[int], kind: TokenKind, logprob: float = 0.0) -> None:
        self._ids.extend(ids)
        self._kinds.extend([kind] * len(ids))
        self._logprobs.extend([logprob if kind == TokenKind.ACTION else 0.0] * len(ids))


def _default_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """ChatML's <|im_end|> when the vocabulary has it, else the tokenizer's EOS token."""
    token_id = tokenizer.convert_tokens_to_ids(IM_END)
    return IM_END if token_id is not None and token_id != tokenizer.unk_token_id else tokenizer.eos_token


def _clip(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


def collate_rollouts(rollouts: Sequence[Rollout], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rollouts into a batch of tensors for `sequence_logprobs` and `echo_loss`.

    Padding positions are 0 in every mask and in `attention_mask`.
    """
    length = max(len(rollout) for rollout in rollouts)
    batch = len(rollouts)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    masks = {
        name: torch.zeros(batch, length, dtype=torch.bool)
        for name in ("action_mask", "observation_mask", "warning_mask")
    }
    sampler_logprobs = torch.zeros(batch, length, dtype=torch.float32)
    for row, rollout in enumerate(rollouts):
        n = len(rollout)
        input_ids[row, :n] = torch.tensor(rollout.token_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        for name, mask in masks.items():
            mask[row, :n] = torch.tensor(getattr(rollout, name), dtype=torch.bool)
        sampler_logprobs[row, :n] = torch.tensor(rollout.sampler_logprobs, dtype=torch.float32)
    rewards = torch.tensor([rollout.reward for rollout in rollouts], dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        **masks,
        "sampler_logprobs": sampler_logprobs,
        "rewards": rewards,
    }
