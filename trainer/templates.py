"""Chat templates for training: every turn renders the same way wherever it sits in the conversation.

The rollout builder (`trainer.rollout`) appends each observation as a chat-template delta and
never re-tokenises history, so it needs an *append-only* template: rendering a conversation and
then the same conversation plus one message must give the first text as a prefix of the second.

Qwen3's stock template is not: it writes an empty `<think>\\n\\n</think>\\n\\n` block into the
assistant turn that comes last (after the last user query) and drops it once another message
follows, so an earlier turn's rendering changes when an observation is appended, and
`RolloutBuilder` raises `ObservationTemplateError`. `QWEN3_TRAINING_TEMPLATE` is the fix SkyRL
(`qwen3_acc_thinking.jinja2`) and prime-rl use: every assistant turn is `<|im_start|>assistant\\n`
+ its content verbatim + `<|im_end|>\\n`, whatever its position, so the thinking text the model
emitted (if any) stays in the history exactly as it was sampled. Everything else is Qwen3's
stock rendering: the system prompt with the tools block, tool results as
`<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n` (consecutive results
share one user turn), and `enable_thinking=False` adding the empty think block to the generation
prompt only.

`choose_training_template(tokenizer, "auto")` (what `trainer.model.load_policy` does by default)
swaps Qwen3's stock template for this one and leaves every other template alone; a checkpoint
saved afterwards carries the training template, so it is served and evaluated as it was trained.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Qwen3's stock template (Qwen/Qwen3-8B tokenizer_config.json) with one change, marked below: the
# assistant branch. The reverse scan for the last user query is gone with it (nothing else read it).
QWEN3_TRAINING_TEMPLATE = r"""{%- if tools %}
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
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {#- changed: the content verbatim at every position (stock: a <think> block on the last turn) #}
        {{- '<|im_start|>' + message.role + '\n' + content }}
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
{%- endif %}"""  # noqa: E501 - upstream's long lines, kept so the template diffs cleanly against Qwen3's

TRAINING_TEMPLATES = {"qwen3-train": QWEN3_TRAINING_TEMPLATE}
CHAT_TEMPLATE_CHOICES = ("auto", "stock", *TRAINING_TEMPLATES)

# A short conversation that ends with an assistant turn, and the observation appended to it.
_PROBE_CONVERSATION = (
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
)
_PROBE_OBSERVATION = {"role": "tool", "content": "o"}


def is_append_only(tokenizer: PreTrainedTokenizerBase, observation_role: str = "tool") -> bool:
    """Whether appending an observation message leaves the rendering of the turns before it intact."""
    conversation = [dict(message) for message in _PROBE_CONVERSATION]
    observation = {**_PROBE_OBSERVATION, "role": observation_role}
    before = tokenizer.apply_chat_template(conversation, tokenize=False)
    after = tokenizer.apply_chat_template([*conversation, observation], add_generation_prompt=True, tokenize=False)
    return after.startswith(before)


def is_qwen3_stock_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Qwen3's stock template (or a variant of it): Qwen3's think and tool-response markup, and it is
    not append-only because of the think block it moves between turns."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or "<think>" not in template or "<tool_response>" not in template:
        return False
    try:
        return not is_append_only(tokenizer)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe is not one we can fix
        return False


def choose_training_template(tokenizer: PreTrainedTokenizerBase, chat_template: str | None = "auto") -> str | None:
    """Set the tokenizer's chat template for training; return the name of the template applied, or None.

    "auto": Qwen3's stock template becomes "qwen3-train"; any other template is kept.
    "stock" or None: keep the tokenizer's own template (RolloutBuilder fails loudly if it cannot be used).
    "qwen3-train": use that template whatever the tokenizer had.
    """
    if chat_template in (None, "stock"):
        return None
    if chat_template == "auto":
        if not is_qwen3_stock_template(tokenizer):
            return None
        chat_template = "qwen3-train"
    if chat_template not in TRAINING_TEMPLATES:
        raise ValueError(f"unknown chat template {chat_template!r}: choose one of {', '.join(CHAT_TEMPLATE_CHOICES)}")
    tokenizer.chat_template = TRAINING_TEMPLATES[chat_template]
    return chat_template
