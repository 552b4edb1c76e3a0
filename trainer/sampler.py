"""In-process generation: the trainer's model as a policy of the agent loop, token-in/token-out.

`LocalModelPolicy` implements taskforge's Policy protocol (`next_action(messages)`), but it keeps
its own `RolloutBuilder`: each observation the loop reports is appended as a chat-template delta,
the model samples from exactly `builder.token_ids`, and the sampled ids go into the builder
verbatim. So the rollout the trainer learns from is the token sequence the sampler saw, never a
re-tokenisation of the transcript. One instance serves one episode.

Actions use the loop's plain-text format (a ```bash block, or DONE): a tiny model has no tools.

Concurrent episodes on one model share a BatchWorker: one generation thread that decodes every
waiting reply in one batched forward pass per token (rows join and leave between steps), instead
of one reply at a time under a global lock.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from taskforge.agent.episode import TokenUsage
from taskforge.agent.policy import ContextLengthExceededError, PolicyReply
from trainer.rollout import Rollout, RolloutBuilder

# One forward pass on a model at a time: sample_tokens holds it for a whole reply (the one-at-a-time
# path), the batch worker for each batched decode step.
_GENERATE_LOCK = threading.Lock()


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn ids a sampler stops at (ChatML's <|im_end|>, the eos and pad tokens)."""
    candidates = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in candidates if isinstance(i, int) and i >= 0)


def draw_token(log_probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """One token from a 1-D distribution of log-probs: the argmax at temperature <= 0, else by
    inverse CDF (one uniform from `generator` against the float64 cumulative sum). Same
    distribution as torch.multinomial, which draws a whole vocabulary of exponentials per token
    (about 0.4 ms for 8k ids on this machine: a quarter of a batched decode step)."""
    if temperature <= 0:
        return int(torch.argmax(log_probs))
    cumulative = log_probs.double().exp().cumsum(0)
    u = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(cumulative[-1])
    # The first id whose cumulative mass passes u: an id of zero probability is never drawn.
    return min(int(torch.searchsorted(cumulative, u, right=True)), log_probs.numel() - 1)


def sample_tokens(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float,
    stop_ids: list[int],
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[float], bool]:
    """Samples from softmax(logits / temperature) with a KV cache until a stop id or the budget.
    Returns (ids, their log-probs under the sampling distribution, stopped at a stop id).

    Inputs go to the model's device; each step's distribution is drawn on the CPU (in float32,
    whatever the model's dtype), so `generator` is a CPU generator and a seed samples the same ids
    on any device given the same logits."""
    ids, logprobs, stopped, _, _ = _sample_alone(
        model, prompt_ids, max_new_tokens, temperature=temperature, stop_ids=stop_ids, generator=generator, keep=False
    )
    return ids, logprobs, stopped


@torch.no_grad()
def _sample_alone(
    model,
    prompt_ids,
    max_new_tokens,
    *,
    temperature,
    stop_ids,
    generator=None,
    prefix: KeptPrefix | None = None,
    keep: bool = True,
) -> tuple[list[int], list[float], bool, KeptPrefix | None, int]:
    """sample_tokens, starting from `prefix` (the cache of the prompt's first tokens) when it is
    one of this prompt and these weights. Also returns the cache of prompt + reply for next time
    (when `keep`) and how many prompt tokens came from the prefix."""
    device = model.device
    with _GENERATE_LOCK:
        was_training = model.training
        model.eval()
        try:
            usable = prefix is not None and prefix.fits(model, prompt_ids)
            start = len(prefix.ids) if usable else 0
            cache = prefix.cache(room=len(prompt_ids) - start + max_new_tokens) if usable else None
            # logits_to_keep=1: only the last position's logits (the full prompt's would cost a
            # vocabulary-sized projection per prompt token, most of a turn's time on the tiny model).
            output = model(
                input_ids=torch.tensor([prompt_ids[start:]], dtype=torch.long, device=device),
                position_ids=torch.arange(start, len(prompt_ids), device=device)[None],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache, logits = preallocate(output.cache, room=max_new_tokens), output.logits[0, -1]
            ids: list[int] = []
            logprobs: list[float] = []
            stopped = False
            for _ in range(max_new_tokens):
                log_probs = torch.log_softmax(logits.float().cpu() / max(temperature, 1e-5), dim=-1)
                token = draw_token(log_probs, temperature, generator)
                ids.append(token)
                logprobs.append(float(log_probs[token]))
                if token in stop_ids:
                    stopped = True
                    break
                if len(ids) == max_new_tokens:
                    break  # the budget is spent: the last id is not fed back (its logits are not needed)
                output = model(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True)
                cache, logits = output.cache, output.logits[0, -1]
            # The cache holds the prompt and every sampled id but the last (never fed back).
            kept = KeptPrefix.of_layers(model, [*prompt_ids, *ids[:-1]], cache, row=0, columns=None) if keep else None
            return ids, logprobs, stopped, kept, start
        finally:
            model.train(was_training)


# -- a KV cache that decodes without copying itself ---------------------------------------------

# Room a preallocated layer keeps beyond what it holds; it doubles when a reply outgrows it.
DEFAULT_KV_ROOM = 256


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values are views into buffers with room to grow
    along the sequence. DynamicLayer concatenates each decode step's key onto the whole cache, a
    copy of every cached token per token: at 8 rows and 540 cached tokens it was three quarters of
    a batched step of the `small` model (and a third of `tiny`'s). Here a step writes one column in
    place; a full buffer doubles (amortised O(1) per token). Attention sees the same tensors as
    DynamicLayer's, so logits are unchanged."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int = DEFAULT_KV_ROOM):
        super().__init__()
        self.hold(keys, values, room)

    @classmethod
    def of(cls, layer: DynamicLayer, room: int = DEFAULT_KV_ROOM) -> PreallocatedLayer:
        return cls(layer.keys, layer.values, room)

    def hold(self, keys: torch.Tensor, values: torch.Tensor, room: int = DEFAULT_KV_ROOM) -> None:
        """Replaces what the layer holds with (B, H, T, D) `keys` and `values`, with `room` spare columns."""
        batch, heads, length, width = keys.shape
        self._key_buffer = keys.new_empty((batch, heads, length + room, width))
        self._value_buffer = values.new_empty((batch, heads, length + room, values.shape[-1]))
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self._length = length
        self.device, self.is_initialized = keys.device, True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self._length + new > self._key_buffer.shape[2]:
            self.hold(self.keys, self.values, room=max(self._length, new, 16))
        self._key_buffer[:, :, self._length : self._length + new] = key_states
        self._value_buffer[:, :, self._length : self._length + new] = value_states
        self._length += new
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        self._length = max(0, self._length + tokens_to_remove)
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._key_buffer, self._value_buffer = self._key_buffer[indices], self._value_buffer[indices]
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
        self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
        self._expose()

    def reset(self) -> None:
        self._length = 0
        self._expose()


def preallocate(cache, room: int = DEFAULT_KV_ROOM):
    """Turns a DynamicCache's full-attention layers into PreallocatedLayers (in place); returns it.
    Other layer kinds (sliding window) are left as they are."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for index, layer in enumerate(layers):
            if type(layer) is DynamicLayer and layer.is_initialized:
                layers[index] = PreallocatedLayer.of(layer, room)
    return cache


def weights_version(model) -> int:
    """A number that grows whenever any parameter is changed in place (an optimizer step, a
    load_state_dict): torch's per-tensor version counters, summed."""
    return sum(parameter._version for parameter in model.parameters())


class KeptPrefix:
    """An episode's KV cache at the end of its last reply: the ids it covers (that prompt and the
    reply but its last id) and each layer's (1, H, n, D) keys and values, for the weights they were
    computed with. The episode's next prompt is those ids plus the new observation, so only the
    observation is prefilled (as vLLM's prefix caching does); re-prefilling the whole conversation
    every turn was ~30% of a batched turn of the `small` policy at 540-token prompts."""

    def __init__(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]], version: int):
        self.ids, self.layers, self.version = ids, layers, version

    @classmethod
    def of_layers(cls, model, ids: list[int], cache, *, row: int, columns: int | None) -> KeptPrefix | None:
        """The last `columns` positions (None: all) of batch row `row` of a mergeable cache, copied."""
        if not _mergeable(cache) or not ids:
            return None
        layers = []
        for layer in cache.layers:
            keys, values = layer.keys[row : row + 1], layer.values[row : row + 1]
            if columns is not None:
                keys, values = keys[:, :, keys.shape[2] - columns :], values[:, :, values.shape[2] - columns :]
            layers.append((keys.clone(), values.clone()))
        if layers[0][0].shape[2] != len(ids):
            return None  # the cache does not cover exactly these ids: keep nothing rather than a wrong prefix
        return cls(ids, layers, weights_version(model))

    def fits(self, model, prompt_ids: list[int]) -> bool:
        """The prompt extends these ids (by at least one token) and the weights are the same."""
        n = len(self.ids)
        return len(prompt_ids) > n and prompt_ids[:n] == self.ids and self.version == weights_version(model)

    def cache(self, room: int):
        """A fresh cache of PreallocatedLayers holding this prefix, with `room` columns to grow."""
        cache = DynamicCache()
        cache.layers = [PreallocatedLayer(keys, values, room) for keys, values in self.layers]
        return cache


# -- batched in-process sampling ----------------------------------------------------------------

DEFAULT_MAX_BATCH = 8
DEFAULT_GATHER_WINDOW_SEC = 0.005
# A worker with nothing to do exits after this long (and drops its reference to the model).
_IDLE_EXIT_SEC = 5.0


class SampleCancelledError(RuntimeError):
    """The request was cancelled (its caller timed out or gave up) before it finished."""


class SampleRequest:
    """One caller's generation request to a BatchWorker: a future the worker completes.

    `cancel()` is safe from any thread; the worker drops a cancelled request from the queue or its
    row from the running batch at the next decode step, so a caller that gave up frees its slot."""

    def __init__(self, prompt_ids, max_new_tokens, *, temperature, stop_ids, generator, prefix=None, keep=False):
        if not prompt_ids:
            raise ValueError("sampling needs at least one prompt token")
        self.prompt_ids = list(prompt_ids)
        self.prefix: KeptPrefix | None = prefix  # the cache of an earlier reply this prompt may extend
        self.keep = keep  # when done, set `kept`: the cache of this prompt and reply
        self.kept: KeptPrefix | None = None
        self.reused_tokens = 0  # prompt tokens taken from `prefix` rather than prefilled
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.stop_ids = frozenset(stop_ids)
        self.generator = generator
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.stopped = False
        self.cancelled = False
        self.error: BaseException | None = None
        self._done = threading.Event()

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> tuple[list[int], list[float], bool]:
        """(ids, log-probs, stopped at a stop id), as sample_tokens returns them. On `timeout`
        the request is cancelled (its slot released) and TimeoutError raised."""
        if not self._done.wait(timeout):
            self.cancel()
            raise TimeoutError(f"sampling did not finish within {timeout} s; the request was cancelled")
        if self.error is not None:
            raise self.error
        return self.ids, self.logprobs, self.stopped

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done.set()


def _choose(request: SampleRequest, logits: torch.Tensor) -> bool:
    """Samples the request's next token from one row of logits exactly as sample_tokens does (float32,
    on the CPU, its own generator); returns True when the request is finished."""
    log_probs = torch.log_softmax(logits.float().cpu() / max(request.temperature, 1e-5), dim=-1)
    token = draw_token(log_probs, request.temperature, request.generator)
    request.ids.append(token)
    request.logprobs.append(float(log_probs[token]))
    if token in request.stop_ids:
        request.stopped = True
        return True
    return len(request.ids) >= request.max_new_tokens


class BatchWorker:
    """One generation thread per model: concurrent callers `submit` requests, the worker decodes
    every running request in one batched forward pass per token (continuous batching).

    Rows are left-padded to a common length with a 2-D attention mask and per-row position ids
    (each row's real tokens sit at positions 0..n-1, as they would alone), so a row's logits do
    not depend on its neighbours: greedy outputs match sample_tokens token for token. A request
    that arrives while a batch is running is prefilled on its own and its KV cache merged into the
    batch's (both left-padded to the longer one) at the next step; a finished or cancelled row is
    dropped from the cache. When nothing runs, the worker waits `gather_window_sec` after the first
    request for others to arrive, so a burst starts as one batch."""

    def __init__(
        self, model, *, max_batch: int = DEFAULT_MAX_BATCH, gather_window_sec: float = DEFAULT_GATHER_WINDOW_SEC
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: a batch holds at least one request")
        self._model_ref = weakref.ref(model)
        self.max_batch = max_batch
        self.gather_window_sec = gather_window_sec
        self._waiting: deque[SampleRequest] = deque()
        self._cond = threading.Condition()
        self._running = False
        self.steps = 0  # batched decode steps run (for tests and benchmarks)
        self.active_rows = 0  # rows in the running batch after the last step
        self.max_rows_seen = 0

    def submit(self, request: SampleRequest) -> SampleRequest:
        if request.max_new_tokens <= 0:  # nothing to sample, as in sample_tokens
            request._finish()
            return request
        with self._cond:
            self._waiting.append(request)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="taskforge-sampler", daemon=True).start()
            self._cond.notify()
        return request

    # -- the worker thread ----------------------------------------------------------------------

    def _take(self, room: int, idle: bool) -> list[SampleRequest] | None:
        """Waiting requests to admit (at most `room`); None when the worker should exit."""
        with self._cond:
            if idle:
                if not self._cond.wait_for(lambda: self._waiting, timeout=_IDLE_EXIT_SEC):
                    self._running = False
                    return None
                deadline = time.monotonic() + self.gather_window_sec
                while len(self._waiting) < room and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            taken: list[SampleRequest] = []
            while self._waiting and len(taken) < room:
                request = self._waiting.popleft()
                if request.cancelled:
                    request._finish(SampleCancelledError("cancelled before it was sampled"))
                else:
                    taken.append(request)
            return taken

    def _run(self) -> None:
        batch: _Batch | None = None
        try:
            with torch.no_grad():
                while True:
                    rows = len(batch.requests) if batch else 0
                    # A cache whose layers cannot be merged (sliding-window ones) admits nobody mid-batch.
                    room = self.max_batch - rows if batch is None or _mergeable(batch.cache) else 0
                    new = self._take(room, idle=rows == 0)
                    if new is None:
                        return
                    model = self._model_ref()
                    if model is None:
                        for request in new:
                            request._finish(RuntimeError("the model was freed"))
                        continue
                    try:
                        with _GENERATE_LOCK, _eval_mode(model):
                            if new:
                                batch = _Batch.prefill(model, new) if batch is None else batch.admit(model, new)
                            self.max_rows_seen = max(self.max_rows_seen, len(batch.requests))
                            batch = batch.sample_and_step(model)
                            self.steps += 1
                            self.active_rows = len(batch.requests) if batch else 0
                    except Exception as error:  # noqa: BLE001 - handed to every caller of the batch
                        for request in (batch.requests if batch else []) + new:
                            if not request.done:
                                request._finish(error)
                        batch = None
                        self.active_rows = 0
                    del model
        except BaseException as error:  # never leave a caller waiting on a dead worker
            with self._cond:
                self._running = False
                stranded = list(self._waiting)
                self._waiting.clear()
            for request in stranded + (batch.requests if batch else []):
                if not request.done:
                    request._finish(RuntimeError(f"the sampling worker stopped: {error!r}"))
            raise


class _eval_mode:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.model.train(True)


class _Batch:
    """The running rows: their requests, the KV cache, the 2-D attention mask (B, T), each row's
    next position and the logits its next token is sampled from."""

    def __init__(self, requests, cache, mask, positions, logits):
        self.requests, self.cache, self.mask, self.positions, self.logits = requests, cache, mask, positions, logits

    @classmethod
    def prefill(cls, model, requests: list[SampleRequest]) -> _Batch:
        """The requests' prompts run through the model: together (left-padded) for those without a
        usable prefix; alone, from the prefix's cache, for the others (their new tokens are few),
        then merged."""
        extending = [r for r in requests if r.prefix is not None and r.prefix.fits(model, r.prompt_ids)]
        fresh = [r for r in requests if r not in extending]
        batch = cls._prefill_fresh(model, fresh) if fresh else None
        for request in extending:
            one = cls._prefill_extending(model, request)
            batch = one if batch is None else batch.merge(one)
        return batch

    @classmethod
    def _prefill_extending(cls, model, request: SampleRequest) -> _Batch:
        device = model.device
        start, length = len(request.prefix.ids), len(request.prompt_ids)
        output = model(
            input_ids=torch.tensor([request.prompt_ids[start:]], dtype=torch.long, device=device),
            position_ids=torch.arange(start, length, device=device)[None],
            cache=request.prefix.cache(room=DEFAULT_KV_ROOM + length - start),
            use_cache=True,
            logits_to_keep=1,
        )
        request.prefix, request.reused_tokens = None, start  # used: drop the reference to its tensors
        mask = torch.ones(1, length, dtype=torch.long, device=device)
        positions = torch.tensor([length], device=device)
        return cls([request], output.cache, mask, positions, output.logits[:, -1])

    @classmethod
    def _prefill_fresh(cls, model, requests: list[SampleRequest]) -> _Batch:
        device = model.device
        width = max(len(r.prompt_ids) for r in requests)
        pad = [width - len(r.prompt_ids) for r in requests]
        ids = torch.tensor(
            [[0] * p + r.prompt_ids for p, r in zip(pad, requests, strict=True)], dtype=torch.long, device=device
        )
        mask = torch.tensor(
            [[0] * p + [1] * len(r.prompt_ids) for p, r in zip(pad, requests, strict=True)],
            dtype=torch.long,
            device=device,
        )
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        output = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        positions = mask.sum(-1)
        return cls(list(requests), preallocate(output.cache), mask, positions, output.logits[:, -1])

    def admit(self, model, requests: list[SampleRequest]) -> _Batch:
        """This batch plus `requests`, prefilled apart and merged."""
        return self.merge(_Batch.prefill(model, requests))

    def merge(self, other: _Batch) -> _Batch:
        """This batch plus `other`'s rows: both KV caches and masks are left-padded (zeros, masked
        out) to the longer of the two."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        layers, other_layers = _dynamic_layers(self.cache), _dynamic_layers(other.cache)
        for layer, other_layer in zip(layers, other_layers, strict=True):
            keys = torch.cat([_left_pad(layer.keys, width, 2), _left_pad(other_layer.keys, width, 2)])
            values = torch.cat([_left_pad(layer.values, width, 2), _left_pad(other_layer.values, width, 2)])
            _hold(layer, keys, values)
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])
        self.requests += other.requests
        return self

    def sample_and_step(self, model) -> _Batch | None:
        """Samples every row's next token, retires finished and cancelled rows, and runs one
        forward pass over the rest; None when no row is left."""
        keep, tokens = [], []
        for row, request in enumerate(self.requests):
            if request.cancelled:
                request._finish(SampleCancelledError("cancelled while it was being sampled"))
                continue
            if _choose(request, self.logits[row]):
                if request.keep:
                    # The row's real tokens are its last `mask.sum()` columns: the prompt and every
                    # sampled id but the last, which was never fed back.
                    request.kept = KeptPrefix.of_layers(
                        model,
                        request.prompt_ids + request.ids[:-1],
                        self.cache,
                        row=row,
                        columns=int(self.mask[row].sum()),
                    )
                request._finish()
                continue
            keep.append(row)
            tokens.append(request.ids[-1])
        if not keep:
            return None
        if len(keep) < len(self.requests):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.positions = self.mask[index], self.positions[index]
            self.requests = [self.requests[row] for row in keep]
            # Columns that are padding in every remaining row (a long row left): cut them.
            first = int(self.mask.any(0).nonzero()[0])
            if first and _mergeable(self.cache):
                for layer in self.cache.layers:
                    _hold(layer, layer.keys[:, :, first:], layer.values[:, :, first:])
                self.mask = self.mask[:, first:]
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones(len(keep), 1, dtype=self.mask.dtype, device=device)], dim=1)
        output = model(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=device)[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        self.cache, self.logits = output.cache, output.logits[:, -1]
        return self


def _mergeable(cache) -> bool:
    """Full-attention DynamicCache layers: plain (B, H, T, D) tensors that can be padded and joined."""
    layers = getattr(cache, "layers", None)
    return layers is not None and all(type(layer) in (DynamicLayer, PreallocatedLayer) for layer in layers)


def _hold(layer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Makes a mergeable layer hold `keys` and `values` (a preallocated one keeps its room)."""
    if isinstance(layer, PreallocatedLayer):
        layer.hold(keys, values)
    else:
        layer.keys, layer.values = keys, values


def _dynamic_layers(cache) -> list:
    if not _mergeable(cache):
        raise TypeError(f"batched sampling needs a DynamicCache of full-attention layers, got {type(cache).__name__}")
    return cache.layers


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


_WORKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WORKERS_LOCK = threading.Lock()


def batch_worker(
    model, *, max_batch: int = DEFAULT_MAX_BATCH, gather_window_sec: float = DEFAULT_GATHER_WINDOW_SEC
) -> BatchWorker:
    """The shared worker of `model` for this batch size: every sampler of one model in the process
    submits to the same queue, so concurrent episodes share decode steps."""
    with _WORKERS_LOCK:
        per_model = _WORKERS.setdefault(model, {})
        key = (max_batch, gather_window_sec)
        if key not in per_model:
            per_model[key] = BatchWorker(model, max_batch=max_batch, gather_window_sec=gather_window_sec)
        return per_model[key]


class InProcessSampler:
    """Samples with the trainer's own model (CPU default).

    `max_batch` > 1 (the default): requests go to the model's shared BatchWorker, so samplers of
    concurrent episodes on one model share one batched decode step per token. `max_batch=1`: the
    one-at-a-time path, `sample_tokens` under the global lock (each reply in turn).

    `cancel()` (from any thread) cancels the request in flight: the worker drops its row, the
    waiting call raises SampleCancelledError. The agent loop calls it through
    LocalModelPolicy.cancel when an episode's time runs out, so the slot is released."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        temperature: float = 1.0,
        seed: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        gather_window_sec: float = DEFAULT_GATHER_WINDOW_SEC,
        prefix_cache: bool = True,
    ):
        self.model, self.temperature = model, temperature
        self.stop_ids = stop_token_ids(tokenizer)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.max_context_tokens = getattr(model.config, "max_position_embeddings", 32768)
        self.max_batch = max_batch
        self.worker = (
            batch_worker(model, max_batch=max_batch, gather_window_sec=gather_window_sec) if max_batch > 1 else None
        )
        self._request: SampleRequest | None = None
        # The KV cache of the last prompt and reply: the next prompt of the episode extends it, so
        # only its new tokens are prefilled. prefix_cache=False re-prefills every prompt.
        self.prefix_cache = prefix_cache
        self._kept: KeptPrefix | None = None
        self.prompt_tokens = 0  # prompt tokens of every call
        self.reused_tokens = 0  # of which came from the kept cache (not prefilled)

    def __call__(
        self, prompt_ids: list[int], max_new_tokens: int, *, timeout: float | None = None
    ) -> tuple[list[int], list[float]]:
        prefix, self._kept = self._kept, None
        if self.worker is None:
            ids, logprobs, _, kept, reused = _sample_alone(
                self.model,
                prompt_ids,
                max_new_tokens,
                temperature=self.temperature,
                stop_ids=self.stop_ids,
                generator=self.generator,
                prefix=prefix,
                keep=self.prefix_cache,
            )
        else:
            request = SampleRequest(
                prompt_ids,
                max_new_tokens,
                temperature=self.temperature,
                stop_ids=self.stop_ids,
                generator=self.generator,
                prefix=prefix,
                keep=self.prefix_cache,
            )
            self._request = request
            try:
                ids, logprobs, _ = self.worker.submit(request).result(timeout)
            finally:
                self._request = None
            kept, reused = request.kept, request.reused_tokens
        self._kept = kept
        self.prompt_tokens += len(prompt_ids)
        self.reused_tokens += reused
        return ids, logprobs

    def cancel(self) -> None:
        request = self._request
        if request is not None:
            request.cancel()


class RemoteSampler:
    """Samples from an OpenAI-compatible server that speaks vLLM's token-id extension (vLLM,
    `taskforge serve`): POST /v1/completions with the prompt as token ids and
    `return_token_ids: true`; the reply's choices[0].token_ids and logprobs are taken verbatim.
    The GPU route: vLLM generates, the trainer keeps the exact ids.

    `include_stop_str_in_output: true` (a vLLM sampling parameter) keeps the stop token in the
    reply's text as well as its ids, so the end of turn the model sampled is the one the rollout
    holds (and trains on), not one the rollout builder adds as template."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer,
        *,
        temperature: float = 1.0,
        seed: int | None = None,
        api_key: str = "local",
        timeout_sec: float = 600.0,
        max_context_tokens: int = 32768,
    ):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_sec, max_retries=6)
        self.model, self.temperature, self.seed = model, temperature, seed
        self.stop_ids = stop_token_ids(tokenizer)
        self.max_context_tokens = max_context_tokens

    def __call__(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
        response = self.client.completions.create(
            model=self.model,
            prompt=prompt_ids,
            max_tokens=max_new_tokens,
            temperature=self.temperature,
            logprobs=0,
            seed=self.seed,
            extra_body={
                "return_token_ids": True,
                "stop_token_ids": self.stop_ids,
                "skip_special_tokens": False,
                "include_stop_str_in_output": True,
            },
        )
        choice = response.choices[0]
        ids = getattr(choice, "token_ids", None) or (choice.model_extra or {}).get("token_ids")
        if ids is None:
            raise RuntimeError(
                f"{self.client.base_url} returned no token ids: the server must support vLLM's return_token_ids"
            )
        logprobs = list(choice.logprobs.token_logprobs) if choice.logprobs is not None else [0.0] * len(ids)
        return list(ids), logprobs


class LocalModelPolicy:
    """One episode's policy: token-in/token-out sampling through `sampler` (in-process by
    default, or a RemoteSampler), recording every id into a RolloutBuilder.

    Context cap (`max_context_tokens`, default the sampler's: the model's max_position_embeddings
    in-process; a given value is capped by that). A turn is sampled only if its prompt plus the
    whole per-turn budget (`max_new_tokens`) fits in the cap: vLLM's max_model_len rule, which
    refuses a request whose prompt + max_tokens passes it. Otherwise next_action raises
    ContextLengthExceededError before any generation, and the loop ends the episode with
    stop reason context_exceeded. So every reply gets the same budget and no sampler, in-process or
    remote, is asked past the cap. If the observation that did not fit takes the prompt itself past
    the cap, the rollout drops it (it ends on the last action, at most cap + 2 template tokens);
    one that fits stays, so the env term still trains on it. Either way the ids are the sampler's.

    In-process sampling is batched across episodes (`max_batch`, see InProcessSampler and
    BatchWorker); `max_batch=1` is the one-at-a-time path. `cancel()` gives up the reply in flight:
    the agent loop calls it when the episode's time runs out, so the abandoned reply frees its
    batch slot and never lands in the rollout after the episode ended.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        temperature: float = 1.0,
        max_new_tokens: int = 256,
        max_context_tokens: int | None = None,
        task_name: str = "",
        group_id: str = "",
        seed: int | None = None,
        name: str = "local",
        sampler=None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        self.tokenizer = tokenizer
        self.sampler = sampler or InProcessSampler(
            model, tokenizer, temperature=temperature, seed=seed, max_batch=max_batch
        )
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = min(
            max_context_tokens or self.sampler.max_context_tokens, self.sampler.max_context_tokens
        )
        self.task_name = task_name
        self.group_id = group_id
        self.name = name
        self.model_name = name
        self.builder: RolloutBuilder | None = None
        self._n_seen_messages = 0
        self._stop_ids = stop_token_ids(tokenizer)

    # -- the loop's Policy protocol --------------------------------------------------------

    def next_action(self, messages: list[dict[str, Any]]) -> PolicyReply:
        self._sync(messages)
        prompt_ids = self.builder.token_ids
        if len(prompt_ids) + self.max_new_tokens > self.max_context_tokens:
            if len(prompt_ids) > self.max_context_tokens:
                self.builder.drop_pending_observation()
            raise ContextLengthExceededError(
                f"{len(prompt_ids)} prompt tokens + {self.max_new_tokens} new tokens per turn would pass "
                f"max_context_tokens={self.max_context_tokens}"
            )
        new_ids, logprobs = self.sampler(prompt_ids, self.max_new_tokens)
        self.builder.add_action(new_ids, logprobs)
        finished = bool(new_ids) and new_ids[-1] in self._stop_ids
        text = self.tokenizer.decode(new_ids[:-1] if finished else new_ids, skip_special_tokens=False)
        return PolicyReply(
            text=text,
            usage=TokenUsage(input_tokens=len(prompt_ids), output_tokens=len(new_ids)),
            finish_reason="stop" if finished else "length",
        )

    def cancel(self) -> None:
        """Give up the reply being sampled (the loop's deadline passed): its batch slot is freed."""
        cancel = getattr(self.sampler, "cancel", None)
        if cancel is not None:
            cancel()

    def _sync(self, messages: list[dict[str, Any]]) -> None:
        """Feeds the builder what happened since the last call: the prompt at first, then the
        observation of the previous action (the loop's message carries body and warning apart)."""
        if self.builder is None:
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:2]]
            self.builder = RolloutBuilder(self.tokenizer, prompt, task_name=self.task_name, group_id=self.group_id)
            self._n_seen_messages = 2
        for message in messages[self._n_seen_messages :]:
            if message["role"] == "assistant":
                continue  # our own reply: already in the builder as sampled ids
            self.builder.add_observation(
                message.get("observation", message.get("content") or ""), message.get("warning")
            )
        self._n_seen_messages = len(messages)

    # -- after the episode ------------------------------------------------------------------

    def rollout(self, reward: float, stop_reason: str) -> Rollout | None:
        """The episode as a Rollout (None when the policy never acted)."""
        if self.builder is None:
            return None
        return self.builder.build(reward=reward, stop_reason=stop_reason)
