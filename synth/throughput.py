"""How fast this machine multiplies matrices, and what share of that a stage reaches.

A rate alone (tokens/s) says little: 100 tokens/s is near one machine's limit and a tenth of
another's. The limit here is torch's own matmul rate on the shapes SmolLM2-sized layers multiply,
measured in this process with its thread count (`matmul_gflops`); a stage's model FLOPs utilisation
(MFU) is its useful FLOPs per second over that rate. `bench/peak.py` prints it per dtype.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

HIDDEN, MLP = 576, 1536  # SmolLM2-135M's hidden and MLP widths: a small model's typical matmul


def matmul_gflops(dtype: Any = None, tokens: int = 512, repeats: int = 7) -> dict[str, Any]:
    """Median and min-max spread of GFLOP/s of a [tokens, 576] x [576, 1536] matmul (one warm-up, then
    `repeats` timed runs) with torch's current threads; float32 unless `dtype` says otherwise."""
    import torch

    dtype = dtype or torch.float32
    x = torch.randn(tokens, HIDDEN).to(dtype)
    w = torch.randn(MLP, HIDDEN).to(dtype)
    torch.nn.functional.linear(x, w)  # warm-up: allocations, kernel selection
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        rates.append(2 * tokens * HIDDEN * MLP / (time.perf_counter() - start) / 1e9)
    return {"median": statistics.median(rates), "spread": [min(rates), max(rates)]}


def training_flops_per_token(params: int, trainable: int, teacher_params: int = 0) -> int:
    """Useful FLOPs per trained token: forward 2N; backward 2N for the activations' gradients plus 2N'
    for the gradients of the N' trainable weights (full fine-tune: 6N; LoRA: about 4N); a teacher run
    alongside adds its forward, 2N_teacher. Attention over the context is left out (small at these
    lengths), as in the usual 6N rule."""
    return 4 * params + 2 * trainable + 2 * teacher_params
