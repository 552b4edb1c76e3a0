"""Fresh weights for a `--sampler-url` server: after each update the trainer writes the policy's
weights as a safetensors directory and tells the server to load it, over vLLM's weight-transfer
HTTP routes with its shared-disk backend, so rollouts of the next step come from the new policy.

vLLM's protocol (https://docs.vllm.ai/en/latest/training/weight_transfer/ , "API Endpoints"; the
disk backend: https://github.com/vllm-project/vllm/blob/main/docs/training/weight_transfer/disk.md):

    POST /init_weight_transfer_engine  {"init_info": {}}                       once
    POST /pause?mode=wait              (drains in-flight requests, clears the KV/prefix caches)
    POST /start_weight_update
    POST /update_weights               {"update_info": {"path": "/abs/dir"}}  a dir of *.safetensors
    POST /finish_weight_update         {"weight_version": "step-N"}
    POST /resume

The routes live at the server's root, not under /v1. vLLM needs
`VLLM_SERVER_DEV_MODE=1 vllm serve ... --weight-transfer-config '{"backend": "disk"}'`;
`taskforge serve` answers them as they are (trainer/serve.py). The server reads the directory
itself, so it must see `weights_dir` at the same path (same machine or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import httpx

from trainer.distributed import SINGLE_PROCESS, DistContext, full_model_state

DEV_MODE_HINT = (
    "vLLM answers these routes only when started with VLLM_SERVER_DEV_MODE=1 and "
    '--weight-transfer-config \'{"backend": "disk"}\'; `taskforge serve` answers them always'
)


def cast_state(state: dict[str, Any], dtype) -> dict[str, Any]:
    """Floating-point tensors cast to dtype, each distinct tensor once, so tied weights (one tensor
    under two names) stay one tensor and save_pretrained still writes them once."""
    cast: dict[tuple, Any] = {}
    out = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        # state_dict() detaches each entry, so a tied weight is two tensor objects over one storage.
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if view not in cast:
            cast[view] = tensor.to(dtype)
        out[name] = cast[view]
    return out


class WeightSyncError(RuntimeError):
    """The sampling server did not take the new weights: rollouts would come from stale ones."""


def server_root(sampler_url: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000`: the weight routes sit beside /v1, as in vLLM."""
    root = sampler_url.rstrip("/")
    return root.removesuffix("/v1")


class WeightPusher:
    """Pushes the trainer's weights to one sampling server; `push` after every optimizer update.

    Each push writes `weights_dir/step-N` (written to a temporary sibling and renamed, so the
    server never reads half a checkpoint) and removes the previous push's directory once the
    server has loaded the new one."""

    def __init__(
        self, sampler_url: str, weights_dir: str | Path, *, timeout_sec: float = 600.0, dtype: str | None = None
    ):
        """dtype: the serving dtype ("bfloat16", "float16", "float32") floating-point weights are cast
        to before they are written; None writes the trainer's (an 8B model's float32 masters are 32.8
        GB per push, its bfloat16 copy half that, and vLLM serves bf16 anyway)."""
        import torch

        self.root = server_root(sampler_url)
        if dtype is not None and dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"sampler dtype must be bfloat16, float16 or float32, not {dtype!r}")
        self.dtype = getattr(torch, dtype) if dtype is not None else None
        self.weights_dir = Path(weights_dir).absolute()
        self.timeout_sec = timeout_sec
        self._initialised = False
        self._last: Path | None = None

    def push(self, model, step: int, dist_context: DistContext = SINGLE_PROCESS) -> Path | None:
        """Writes the weights after `step` and has the server load them; every rank must call it
        under torchrun (gathering the weights is a collective); rank 0 writes and calls the server.
        Returns the directory the server loaded (None on other ranks)."""
        state = full_model_state(model, dist_context)
        error: str | None = None
        path = None
        if dist_context.is_main:
            try:
                path = self._write(model, state, step)
                self._load_on_server(path, f"step-{step}")
            except WeightSyncError as exc:
                error = str(exc)
        # Every rank stops on a failed push, not only rank 0 (the others would wait at the next collective).
        error = dist_context.broadcast_object(error)
        if error is not None:
            raise WeightSyncError(error)
        if path is not None and self._last is not None and self._last != path:
            shutil.rmtree(self._last, ignore_errors=True)
        self._last = path if path is not None else self._last
        return path

    def _write(self, model, state: dict[str, Any], step: int) -> Path:
        final = self.weights_dir / f"step-{step}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.dtype is not None:
            state = cast_state(state, self.dtype)
        # save_pretrained: Hugging Face tensor names (what vLLM's loader maps), tied weights written once.
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def _load_on_server(self, path: Path, version: str) -> None:
        if not self._initialised:
            self._post("/init_weight_transfer_engine", {"init_info": {}})
            self._initialised = True
        self._post("/pause", None, params={"mode": "wait"})
        try:
            self._post("/start_weight_update", None)
            self._post("/update_weights", {"update_info": {"path": str(path)}})
            self._post("/finish_weight_update", {"weight_version": version})
        except WeightSyncError:
            with contextlib.suppress(WeightSyncError):  # the first failure is the one to report
                self._post("/resume", None)
            raise
        self._post("/resume", None)

    def _post(self, route: str, body: dict[str, Any] | None, params: dict[str, str] | None = None) -> None:
        url = self.root + route
        try:
            response = httpx.post(url, json=body, params=params, timeout=self.timeout_sec)
        except httpx.HTTPError as exc:
            raise WeightSyncError(f"pushing weights: POST {url} failed: {exc!r}") from None
        if response.status_code >= 400:
            detail = response.text.strip()[:800]
            hint = ""
            if response.status_code in (404, 405):
                hint = f" (the server has no weight-update route {route}: {DEV_MODE_HINT})"
            elif route == "/update_weights":
                hint = f" (the server must read {self.weights_dir} at this path: same machine or shared filesystem)"
            raise WeightSyncError(f"pushing weights: POST {url} answered {response.status_code}: {detail}{hint}")
