"""The tiny offline default policy: built once, cached, a real Qwen3 model with a ChatML tokenizer."""

import pytest
import torch
from transformers import Qwen3ForCausalLM

from trainer.model import (
    PolicyLoadError,
    TinyPolicySpec,
    ensure_tiny_policy,
    load_checkpoint,
    load_policy,
    save_checkpoint,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-policy"


@pytest.fixture(scope="module")
def policy(cache_dir):
    return load_policy("tiny", cache_dir=cache_dir)


def test_tiny_policy_is_a_small_qwen3_with_the_bpe_vocab(policy):
    model, tokenizer = policy
    assert isinstance(model, Qwen3ForCausalLM)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        128,
        2,
        4,
        2,
    )
    assert 4000 <= len(tokenizer) <= 8192
    assert config.vocab_size == len(tokenizer)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tokenizer_has_chatml_template_and_single_id_special_tokens(policy):
    _, tokenizer = policy
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "do it"},
        {"role": "assistant", "content": "ls -la"},
        {"role": "tool", "content": "total 0\n"},
    ]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\ndo it<|im_end|>\n"
        "<|im_start|>assistant\nls -la<|im_end|>\n<|im_start|>tool\ntotal 0\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with pytest.raises(Exception, match="unknown chat role"):
        tokenizer.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


def test_byte_level_bpe_round_trips_any_text_and_compresses_terminal_text(policy):
    _, tokenizer = policy
    text = "$ ls -la /var/log\n-rw-r--r-- 1 root root 1234 Jan  3 12:00 data.csv\nüñí©ødé ✓ \x00\t\r\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    terminal = "$ grep -c 'error' /var/log/app.log\n"
    assert len(tokenizer(terminal, add_special_tokens=False)["input_ids"]) < len(terminal) / 2


def test_cache_is_built_once_and_reused(cache_dir, policy):
    weights = cache_dir / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert ensure_tiny_policy(cache_dir) == cache_dir
    model, _ = load_policy("default", cache_dir=cache_dir)
    assert weights.stat().st_mtime_ns == built_at
    for ours, cached in zip(policy.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(ours, cached)


def test_tokenizer_training_is_deterministic():
    spec = TinyPolicySpec(vocab_size=600, corpus_snippets=2000)
    assert train_tokenizer(spec).get_vocab() == train_tokenizer(spec).get_vocab()


def test_save_and_load_checkpoint_round_trip(policy, tmp_path):
    model, tokenizer = policy
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "step-1")
    loaded_model, loaded_tokenizer = load_checkpoint(checkpoint)
    input_ids = torch.tensor([tokenizer("$ cat /app/data.csv", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded_model(input_ids).logits, model(input_ids).logits)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    # Overwriting an existing checkpoint directory replaces it whole.
    assert save_checkpoint(model, tokenizer, checkpoint) == checkpoint
    assert not list(tmp_path.glob(".step-1-*"))


def test_gpu_path_options_bf16_and_gradient_checkpointing(cache_dir):
    model, tokenizer = load_policy("tiny", cache_dir=cache_dir, dtype="bfloat16", gradient_checkpointing=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.x names it after gradients
        checkpointing = model.is_gradient_checkpointing
    assert checkpointing and model.config.use_cache is False
    model.train()
    input_ids = torch.tensor([tokenizer("echo hi", add_special_tokens=False)["input_ids"]])
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_generation_with_the_chat_template_stops_at_a_budget(policy):
    model, tokenizer = policy
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "list files"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(0)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=True, temperature=0.8)
    assert prompt["input_ids"].shape[1] < output.shape[1] <= prompt["input_ids"].shape[1] + 8


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(PolicyLoadError, match="no checkpoint directory"):
        load_policy(tmp_path / "missing")
    with pytest.raises(PolicyLoadError, match="'tiny'"):
        load_policy("no-such-org/no-such-model", local_files_only=True)


def test_a_pretrained_name_not_fetched_yet_says_which_command_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKFORGE_MODELS_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(PolicyLoadError, match=r"run `taskforge model get smollm2-135m` first"):
        load_policy("smollm2-135m")


def test_threads_come_from_the_argument_then_the_environment_then_the_default(cache_dir, monkeypatch):
    from trainer.threads import DEFAULT_TORCH_THREADS, THREADS_ENV, configure_threads, requested_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    try:
        assert requested_threads() == DEFAULT_TORCH_THREADS == 1
        monkeypatch.setenv(THREADS_ENV, "2")
        load_policy("tiny", cache_dir=cache_dir)
        assert torch.get_num_threads() == 2
        load_policy("tiny", cache_dir=cache_dir, threads=1)  # an explicit value wins over the variable
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(THREADS_ENV, "two")
        with pytest.raises(ValueError, match="TASKFORGE_TORCH_THREADS='two'"):
            configure_threads()
        with pytest.raises(PolicyLoadError, match="not a whole number of threads"):  # what commands report
            load_policy("tiny", cache_dir=cache_dir)
        with pytest.raises(ValueError, match="at least 1"):
            configure_threads(0)
    finally:
        monkeypatch.delenv(THREADS_ENV, raising=False)
        configure_threads()
    assert torch.get_num_threads() == 1


def test_chat_template_option_keeps_or_replaces_the_tokenizers_template(cache_dir):
    from trainer.templates import QWEN3_TRAINING_TEMPLATE

    _, kept = load_policy("tiny", cache_dir=cache_dir)  # "auto": an append-only template stays
    assert "<think>" not in kept.chat_template
    _, forced = load_policy("tiny", cache_dir=cache_dir, chat_template="qwen3-train")
    assert forced.chat_template == QWEN3_TRAINING_TEMPLATE
    with pytest.raises(PolicyLoadError, match="unknown chat template 'chatml-2'"):
        load_policy("tiny", cache_dir=cache_dir, chat_template="chatml-2")


def test_a_missing_checkpoint_path_is_named_with_what_is_there(tmp_path):
    from trainer.model import PolicyLoadError, load_policy

    (tmp_path / "run" / "checkpoints" / "step-2").mkdir(parents=True)
    with pytest.raises(PolicyLoadError, match=r"no checkpoint directory at .*/checkpoints/final \(.* holds: step-2\)"):
        load_policy(str(tmp_path / "run" / "checkpoints" / "final"))
    # a relative path is a path too, not a hub id
    with pytest.raises(PolicyLoadError, match=r"no checkpoint directory at tests/no-such-run/final"):
        load_policy("tests/no-such-run/final")
