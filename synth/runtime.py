"""Process-wide settings applied once before any model loads."""

from __future__ import annotations

import logging
import os
import warnings

from synth.recipe import RuntimeSpec


def configure(runtime: RuntimeSpec) -> None:
    """Thread count and quieter library logs, so the terminal shows our progress and errors."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    threads = runtime.threads or int(os.environ.get("DISTILLERY_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    # TRL 1.16 and PEFT call transformers' deprecated `is_gradient_checkpointing`: nothing a user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
