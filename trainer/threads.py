"""How many CPU threads torch uses, chosen on purpose: one setting for training, sampling and serving.

    configure_threads()      # $TASKFORGE_TORCH_THREADS, else DEFAULT_TORCH_THREADS
    configure_threads(2)     # an explicit value (a config key, a benchmark) wins over the variable

`trainer.model.load_policy` calls it, so every command that loads a policy (train, eval, env-ce,
serve) runs with the same setting; worker threads started later (the sampler's, the server's)
read the process-wide value on their first parallel operation.

Why 1 by default: on the 2-core machines this project runs on, other processes (Docker sandboxes,
the verifier, other experiments) keep at least one core busy, and torch's OpenMP threads spin at
each barrier waiting for the thread that was descheduled. The machine notes measured matmuls up
to 40x slower with 2 threads on a loaded machine; `benchmarks/threads.py` on the tiny model with
a load average of 3-4 on 2 cores measured 2 threads at 0.10x the generation and 0.52x the
training tokens/s of 1 thread (0.85x and 0.80x with OMP_WAIT_POLICY=passive). On an idle machine
with more cores, set TASKFORGE_TORCH_THREADS higher after measuring with that script.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "TASKFORGE_TORCH_THREADS"
DEFAULT_TORCH_THREADS = 1

_interop_threads_set = False


def requested_threads(threads: int | None = None) -> int:
    """The thread count to use: `threads` if given, else $TASKFORGE_TORCH_THREADS, else the default."""
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return DEFAULT_TORCH_THREADS
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={raw!r} is not a whole number of threads (try {THREADS_ENV}=1)") from None
        source = f"{THREADS_ENV}={raw}"
    else:
        source = f"threads={threads}"
    if threads < 1:
        raise ValueError(f"{source}: torch needs at least 1 thread")
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (and, the first time, its inter-op pool); return the count.

    The inter-op pool can only be sized before torch first uses it, and only once per process: a
    later call leaves it as it is instead of failing.
    """
    global _interop_threads_set
    count = requested_threads(threads)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    if not _interop_threads_set:
        _interop_threads_set = True
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # parallel work already started, or someone else sized it first
            pass
    return count
