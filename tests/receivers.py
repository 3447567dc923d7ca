"""A real HTTP/1.1 webhook receiver on 127.0.0.1 for tests and the outbox benchmark.

It runs its own asyncio loop in a background thread, so the code under test (in the test's loop, or in
another process) talks to it over a real socket. Each request is recorded, then answered by the next
scripted :class:`Reply` (then the default one): any status and headers, a delay (slow receiver or
timeout), or ``hold`` (keep the request open until :meth:`Receiver.release`). Keep-alive is supported,
so a client's connection pool is exercised as in production.

A ``responder`` (a function of the recorded request) answers instead of the script: the Slack Web API,
PagerDuty and Teams receivers of the channel tests check method, path, auth header and body shape there
and answer as those services do. :class:`SmtpReceiver` is a real SMTP server (``aiosmtpd``) on 127.0.0.1.

It also counts requests per ``X-ProdSentinel-Delivery-Id`` and notes when a delivery id arrives while
the same id is still in flight (``overlaps``): "no item is sent twice at once" is checked here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http import HTTPStatus
from typing import Any, Self

__all__ = ("Receiver", "Recorded", "Reply", "SmtpReceiver")

_DELIVERY_HEADER = "x-prodsentinel-delivery-id"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok":true}'
    delay: float = 0.0
    hold: bool = False


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    received_at: float


class Receiver:
    """``with Receiver(Reply(500)) as r: ... r.url ... r.requests``."""

    def __init__(
        self,
        *script: Reply,
        default: Reply | None = None,
        record_bodies: bool = True,
        responder: Callable[[Recorded], Reply] | None = None,
    ) -> None:
        self.responder = responder
        self._script: deque[Reply] = deque(script)
        self.default = default or Reply()
        self.record_bodies = record_bodies
        self.requests: list[Recorded] = []
        self.delivery_counts: Counter[str] = Counter()
        self.overlaps = 0
        self.connections = 0
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="receiver", daemon=True)
        self._server: asyncio.Server | None = None
        self._release: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        assert self._release is not None
        self._release.set()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- scripting and inspection ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply, default: Reply | None = None) -> None:
        with self._lock:
            self._script = deque(replies)
            if default is not None:
                self.default = default

    def release(self) -> None:
        """Answer every held request (and stop holding new ones)."""
        assert self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until ``count`` requests arrived (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"receiver got {self.count} requests, expected {count}")

    async def wait_for_async(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            await asyncio.sleep(0.02)
        raise AssertionError(f"receiver got {self.count} requests, expected {count}")

    # --- the HTTP server -------------------------------------------------------------------------

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        with self._lock:
            self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                try:
                    body = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self._respond(method, path, headers, body, writer):
                    return
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        delivery_id = headers.get(_DELIVERY_HEADER, "")
        recorded = Recorded(method, path, headers, body if self.record_bodies else b"", time.time())
        with self._lock:
            self.requests.append(recorded)
            if delivery_id:
                self.delivery_counts[delivery_id] += 1
                if self._in_flight[delivery_id]:
                    self.overlaps += 1
                self._in_flight[delivery_id] += 1
        reply = self.responder(recorded) if self.responder is not None else self._next_reply()
        try:
            if reply.hold:
                assert self._release is not None
                await self._release.wait()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            reason = HTTPStatus(reply.status).phrase if reply.status in HTTPStatus._value2member_map_ else "X"
            extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
            head = (
                f"HTTP/1.1 {reply.status} {reason}\r\nContent-Length: {len(reply.body)}\r\n"
                f"Content-Type: application/json\r\n{extra}\r\n"
            )
            writer.write(head.encode("latin-1") + reply.body)
            await writer.drain()
            return True
        except (ConnectionError, RuntimeError):
            return False
        finally:
            with self._lock:
                if delivery_id:
                    self._in_flight[delivery_id] -= 1


class SmtpReceiver:
    """A real SMTP server (``aiosmtpd``) on 127.0.0.1 that keeps every mail it accepts.

    ``refuse`` (an SMTP reply such as ``"550 no such user"``) makes it refuse every mail at DATA.
    """

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse: str | None = None
        self._lock = threading.Lock()
        with socket.socket() as probe:  # aiosmtpd's start-up check cannot use port 0
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's hook name)
        if self.refuse is not None:
            return self.refuse
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def start(self) -> Self:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.messages)
