"""Connecting to Argilla: one place that turns every way it can fail into a message that says what to do.

Connecting happens before anything local is read for writing, so a server that is down or a wrong
key changes nothing on disk. The key is read from the environment only and never printed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from synth.errors import UserError
from synth.redact import register_secret
from synth.review.config import ReviewSpec

if TYPE_CHECKING:
    import argilla as rg

DEFAULT_URL = "http://localhost:6900"
START_HINT = (
    "start Argilla with its Docker quickstart (see the README, 'Review in Argilla') or use a Hugging Face "
    "Space, then set ARGILLA_API_URL and ARGILLA_API_KEY"
)


def import_argilla() -> Any:
    """The Argilla SDK, or a message naming the extra that installs it."""
    try:
        import argilla
    except ImportError as exc:
        raise UserError(f"the Argilla SDK is not installed ({exc.msg})", "pip install 'distillery[argilla]'") from None
    return argilla


def api_url(spec: ReviewSpec) -> str:
    """The server URL: the recipe's `review.api_url`, else $ARGILLA_API_URL, else Argilla's default."""
    return (spec.api_url or os.environ.get("ARGILLA_API_URL") or DEFAULT_URL).rstrip("/")


def connect(spec: ReviewSpec) -> rg.Argilla:
    """A client that has already talked to the server (so later calls fail only for real reasons)."""
    rg = import_argilla()
    import httpx

    url = api_url(spec)
    key = os.environ.get("ARGILLA_API_KEY")
    register_secret(key)
    if not key:
        raise UserError("ARGILLA_API_KEY is not set", f"export the API key of your Argilla user ({url}, My settings)")
    try:
        client = rg.Argilla(api_url=url, api_key=key, timeout=30, retries=1)
        client.me  # noqa: B018 - a first request, so a wrong key fails here
    except httpx.TransportError as exc:
        raise UserError(f"cannot reach the Argilla server at {url} ({type(exc).__name__})", START_HINT) from None
    except rg._exceptions.ArgillaCredentialsError:
        raise UserError(
            f"the Argilla server at {url} refused ARGILLA_API_KEY",
            "copy the key from Argilla's 'My settings' page into ARGILLA_API_KEY",
        ) from None
    except rg._exceptions.ArgillaAPIError as exc:
        raise UserError(f"{url} answered with an error where Argilla's API should be: {exc}", START_HINT) from None
    except Exception as exc:  # a web server that is not Argilla: HTML, 404s, bodies of another shape
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
            raise
        raise UserError(
            f"{url} does not answer like an Argilla server ({type(exc).__name__}: {str(exc)[:120]})",
            "set review.api_url or ARGILLA_API_URL to the Argilla server's address (e.g. http://localhost:6900)",
        ) from None
    return client


def api_errors() -> tuple[type[BaseException], ...]:
    """Errors from talking to a server that was reachable a moment ago (shown as user errors)."""
    rg = import_argilla()
    import httpx

    return (httpx.TransportError, rg._exceptions.ArgillaError)
