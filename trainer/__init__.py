"""taskforge's trainer: ECHO (GRPO + lambda * environment cross-entropy) for terminal agents.

- `trainer.model`:      the tiny offline default policy, HF loading, checkpoints
- `trainer.rollout`:    token-exact multi-turn rollouts with action / observation / warning masks
- `trainer.logprobs`:   per-token log-probs in chunks, never materialising [T, V] logits
- `trainer.loss`:       `echo_loss` (pure function of tensors), the env CE (`per_sequence_ce`), lambda schedules
- `trainer.advantages`: group-normalised advantages
"""

import os as _os

# Quiet by default: no per-shard progress bars when checkpoints are written and read.
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers as _transformers

    _transformers.utils.logging.disable_progress_bar()
    import huggingface_hub as _hub

    _hub.utils.disable_progress_bars()  # in case huggingface_hub was imported before the env var
except ImportError:  # the trainer's extra is not installed; trainer.* imports will say so
    pass
