"""Channel kinds (SPEC §12) against real peers on 127.0.0.1: Standard Webhooks verified by the reference
library, the Slack Web API / incoming webhooks, PagerDuty Events v2 and Teams Workflows receivers that
check method, path, auth header and body shape, and an aiosmtpd SMTP server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
import standardwebhooks
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.app import create_app
from prodsentinel.lib.database import session_scope
from prodsentinel.notifications import outbox as notification_outbox
from prodsentinel.notifications.models import ChannelState
from prodsentinel.settings import Settings
from tests.notifications.conftest import CHANNELS, create_channel, dispatch_until, ledger
from tests.receivers import Receiver, Recorded, Reply, SmtpReceiver

SessionMaker = async_sessionmaker[AsyncSession]
Client = AsyncTestClient[Litestar]
TOKEN = "xoxb-test-token-0123456789"
ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, smtp: SmtpReceiver) -> Settings:
    """The app's settings with the module's SMTP server (email channels need PRODSENTINEL_SMTP_HOST)."""
    return settings.with_overrides(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_starttls=False)


def alert_event(alert_id: UUID, *, service: str = "api") -> dict[str, Any]:
    return {
        "alert_id": str(alert_id),
        "policy_name": "High error rate",
        "labels": {"service": service, "env": "prod"},
        "value": 12.0,
        "operator": ">",
        "threshold": 5.0,
    }


async def emit(
    session_maker: SessionMaker,
    project_id: UUID,
    event_type: str,
    payload: dict[str, Any],
    severity: str = "high",
) -> UUID:
    async with session_scope(session_maker) as session:
        return await notification_outbox.add_event(
            session, project_id=project_id, event_type=event_type, severity=severity, payload=payload
        )


def delivered(count: int) -> Callable[[list[Any]], bool]:
    return lambda items: len(items) == count and all(i.status == "delivered" for i in items)


# --- Standard Webhooks ----------------------------------------------------------------------------


async def test_standard_webhooks_verified_by_the_reference_library_with_rotation_and_retry(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    old, new = (
        "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_" + "bmV3LXNlY3JldC1rZXktMDEyMzQ1Njc4OQ==",
    )
    receiver = receivers(Reply(503), default=Reply(200))
    await create_channel(client, admin_key, url=receiver.url, signing="standard", secret=f"{old} {new}")
    event_id = await emit(session_maker, project_id, "ALERT_FIRING", alert_event(uuid.uuid4()))
    await dispatch_until(session_maker, fast_settings, project_id, delivered(1))
    requests = receiver.wait_for(2)
    assert len(requests) == 2  # one failed attempt, one retry
    for request in requests:
        assert request.headers["webhook-id"] == str(event_id)
        assert request.headers["webhook-signature"].count("v1,") == 2
        for secret in (old, new):  # either side of a rotation verifies every delivery
            body = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
            assert body["event_id"] == str(event_id)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook("whsec_" + "b3RoZXIta2V5LW5vdC11c2VkLWhlcmUh").verify(
            requests[0].body, requests[0].headers
        )


async def test_a_standard_secret_that_is_not_whsec_is_refused(client: Client, admin_key: str) -> None:
    response = await client.post(
        CHANNELS,
        json={"name": "s", "url": "https://example.com/h", "signing": "standard", "secret": "plain"},
        headers={"X-API-Key": admin_key},
    )
    assert response.status_code == 422
    assert "whsec_" in response.json()["detail"]


# --- Slack ----------------------------------------------------------------------------------------


class SlackApi:
    """Answers chat.postMessage / chat.update as Slack does, after checking what a bot call must carry."""

    def __init__(self) -> None:
        self.posted = 0
        self.problems: list[str] = []

    def __call__(self, request: Recorded) -> Reply:
        body = json.loads(request.body)
        if request.method != "POST" or request.headers.get("authorization") != f"Bearer {TOKEN}":
            self.problems.append(f"bad method/auth: {request.method} {request.headers.get('authorization')}")
            return Reply(200, body=b'{"ok":false,"error":"invalid_auth"}')
        if not body.get("text") or not isinstance(body.get("blocks"), list):
            self.problems.append("no text fallback or blocks")
        if request.path == "/api/chat.postMessage":
            self.posted += 1
            if body.get("channel") != "#alerts":
                self.problems.append(f"posted to {body.get('channel')}")
            answer = {"ok": True, "channel": "C0ALERTS", "ts": f"1700000000.00000{self.posted}"}
            return Reply(200, body=json.dumps(answer).encode())
        if request.path == "/api/chat.update":
            if body.get("channel") != "C0ALERTS" or not body.get("ts"):
                self.problems.append(f"update without channel id/ts: {body}")
            return Reply(200, body=json.dumps({"ok": True, "channel": "C0ALERTS", "ts": body["ts"]}).encode())
        self.problems.append(f"unexpected path {request.path}")
        return Reply(404)


async def test_slack_bot_posts_once_then_updates_that_message_and_a_replay_keeps_the_ts(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
) -> None:
    api = SlackApi()
    with Receiver(responder=api) as slack:
        settings = fast_settings.with_overrides(slack_api_url=f"{slack.base}/api")
        channel = await create_channel(client, admin_key, kind="slack", token=TOKEN, slack_channel="#alerts")
        assert TOKEN not in json.dumps(channel)
        assert channel["has_secret"] is True
        alert_id = uuid.uuid4()
        for event_type in ("ALERT_FIRING", "ALERT_ACKNOWLEDGED", "ALERT_RESOLVED"):
            await emit(session_maker, project_id, event_type, alert_event(alert_id))
        items = await dispatch_until(session_maker, settings, project_id, delivered(3))
        requests = slack.wait_for(3)
        assert [r.path for r in requests] == ["/api/chat.postMessage", "/api/chat.update", "/api/chat.update"]
        assert {json.loads(r.body)["ts"] for r in requests[1:]} == {"1700000000.000001"}
        assert "[RESOLVED]" in json.loads(requests[2].body)["text"]

        firing = next(i for i in items if i.event_type == "ALERT_FIRING")
        response = await client.post(
            f"/api/v1/notifications/outbox/{firing.id}/replay", headers={"X-API-Key": admin_key}
        )
        assert response.status_code == 201
        await dispatch_until(session_maker, settings, project_id, delivered(4))
        replayed = slack.wait_for(4)[3]
        assert replayed.path == "/api/chat.update"
        assert json.loads(replayed.body)["ts"] == "1700000000.000001"
        assert api.posted == 1
        assert api.problems == []
    attempts = await ledger(session_maker, project_id)
    assert all(TOKEN not in repr(vars(a)) for a in attempts)


async def test_slack_incoming_webhook_gets_block_kit_with_a_text_fallback(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    hook = receivers(default=Reply(200, body=b"ok"))
    channel = await create_channel(client, admin_key, kind="slack", url=hook.url)
    assert channel["url"] == f"http://127.0.0.1:{hook.port}/****"  # the webhook URL is a credential
    await emit(
        session_maker,
        project_id,
        "INCIDENT_OPENED",
        {
            "incident": {
                "id": str(uuid.uuid4()),
                "title": "DB down",
                "service_name": "db",
                "severity": "critical",
                "fingerprint": "f1",
                "count": 3,
            }
        },
        severity="critical",
    )
    await dispatch_until(session_maker, fast_settings, project_id, delivered(1))
    (request,) = hook.wait_for(1)
    body = json.loads(request.body)
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert body["text"].startswith("[OPENED] DB down")
    assert body["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": "[OPENED] DB down"}}


# --- PagerDuty ------------------------------------------------------------------------------------


async def test_pagerduty_trigger_acknowledge_resolve_on_one_dedup_key_and_replay_keeps_it(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
) -> None:
    problems: list[str] = []

    def pagerduty(request: Recorded) -> Reply:
        body = json.loads(request.body)
        if request.method != "POST" or request.path != "/v2/enqueue":
            problems.append(f"{request.method} {request.path}")
        if (
            body.get("routing_key") != ROUTING_KEY
            or request.headers.get("content-type") != "application/json"
        ):
            problems.append("routing key or content type")
        if body["event_action"] == "trigger" and set(body["payload"]) < {"summary", "source", "severity"}:
            problems.append(f"trigger payload {body['payload']}")
        answer = {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]}
        return Reply(202, body=json.dumps(answer).encode())

    with Receiver(responder=pagerduty) as pd:
        settings = fast_settings.with_overrides(pagerduty_url=f"{pd.base}/v2/enqueue")
        channel = await create_channel(client, admin_key, kind="pagerduty", routing_key=ROUTING_KEY)
        assert ROUTING_KEY not in json.dumps(channel)
        alert_id = uuid.uuid4()
        for event_type in ("ALERT_FIRING", "ALERT_ACKNOWLEDGED", "ALERT_RESOLVED"):
            await emit(session_maker, project_id, event_type, alert_event(alert_id))
        items = await dispatch_until(session_maker, settings, project_id, delivered(3))
        bodies = [json.loads(r.body) for r in pd.wait_for(3)]
        assert [b["event_action"] for b in bodies] == ["trigger", "acknowledge", "resolve"]
        assert bodies[0]["payload"]["severity"] == "error"  # high -> error
        keys = {b["dedup_key"] for b in bodies}
        assert len(keys) == 1

        resolved = next(i for i in items if i.event_type == "ALERT_RESOLVED")
        response = await client.post(
            f"/api/v1/notifications/outbox/{resolved.id}/replay", headers={"X-API-Key": admin_key}
        )
        assert response.status_code == 201
        await dispatch_until(session_maker, settings, project_id, delivered(4))
        assert json.loads(pd.wait_for(4)[3].body)["dedup_key"] in keys
        assert problems == []
    async with session_scope(session_maker) as session:
        state = await session.scalar(select(ChannelState).where(ChannelState.subject == f"alert:{alert_id}"))
    assert state is not None
    assert state.data["dedup_key"] in keys


# --- Teams ----------------------------------------------------------------------------------------


async def test_teams_gets_an_adaptive_card(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    hook = receivers(default=Reply(202, body=b""))
    await create_channel(client, admin_key, kind="teams", url=hook.url + "?sig=SECRETSIG")
    await emit(session_maker, project_id, "ALERT_FIRING", alert_event(uuid.uuid4()))
    await dispatch_until(session_maker, fast_settings, project_id, delivered(1))
    (request,) = hook.wait_for(1)
    assert (request.method, request.path) == ("POST", "/hook?sig=SECRETSIG")
    body = json.loads(request.body)
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["body"][0]["text"] == "[FIRING] High error rate"
    assert {"title": "Labels", "value": "env=prod, service=api"} in card["body"][2]["facts"]


# --- Email ----------------------------------------------------------------------------------------


async def test_email_text_and_html_threaded_by_message_id(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    settings: Settings,
    smtp: SmtpReceiver,
) -> None:
    mail_settings = fast_settings.with_overrides(
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_starttls=False,
        smtp_from="ps@example.com",
    )
    await create_channel(client, admin_key, kind="email", to=["oncall@example.com", "lead@example.com"])
    before = smtp.count
    alert_id = uuid.uuid4()
    for event_type in ("ALERT_FIRING", "ALERT_ACKNOWLEDGED", "ALERT_RESOLVED"):
        await emit(session_maker, project_id, event_type, alert_event(alert_id))
    await dispatch_until(session_maker, mail_settings, project_id, delivered(3))
    mails = smtp.messages[before:]
    assert [m["Subject"] for m in mails] == [
        "[FIRING] High error rate",
        "[ACKNOWLEDGED] High error rate",
        "[RESOLVED] High error rate",
    ]
    root = mails[0]["Message-ID"]
    assert mails[0]["In-Reply-To"] is None
    for mail in mails[1:]:
        assert mail["In-Reply-To"] == root
        assert mail["References"] == root
        assert mail["Message-ID"] != root
    assert smtp.envelopes[before][1] == ["oncall@example.com", "lead@example.com"]
    first = mails[0]
    assert first.get_body(("plain",)).get_content().startswith("High error rate: value 12.0 > 5.0")
    assert "<h2>[FIRING] High error rate</h2>" in first.get_body(("html",)).get_content()


async def test_email_channel_needs_the_smtp_host_setting(admin_key: str, settings: Settings) -> None:
    app = create_app(settings.with_overrides(smtp_host=None))
    async with AsyncTestClient(app) as bare:
        response = await bare.post(
            CHANNELS,
            json={"name": "m", "kind": "email", "to": ["a@example.com"]},
            headers={"X-API-Key": admin_key},
        )
    assert response.status_code == 422
    assert "PRODSENTINEL_SMTP_HOST" in response.json()["detail"]


# --- routing, TEST ---------------------------------------------------------------------------------


async def test_matchers_route_on_labels_and_a_non_matching_channel_gets_nothing(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    api_hook, db_hook = receivers(), receivers()
    api = await create_channel(
        client, admin_key, url=api_hook.url, matchers=[{"name": "service", "op": "=~", "value": "api|web"}]
    )
    await create_channel(
        client, admin_key, url=db_hook.url, matchers=[{"name": "service", "op": "=", "value": "db"}]
    )
    await emit(session_maker, project_id, "ALERT_FIRING", alert_event(uuid.uuid4(), service="api"))
    items = await dispatch_until(session_maker, fast_settings, project_id, delivered(1))
    assert [str(i.channel_id) for i in items] == [api["id"]]
    assert db_hook.count == 0
    bad = await client.post(
        CHANNELS,
        json={"name": "x", "url": api_hook.url, "matchers": [{"name": "service", "op": "=~", "value": "("}]},
        headers={"X-API-Key": admin_key},
    )
    assert bad.status_code == 422
    assert "matchers[0]" in bad.json()["detail"]


async def test_test_endpoint_sends_a_test_event_to_that_channel_only(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    target, other = receivers(), receivers()
    channel = await create_channel(client, admin_key, url=target.url)
    await create_channel(client, admin_key, url=other.url)
    response = await client.post(f"{CHANNELS}/{channel['id']}/test", headers={"X-API-Key": admin_key})
    assert response.status_code == 202
    items = await dispatch_until(session_maker, fast_settings, project_id, delivered(1))
    assert items[0].event_type == "TEST"
    assert str(items[0].id) == response.json()["outbox_id"]
    assert json.loads(target.wait_for(1)[0].body)["event_type"] == "TEST"
    assert other.count == 0
