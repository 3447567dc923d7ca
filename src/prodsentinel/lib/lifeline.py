"""Server processes die with the ``prodsentinel run`` process that started them.

Why: ``prodsentinel run`` (the supervisor) starts granian in a process group of its own, and granian its
workers. When the supervisor is killed with SIGKILL (an OOM killer, a process manager's last resort) it
cannot forward the stop: granian kept serving, orphaned, and a second ``run`` started beside it on the
same port (SO_REUSEPORT). Linux's parent-death signal does not help, because the worker's parent is
granian, not the supervisor. So the supervisor exports its pid (:func:`mark_supervisor`) and each server
process built from it watches that pid from a daemon thread (:func:`watch_supervisor`): the thread
blocks on a pidfd (no polling) and, when the supervisor is gone, stops the server's process group the
way Ctrl-C would (SIGTERM: in-flight requests end, writers drain), then SIGKILL after a grace period.

Only the standard library here: ``prodsentinel.embedded``'s watchdog process imports :func:`wait_for_exit`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from pathlib import Path

import structlog

__all__ = ("SUPERVISOR_PID_ENV", "is_alive", "mark_supervisor", "wait_for_exit", "watch_supervisor")

logger = structlog.get_logger("prodsentinel.lifeline")

#: The environment variable through which ``prodsentinel run`` hands its pid to its server processes.
SUPERVISOR_PID_ENV = "PRODSENTINEL_SUPERVISOR_PID"
#: Seconds between SIGTERM and SIGKILL of an orphaned server (granian's own default kill timeout).
GRACE_SECONDS = 30.0
#: Polling interval where no pidfd is available (not Linux >= 5.3).
_POLL_SECONDS = 0.5
_MAX_ANCESTORS = 8

_watching = False


def mark_supervisor() -> None:
    """Called by ``prodsentinel run``: the processes it starts inherit its pid."""
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())


def watch_supervisor() -> None:
    """In a server process started by ``prodsentinel run``: stop with it. Idempotent; a no-op elsewhere."""
    global _watching
    raw = os.environ.get(SUPERVISOR_PID_ENV, "")
    if _watching or not raw.isdigit() or int(raw) == os.getpid():
        return  # not started by `run`, already watching, or the supervisor itself (it builds the app too)
    supervisor = int(raw)
    if not _is_ancestor(supervisor):
        return  # an inherited variable of an unrelated process: nothing to watch
    _watching = True
    group = os.getpgrp()
    # Only the server's own group, never the supervisor's (it may be an interactive shell's).
    own_group = group != _pgid(supervisor)
    thread = threading.Thread(
        target=_stop_when_gone, args=(supervisor, group, own_group), name="prodsentinel-lifeline", daemon=True
    )
    thread.start()


def wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has exited (returns at once if it already has)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd on this system: poll
        while is_alive(pid):
            time.sleep(_POLL_SECONDS)
        return
    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_when_gone(supervisor: int, group: int, own_group: bool) -> None:
    wait_for_exit(supervisor)
    logger.warning("supervisor_gone_stopping", supervisor_pid=supervisor, grace_seconds=GRACE_SECONDS)
    _signal(group, own_group, signal.SIGTERM)
    time.sleep(GRACE_SECONDS)  # still running after the grace period (this thread dies with its process)
    logger.error("orphan_not_stopped_killing", supervisor_pid=supervisor)
    _signal(group, own_group, signal.SIGKILL)


def _signal(group: int, own_group: bool, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if own_group:
            os.killpg(group, signum)
        else:
            os.kill(os.getpid(), signum)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _is_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process's parent, grandparent, ... (``/proc``; False where unreadable)."""
    current = os.getppid()
    for _ in range(_MAX_ANCESTORS):
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            return False
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses; split after the last ")".
        current = int(stat.rsplit(")", 1)[1].split()[1])
    return False
