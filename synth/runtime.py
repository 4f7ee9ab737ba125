"""Process-wide settings applied once before any model loads."""

from __future__ import annotations

import logging
import os
import warnings

from synth.errors import UserError
from synth.specs import RuntimeSpec


def check_device(device: str) -> str:
    """The device `runtime.device` names, checked to exist here: 'cpu', 'cuda' or 'mps' ('auto': the GPU if any).

    Asking for a device this machine lacks is a user error raised before any model loads, not a
    torch traceback after a long load (or, worse, a silent run on the CPU).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise UserError(
            f"runtime.device=cuda but this machine has no usable CUDA GPU ({why}, torch {torch.__version__})",
            "set runtime.device=auto (or cpu), or run on a machine with an NVIDIA GPU and a CUDA build of torch",
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(
            f"runtime.device=mps but Apple's Metal backend (MPS) is not available here (torch {torch.__version__})",
            "set runtime.device=auto (or cpu); mps needs an Apple-silicon Mac",
        )
    return device


def _env_threads() -> int:
    """$DISTILLERY_THREADS (0 when unset): a whole number from 1 to 1024, else a UserError."""
    raw = os.environ.get("DISTILLERY_THREADS", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise UserError(
            f"DISTILLERY_THREADS={raw!r} is not a thread count", "set it to a whole number from 1 to 1024, or unset it"
        )
    return int(raw)


def configure(runtime: RuntimeSpec) -> None:
    """Thread count and quieter library logs, so the terminal shows our progress and errors.

    `runtime.device` is checked (`check_device`) where a local model loads, not here: a recipe that
    names a GPU must still generate through a remote teacher on a laptop.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    threads = runtime.threads or _env_threads()
    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    # "Generating train split" / "Map" bars on every parquet load: noise before a one-line error
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    # TRL 1.16 and PEFT call transformers' deprecated `is_gradient_checkpointing`: nothing a user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
