"""Talking to the Hub: the token check, and the small facts both cards need.

The token is whatever huggingface_hub finds (`HF_TOKEN`, else the stored `hf auth login`); we never
read it ourselves, so it cannot end up in a card, a log line or a file we write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from synth.errors import UserError, first_line
from synth.redact import scrub

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


# huggingface_hub's http client raises these by name; the last three mean HF_ENDPOINT is not a URL
NETWORK_ERRORS = (
    *("ConnectError", "Timeout", "TimeoutException", "TransportError", "NetworkError"),
    *("UnsupportedProtocol", "InvalidURL", "LocalProtocolError"),
)


@contextmanager
def hub_errors(endpoint: str, doing: str) -> Iterator[None]:
    """Turn every way a Hub call can fail into one line naming the Hub URL, the step and what to do.

    A Hub that refuses (403 on create_repo: no write access to that namespace), fails (500), or a URL
    that is not a Hub at all (HTML, 404 on the API) must not end in a traceback half-way through.
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        yield
    except LocalTokenNotFoundError:
        raise UserError(
            "no Hugging Face token found", "set HF_TOKEN or run `hf auth login` (a token with write access)"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = {
            401: "check HF_TOKEN, or run `hf auth login` again",
            403: "the token has no write access to that namespace: use a write token, or another --repo-id",
            404: f"{endpoint} does not answer like a Hugging Face Hub: check HF_ENDPOINT",
        }.get(status or 0, "try again later; if it persists, check the Hub's status page or HF_ENDPOINT")
        if status == 401:
            raise UserError(f"the Hub at {endpoint} refused the token (HTTP 401) while {doing}", hint) from None
        first = scrub(first_line(exc, 200))
        raise UserError(f"the Hub at {endpoint} answered HTTP {status} while {doing}: {first}", hint) from None
    except UserError:
        raise
    except Exception as exc:
        # huggingface_hub 2.x raises its http client's transport errors as they are, and a non-Hub
        # server's HTML as a JSON decoding error.
        name = type(exc).__name__
        network = name.endswith(NETWORK_ERRORS)
        if isinstance(exc, OSError) and not network and getattr(exc, "errno", None) is not None:
            raise  # a local file problem: the CLI reports it with its path
        if network or isinstance(exc, OSError):
            raise UserError(
                f"cannot reach the Hub at {endpoint} while {doing} ({name})", "check HF_ENDPOINT and the network"
            ) from None
        if isinstance(exc, json.JSONDecodeError):  # a web page where the Hub's JSON API should be
            raise UserError(
                f"{endpoint} does not answer like a Hugging Face Hub while {doing} ({name}: {str(exc)[:120]})",
                "check HF_ENDPOINT (unset it for huggingface.co)",
            ) from None
        raise


def authenticated_api() -> Any:
    """An HfApi whose token the Hub accepted (checked with whoami before any upload)."""
    hub = import_hub()
    api = hub.HfApi()
    with hub_errors(api.endpoint, "checking the token"):
        api.whoami()
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
