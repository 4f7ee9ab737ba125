"""A tokenizer's identity, so that stored teacher log-probabilities can say which token ids they mean.

Token ids are only meaningful with the vocabulary that produced them: a student with another
tokenizer would learn from the wrong tokens, silently. The generation manifest and the Hub card
record the teacher's tokenizer (name and `vocab_hash`); `sft run` with `train.objective: kd` and
stored log-probabilities compares it with the student's and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def vocab_hash(tokenizer: Any) -> str:
    """sha256 (first 16 hex digits) of the token → id map, added tokens included.

    Two tokenizers with equal hashes map every token string to the same id; chat templates and
    normalisation settings are not part of it (they change the text, not what an id means).
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def describe(tokenizer: Any, name: str) -> dict[str, Any]:
    """What a logprob dataset records about its tokenizer."""
    return {"name": name, "vocab_hash": vocab_hash(tokenizer), "vocab_size": len(tokenizer)}


def load_local(path: str) -> Any | None:
    """The tokenizer of a model folder, the embedded model or a Hub id (from the Hub cache, or
    downloaded); None when there is none to load (a server's model name that is no such model)."""
    from transformers import AutoTokenizer

    from synth.errors import UserError
    from synth.models import resolve_model

    try:
        load_path, _ = resolve_model(path)
    except UserError:
        return None
    try:
        return AutoTokenizer.from_pretrained(load_path)
    except (OSError, ValueError, ImportError):  # ImportError: a tokenizer needing an absent package
        return None
