"""Benchmark: Distillery's vLLM engine path against vLLM's own offline path, on one engine.

The same `vllm.LLM`, the same prompts (random token ids, `--input-len` each, seeded) and the same
sampling (temperature 1, `ignore_eos`, exactly `--output-len` tokens, the setting of `vllm bench
throughput --dataset-name random`), interleaved `--repeats` times:
- "vllm LLM.generate": vLLM's offline loop, what `vllm bench throughput` times;
- "distillery, 1 caller": `VLLMEngine.loop` (the step-loop thread `synth generate` drives);
- "distillery, 2 callers": the prompts split over two threads, as a Ray worker with two shards in
  flight calls it; both halves must share the engine's batch to keep up.
Output tokens/s, median [min-max]; "faster" only where the spreads separate. Runs on vLLM's CPU build
here (`.venv-vllm/bin/python`) and on a GPU machine with vLLM (`make bench-gpu`).

    .venv-vllm/bin/python bench/vllm_throughput.py [--prompts 64] [--input-len 64] [--output-len 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder or id (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--eager", action="store_true", help="enforce_eager (no CUDA graphs / torch.compile warm-up)")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from synth.engines.vllm import VLLMEngine
    from synth.models import embedded_model_dir
    from synth.specs import VLLMSettings

    model = args.model or str(embedded_model_dir())
    extra = {"enforce_eager": True} if args.eager else {}
    settings = VLLMSettings(max_model_len=args.max_model_len, engine_args=extra)
    t0 = time.perf_counter()
    engine = VLLMEngine(model, model, None, settings, dtype=args.dtype, seed=0)
    print(f"engine ready in {time.perf_counter() - t0:.1f} s (not counted); {model}")
    vocab = len(engine.tokenizer)
    rng = random.Random(0)
    prompts = [
        {"prompt_token_ids": [rng.randrange(100, vocab - 100) for _ in range(args.input_len)]}
        for _ in range(args.prompts)
    ]

    def params() -> SamplingParams:
        return SamplingParams(
            temperature=1.0,
            ignore_eos=True,
            max_tokens=args.output_len,
            seed=1,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def vllm_generate() -> int:
        outs = engine.llm.generate(prompts, params(), use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    def ours(callers: int) -> int:
        parts = [prompts[k::callers] for k in range(callers)]
        counts = [0] * callers

        def run(k: int) -> None:
            outs = engine.loop.run([(p, params()) for p in parts[k]], None, 1)
            counts[k] = sum(len(o.token_ids) for out in outs for o in out.outputs)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts)

    arms = {
        "vllm LLM.generate": vllm_generate,
        "distillery, 1 caller": lambda: ours(1),
        "distillery, 2 callers": lambda: ours(2),
    }
    for fn in arms.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, fn in arms.items():
            start = time.perf_counter()
            tokens = fn()
            seconds = time.perf_counter() - start
            assert tokens == args.prompts * args.output_len, (name, tokens)
            rates[name].append(tokens / seconds)
    engine.close()

    base = statistics.median(rates["vllm LLM.generate"])
    print(f"{args.prompts} prompts of {args.input_len} tokens, {args.output_len} output tokens each, x{args.repeats}")
    print(f"{'arm':26}{'output tokens/s':>18}{'[min-max]':>22}{'vs vLLM':>10}")
    for name, r in rates.items():
        print(
            f"{name:26}{statistics.median(r):>18.1f}{f'[{min(r):.1f}-{max(r):.1f}]':>22}"
            f"{statistics.median(r) / base:>9.2f}x"
        )
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "tokens_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
