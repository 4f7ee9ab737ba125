"""`synth prompts`: new user prompts written by the teacher itself (Magpie), for more teacher data.

Magpie (Xu et al. 2024, "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs with
Nothing"; distilabel's `MagpieGenerator`) feeds an instruction-tuned model only the part of its chat
template that opens a user turn. Having been trained to answer what follows, the model writes a user
message of the kind it has seen, and stops at its end-of-turn token. Here the prefix is found by
rendering the teacher's own chat template with a sentinel as the user's text and cutting there, so
any template works, with the template's default system prompt (or `synthesize.system_prompt`).

Candidates are filtered before they are written, each rejection counted by reason: cut at the token
limit (an unfinished request), outside the word bounds, holding template markup, a duplicate
(lower-cased words) of another candidate or of a prompt already in `prompts.path`, and, with the same
word n-gram rule as curate's `decontaminate` check, sharing an n-gram with the eval prompts (by
default `eval.prompts`). What is kept is written as a JSONL prompts file (`id`, `prompt`, `source`)
that `prompts.path` can name, for every later stage.

Sampling uses Distillery's decoding loop on a local transformers teacher (the loop decodes raw token
ids; an OpenAI-compatible chat server cannot continue a half-written template).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.errors import UserError
from synth.io import atomic_write_text
from synth.recipe import Recipe

SENTINEL = "\u2063distillery-magpie\u2063"
MARKUP = ("<|", "|>", "[INST]", "<s>", "</s>")  # template tokens a prompt must not contain


@dataclass
class MagpieSummary:
    """What `synth prompts` did: candidates sampled, kept, and why the others were rejected."""

    out: str
    teacher: str
    candidates: int
    kept: int
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    tokens: int = 0
    prefix: str = ""
    examples: list[str] = field(default_factory=list)


def user_turn_prefix(tokenizer: Any, system_prompt: str | None) -> str:
    """The chat template's text up to where a user's message starts (with its default system prompt,
    or `system_prompt`)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rendered = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=False
    )
    at = rendered.find(SENTINEL)
    if at <= 0:
        raise UserError(
            "synth prompts: the teacher's chat template does not place the user's text where it can be cut",
            "use an instruction-tuned teacher with a chat template",
        )
    return rendered[:at]


def _key(text: str) -> str:
    from synth.curate.base import words

    return " ".join(words(text))


def _eval_index(paths: list[Path], n: int) -> tuple[dict[tuple[str, ...], str], set[int]]:
    """Word n-grams (whole items when shorter) of every eval prompt, as curate's decontamination builds them."""
    from synth.curate.base import words
    from synth.prompts import iter_source
    from synth.specs import PromptsSpec

    index: dict[tuple[str, ...], str] = {}
    sizes: set[int] = set()
    for path in paths:
        for where, row in iter_source(PromptsSpec(path=str(path)), None, "synthesize.eval_sets"):
            text = row.get("prompt")
            toks = words(text) if isinstance(text, str) else []
            if not toks:
                continue
            size = min(n, len(toks))
            sizes.add(size)
            for i in range(len(toks) - size + 1):
                index.setdefault(tuple(toks[i : i + size]), where)
    return index, sizes


def _contaminated(text: str, index: dict[tuple[str, ...], str], sizes: set[int]) -> bool:
    from synth.curate.base import words

    toks = words(text)
    return any(tuple(toks[i : i + s]) in index for s in sizes for i in range(len(toks) - s + 1))


def reject_reason(text: str, stopped: bool, min_words: int, max_words: int) -> str | None:
    """Why one candidate is not a usable prompt on its own (None: it is)."""
    n = len(text.split())
    if not stopped:
        return "cut at the token limit"
    if not text:
        return "empty"
    if any(m in text for m in MARKUP):
        return "template markup"
    if n < min_words:
        return f"fewer than {min_words} words"
    if n > max_words:
        return f"more than {max_words} words"
    return None


def synthesize_prompts(
    recipe: Recipe, recipe_dir: Path | None, out: Path, eval_paths: list[Path], known: list[str], engine: Any = None
) -> MagpieSummary:
    """Sample candidates until `synthesize.n` are kept or `synthesize.candidates` were tried; write `out`."""
    import torch

    from synth.engines.decode import decode

    spec = recipe.synthesize
    assert spec is not None
    if engine is None:
        if recipe.teacher.engine != "transformers":
            raise UserError(
                f"synth prompts samples with a local transformers teacher; teacher.engine is {recipe.teacher.engine!r}",
                "run it with teacher.engine=transformers (the same model), then generate with your engine",
            )
        from synth.engines import build_engine

        engine = build_engine(recipe)
    tok, model = engine.tokenizer, engine.model
    prefix = user_turn_prefix(tok, spec.system_prompt)
    ids = list(tok(prefix, add_special_tokens=False)["input_ids"])
    index, sizes = _eval_index(eval_paths, spec.decontaminate_ngram)
    seen = {_key(k) for k in known}
    kept: list[str] = []
    summary = MagpieSummary(str(out), engine.model_id, 0, 0, prefix=prefix)
    start = time.perf_counter()
    round_ = 0
    while len(kept) < spec.n and summary.candidates < spec.candidates:
        want = min(spec.batch_size, spec.candidates - summary.candidates)
        with torch.inference_mode():  # one prefix, prefilled once; sample j of round r drawn from seed (r, j)
            (outs,) = decode(
                model,
                [ids],
                n=want,
                max_new_tokens=spec.max_new_tokens,
                eos_ids=engine.eos_ids,
                pad_id=tok.pad_token_id,
                temperature=spec.temperature,
                top_p=spec.top_p,
                seeds=[spec.seed * 1_000_003 + round_],
                max_rows=spec.batch_size,
            )
        round_ += 1
        for d in outs:
            summary.candidates += 1
            summary.tokens += len(d.tokens)
            text = tok.decode([t for t in d.tokens if t not in engine.eos_ids], skip_special_tokens=True).strip()
            why = reject_reason(text, d.stopped, spec.min_words, spec.max_words)
            if why is None and _key(text) in seen:
                why = "duplicate"
            if why is None and _contaminated(text, index, sizes):
                why = "shares an n-gram with an eval prompt"
            if why is not None:
                summary.rejected[why] += 1
                continue
            seen.add(_key(text))
            kept.append(text)
            if len(kept) == spec.n:
                break
    summary.seconds = time.perf_counter() - start
    summary.kept = len(kept)
    teacher = engine.model_id
    lines: list[str] = []
    for text in kept:
        pid = hashlib.sha256(f"magpie\0{teacher}\0{text}".encode()).hexdigest()[:16]
        lines.append(json.dumps({"id": f"magpie-{pid}", "prompt": text, "source": f"magpie:{teacher}"}) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(lines))
    summary.examples = kept[:5]
    return summary
