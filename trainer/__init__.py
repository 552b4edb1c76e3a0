

import os as _os

# Quiet by default: no per-shard progress bars when checkpoints are written and read.
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers as _transformers

    _transformers.utils.logging.disable_progress_bar()
except ImportError:  # the trainer's extra is not installed; trainer.* imports will say so
    pass
