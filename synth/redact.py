"""The one redaction layer: what Distillery writes, prints or pushes never holds a secret.

Two rules, applied wherever text or settings leave the process (recipe.resolved.yaml, TRL's
training args, Hub cards, row errors, reports, console messages):

- in any nested mapping, a value whose key looks like a credential (token, key, secret, password,
  authorization) is written as `***`;
- in any free text (a server's error body, an exception message), every secret this process knows
  (the API keys read from the environment) and any `Bearer ...` credential is replaced by `***`.

Secrets become known by `register_secret` at the point where they are read from the environment, so
the scrubber needs no configuration and cannot miss a key that was actually used.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
_SECRET_WORDS = {
    "credentials",
    "auth",
    "cookie",
    "dsn",
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "authorisation",
    "apikey",
    "key",
    "credential",
}
_NOT_SECRET_BEFORE_TOKEN = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "max", "min", "stop"}
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")  # ANSI escapes and control characters
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@")
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#\s?]+)=([^&;#\s]*)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TOKEN_PREFIXES = ("hf_", "sk-", "sk_", "ghp_", "gho_", "github_pat_", "xoxb-", "xoxp-", "akia")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{4,}")
_KNOWN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ARGILLA_API_KEY", "OPENAI_API_KEY")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a credential's value so that `scrub` removes it from any text from now on."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _known_secrets() -> set[str]:
    env = {os.environ.get(name) for name in _KNOWN_ENV}
    return _secrets | {v for v in env if v and len(v) >= 4}


def is_variable_name(value: object) -> bool:
    """Whether a value set where an environment variable's *name* belongs (`api_key_env`) looks like a
    name (OPENAI_API_KEY) rather than a pasted key (sk-..., hf_...): a key there would be written to
    the resolved recipe and the Hub card, because a name is not a secret."""
    if not isinstance(value, str) or not _VARIABLE_NAME.fullmatch(value):
        return False
    return not value.lower().startswith(_TOKEN_PREFIXES)


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a credential (hub_token, api_key, Authorization, password, ...)."""
    if not isinstance(key, str):
        return False
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", key)]
    if not words or words[-1] in ("env", "var", "file", "path"):  # api_key_env names a variable, not a secret
        return False
    for i, w in enumerate(words):
        if w in _SECRET_WORDS and not (w == "token" and i > 0 and words[i - 1] in _NOT_SECRET_BEFORE_TOKEN):
            return True
    return False


def scrub(text: str | None) -> str | None:
    """`text` with every known secret and every `Bearer ...` credential replaced by `***`."""
    if not text:
        return text
    for secret in sorted(_known_secrets(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    # a key in a URL's query string (?api_key=..., &token=...): the parameter's name says it is one
    text = _QUERY_PARAM.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if is_secret_key(m.group(2)) and m.group(3) else m.group(0),
        text,
    )
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def excerpt(text: str, limit: int) -> str:
    """A server's text as one safe line: scrubbed BEFORE it is cut (a cut key no longer matches the
    scrubber), control characters and newlines collapsed, then at most `limit` characters."""
    clean = scrub(text) or ""
    clean = _CONTROL.sub(" ", clean)
    clean = " ".join(clean.split())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def redact(obj: Any) -> Any:
    """A copy of `obj` with credential-named values masked and every string scrubbed, at any depth."""
    if isinstance(obj, dict):
        return {k: (MASK if _masked(k, v) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return scrub(obj)
    return obj


def _masked(key: object, value: Any) -> bool:
    """A credential-named value, or something other than a variable name where a name belongs."""
    if value in (None, ""):
        return False
    if isinstance(key, str) and key.lower().endswith("_env"):
        return not is_variable_name(value)
    return is_secret_key(key)
