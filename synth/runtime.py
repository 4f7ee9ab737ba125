"""Process-wide settings applied once before any model loads."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

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


def bf16_is_fast(device: str) -> bool:
    """Whether bfloat16 matmuls run faster than float32 on `device` (a resolved device, not 'auto').

    A GPU: when torch says it supports bf16. A CPU: only with native bf16 dot-product instructions
    (AVX-512 BF16 or AMX). Without them oneDNN emulates bf16, and a bf16 matmul measured 0.2-0.3x the
    float32 rate on an AVX2 EPYC; with AVX-512 BF16 it measured 2.1x (bench/peak.py). The CPU's flags
    decide, not a timing: a timing would flip between runs on a busy machine, and the dtype is part
    of what a resumed run must match.
    """
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # a torch without torch.cpu.get_capabilities
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def pick_dtype(dtype: str, device: str) -> Any:
    """The torch dtype a model loads in: the recipe's, or for 'auto' bfloat16 where it is fast on
    `device` (`bf16_is_fast`) and float32 elsewhere. Generation records the result in each row's
    provenance, since bf16 weights give slightly different log-probs and samples."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def dtype_name(dtype: Any) -> str:
    """'bfloat16' for torch.bfloat16: how provenance and reports name a dtype."""
    return str(dtype).removeprefix("torch.")


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
