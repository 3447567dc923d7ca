"""HTTP transport of every HTTP kind: keep-alive "lanes" and the egress guard (SPEC §12).

One ``httpx.AsyncClient`` per worker process, event loop and egress policy: keep-alive connections to a
receiver are reused across batches and jobs. :class:`GuardedTransport` resolves each request's host
with ``egress.resolve`` and sends the request to the checked address (``Host`` header and TLS SNI keep
the name, so virtual hosts and certificate checks work): DNS cannot change between check and connect.
Redirects are never followed (a 3xx is an answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import httpx

from prodsentinel import __version__
from prodsentinel.notifications import egress

__all__ = ("USER_AGENT", "GuardedTransport", "LaneTransport", "close_client", "shared_client")

# httpx logs every request at INFO; at hundreds of deliveries a second that drowns the logs, and the
# attempt ledger already records each one.
logging.getLogger("httpx").setLevel(logging.WARNING)

USER_AGENT = f"ProdSentinel-Webhook/{__version__}"

_clients: dict[bool, tuple[httpx.AsyncClient, asyncio.AbstractEventLoop]] = {}


class _LaneStream(httpx.AsyncByteStream):
    """A response body that hands its lane back once the client has read (or dropped) it."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None


class LaneTransport(httpx.AsyncBaseTransport):
    """Keep-alive connections as "lanes": one single-connection httpx transport per in-flight request.

    Hand-written because httpcore 1.0's shared pool collapses under concurrency: every pass of its
    ``_assign_requests_to_connections`` probes every connection (``poll``/``getpeername`` syscalls) and
    hands one idle HTTP/1.1 connection to every queued request, the losers retrying (encode/httpcore
    #1035, not released). Measured here at 50 concurrent requests: 3.6 ms CPU per request with one
    pool, 0.64 ms with lanes. Each lane is a stock ``AsyncHTTPTransport`` with one connection, so
    HTTP/TLS handling, timeouts and keep-alive expiry stay httpx's own; this class only checks lanes
    out and back in, per origin, at most ``max_lanes_per_origin`` at once.
    """

    def __init__(self, *, max_lanes_per_origin: int = 100, keepalive_expiry: float = 30.0) -> None:
        self._max = max_lanes_per_origin
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[bytes, bytes, int | None], list[httpx.AsyncHTTPTransport]] = {}
        self._gates: dict[tuple[bytes, bytes, int | None], asyncio.Semaphore] = {}
        self._all: list[httpx.AsyncHTTPTransport] = []
        # One TLS context for all lanes: building one loads the CA bundle (~50 ms of CPU each).
        self._ssl_context = httpx.create_ssl_context()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The SNI name is part of the key: a TLS connection made for one name is never reused for
        # another name that resolved to the same address.
        sni = str(request.extensions.get("sni_hostname", "")).encode()
        origin = (request.url.raw_scheme, request.url.raw_host + b"|" + sni, request.url.port)
        gate = self._gates.setdefault(origin, asyncio.Semaphore(self._max))
        await gate.acquire()
        idle = self._idle.setdefault(origin, [])
        if idle:
            lane = idle.pop()
        else:
            lane = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=1, max_keepalive_connections=1, keepalive_expiry=self._expiry
                )
            )
            self._all.append(lane)

        def release() -> None:
            idle.append(lane)
            gate.release()

        try:
            response = await lane.handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_LaneStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        lanes, self._all = self._all, []
        self._idle.clear()
        for lane in lanes:
            await lane.aclose()


class GuardedTransport(LaneTransport):
    """:class:`LaneTransport` that sends each request to the address ``egress.resolve`` checked.

    A refused destination raises ``egress.BlockedDestinationError`` (the attempt's error code is
    ``blocked_destination``, not retried) before any connection is made.
    """

    def __init__(self, *, block_private: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.block_private = block_private

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        address = await egress.resolve(url.host, port, block_private=self.block_private)
        if address == url.host:
            return await super().handle_async_request(request)
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,  # keeps Host: <name>
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": url.host},
        )
        return await super().handle_async_request(pinned)


def shared_client(*, block_private: bool = False) -> httpx.AsyncClient:
    """The process's client for this egress policy, created on first use in the running event loop.

    httpx clients are bound to the loop that opened their connections; a new loop (tests, a CLI run)
    gets a new client. Redirects are not followed (a 3xx is an answer: ``http_3xx``, dead).
    """
    loop = asyncio.get_running_loop()
    found = _clients.get(block_private)
    if found is not None and found[1] is loop and not found[0].is_closed:
        return found[0]
    client = httpx.AsyncClient(
        transport=GuardedTransport(block_private=block_private),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
    _clients[block_private] = (client, loop)
    return client


async def close_client() -> None:
    """Close the shared clients of this loop (app shutdown); a no-op when none was opened."""
    loop = asyncio.get_running_loop()
    for key, (client, client_loop) in list(_clients.items()):
        if client_loop is loop:
            await client.aclose()
        del _clients[key]
