"""Talking to the Hub: the token check, and the small facts both cards need.

The token is whatever huggingface_hub finds (`HF_TOKEN`, else the stored `hf auth login`); we never
read it ourselves, so it cannot end up in a card, a log line or a file we write.
"""

from __future__ import annotations

import re
from typing import Any

from synth.errors import UserError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def import_hub() -> Any:
    """huggingface_hub, or a message naming the extra that installs it."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise UserError(f"huggingface_hub is not installed ({exc.msg})", "pip install 'distillery[hub]'") from None
    return huggingface_hub


def check_repo_id(repo_id: str | None, what: str) -> str:
    """A repo id in ORG/NAME form, or a message that says where to give one."""
    if not repo_id:
        raise UserError(f"no {what} repo given", f"pass --repo-id ORG/NAME or set `publish.{what}` in the recipe")
    if not REPO_ID.match(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub repo id", "use ORG/NAME, e.g. my-org/french-distill")
    return repo_id


def authenticated_api() -> Any:
    """An HfApi whose token the Hub accepted (checked with whoami before any upload)."""
    hub = import_hub()
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = hub.HfApi()
    try:
        api.whoami()
    except LocalTokenNotFoundError:
        raise UserError(
            "no Hugging Face token found", "set HF_TOKEN or run `hf auth login` (a token with write access)"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UserError(
                f"the Hub at {api.endpoint} refused the token (401)", "check HF_TOKEN, or run `hf auth login` again"
            ) from None
        raise UserError(f"the Hub at {api.endpoint} answered {status}: {exc}") from None
    except Exception as exc:
        # huggingface_hub 2.x raises its http client's (httpx2) transport errors as they are
        if not (
            isinstance(exc, OSError) or type(exc).__name__.endswith(("ConnectError", "Timeout", "TimeoutException"))
        ):
            raise
        raise UserError(f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__})", "check HF_ENDPOINT") from None
    return api


def model_id(recorded: str) -> str:
    """The Hub id inside a recorded model name ('org/name (how it was loaded)' -> 'org/name')."""
    return recorded.split(" (")[0].strip()


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"
