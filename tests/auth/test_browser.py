"""A real browser (Playwright driving Debian's Chromium) signs in from a static page on another port:
``fetch(..., {credentials: "include"})`` logs in, reads incidents with the cookie, makes a change with
the CSRF header (and is refused without it), and receives a WebSocket event."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib import events
from prodsentinel.lib.database import libpq_url
from prodsentinel.settings import Settings
from tests.auth.conftest import PASSWORD, UserFactory
from tests.conftest import project_id_of, unavailable
from tests.system.servers import granian_server

PAGE = """<!doctype html>
<html><body><script>
window.received = [];
async function run(api, email, password) {
  const login = await fetch(api + "/api/v1/auth/login", {
    method: "POST", credentials: "include",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({email: email, password: password}),
  });
  const body = await login.json();
  const incidents = await fetch(api + "/api/v1/incidents", {credentials: "include"});
  const silence = JSON.stringify({
    matchers: [{name: "alertname", op: "=", value: "x"}, {name: "service", op: "=", value: "y"}],
    ends_at: "2999-01-01T00:00:00Z", comment: "from the browser",
  });
  const post = (headers) => fetch(api + "/api/v1/alerts/silences", {
    method: "POST", credentials: "include", body: silence,
    headers: {"content-type": "application/json", ...headers},
  });
  const withoutCsrf = await post({});
  const withCsrf = await post({"X-CSRF-Token": body.csrf_token});
  const socket = new WebSocket(api.replace("http://", "ws://") + "/api/v1/events/ws");
  socket.onmessage = (message) => window.received.push(JSON.parse(message.data));
  return {
    login: login.status, role: body.role, hasToken: typeof body.access_token === "string",
    cookieVisibleToScript: document.cookie.includes("prodsentinel_session"),
    incidents: incidents.status, items: (await incidents.json()).items,
    withoutCsrf: withoutCsrf.status, withCsrf: withCsrf.status,
  };
}
</script></body></html>
"""


@contextmanager
def static_page(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (another origin than the API); yields the page's origin."""
    (directory / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_browser_page_signs_in_reads_changes_and_receives_events(
    database_url: str,
    settings: Settings,
    session_maker: async_sessionmaker[AsyncSession],
    make_user: UserFactory,
    project_name: str,
    tmp_path: Path,
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        unavailable("chromium", "apt-get install chromium")
    from playwright.async_api import async_playwright

    email = await make_user("operator")
    mine = await project_id_of(session_maker, project_name)
    publisher = await events.start_publisher(settings, libpq_url(database_url))  # the test plays the worker
    try:
        with (
            static_page(tmp_path) as origin,
            granian_server({"DATABASE_URL": database_url, "PRODSENTINEL_CORS_ORIGINS": origin}) as api,
        ):
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                try:
                    page = await browser.new_page()
                    await page.goto(f"{origin}/index.html")
                    result: dict[str, Any] = await page.evaluate(
                        "([api, email, password]) => run(api, email, password)", [api, email, PASSWORD]
                    )
                    await page.wait_for_function("window.received.length >= 1", timeout=20_000)
                    event_id = str(uuid.uuid4())
                    assert await events.publish_event("incident_opened", mine, {"id": event_id})
                    await page.wait_for_function("window.received.length >= 2", timeout=20_000)
                    received = await page.evaluate("window.received")
                finally:
                    await browser.close()
    finally:
        await events.stop_publisher(publisher)
    assert result == {
        "login": 200,
        "role": "operator",
        "hasToken": True,
        "cookieVisibleToScript": False,  # HttpOnly
        "incidents": 200,
        "items": [],
        "withoutCsrf": 403,
        "withCsrf": 201,
    }
    assert received == [
        {"type": "connected", "data": {"project": project_name}},
        {"type": "incident_opened", "data": {"id": event_id}},
    ]
