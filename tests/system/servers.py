"""Run the real app under granian in a child process (for SSE, multi-worker metrics)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def granian_server(
    env: dict[str, str], *, workers: int = 1, timeout: float = 60, output: list[str] | None = None
) -> Iterator[str]:
    """Start ``granian --factory prodsentinel.app:create_app`` and yield its base URL; stop it after.

    ``output`` (when given) receives the server's stdout+stderr lines once it has stopped.
    """
    port = free_port()
    child_env = {
        **os.environ,
        "PRODSENTINEL_AUTO_MIGRATE": "0",
        "PRODSENTINEL_INPROCESS_WORKERS": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--no-access-log", "prodsentinel.app:create_app",
    ]  # fmt: skip
    process = subprocess.Popen(  # its own process group: a stuck shutdown is killed with its workers
        command,
        env=child_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise RuntimeError(f"granian exited with {process.returncode}:\n{output[-3000:]}")
            try:
                if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("granian did not start in time")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        try:
            captured, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            # granian can hang stopping while a worker is still starting (seen under load); its workers
            # hold the output pipe, so kill the whole group or reading the output never ends.
            os.killpg(process.pid, signal.SIGKILL)
            captured, _ = process.communicate()
        if output is not None:
            output.extend((captured or b"").decode(errors="replace").splitlines())
