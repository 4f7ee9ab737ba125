"""TEST INFRASTRUCTURE: start a real argilla-server 2.8 on 127.0.0.1 without Elasticsearch or Redis.

Run with argilla-server's own virtualenv python (its pins clash with ours):

    python tests/argilla_server_main.py --home DIR --port PORT --api-key KEY

Before argilla-server is imported (it reads settings and connects to Redis at import time) this
sets its environment, registers the SQLite search plugin (`argilla_sqlite_search.py`), and swaps
`redis.from_url` for an in-process fakeredis server: argilla-server only pings Redis at start-up and
enqueues background jobs there, and no job is needed by the review loop. Then it migrates the SQLite
database, creates an owner with the given API key, and serves the real app with uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path


def _environment(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    os.environ["ARGILLA_HOME_PATH"] = str(home)
    os.environ["ARGILLA_DATABASE_URL"] = f"sqlite+aiosqlite:///{home / 'argilla.db'}?check_same_thread=False"
    os.environ["ARGILLA_SEARCH_ENGINE"] = "sqlite"
    os.environ["ARGILLA_ENABLE_TELEMETRY"] = "0"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TMPDIR"] = str(home / "tmp")  # the server copies its web UI into a temp folder


def _fake_redis() -> None:
    import fakeredis
    import redis

    server = fakeredis.FakeServer()
    redis.from_url = lambda *args, **kwargs: fakeredis.FakeRedis(server=server)


async def _create_owner(api_key: str) -> None:
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User, UserRole

    async with AsyncSessionLocal() as db:
        if await accounts.get_user_by_username(db, "owner"):
            return
        await User.create(
            db,
            first_name="Owner",
            username="owner",
            role=UserRole.owner,
            api_key=api_key,
            password_hash=accounts.hash_password("owner-password"),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()

    _environment(args.home)
    _fake_redis()
    sys.path.insert(0, str(Path(__file__).parent))
    import argilla_sqlite_search  # noqa: F401 - registers the `sqlite` engine
    from argilla_server.cli.database.migrate import migrate_db

    migrate_db("head")
    asyncio.run(_create_owner(args.api_key))

    import uvicorn

    uvicorn.run("argilla_server._app:app", host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
