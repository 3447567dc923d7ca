"""Channels of every kind: CRUD through the API, the declarative ``PRODSENTINEL_CHANNELS_FILE``, tests.

A channel's constraints are declared on ``ChannelCreate``/``ChannelUpdate`` (``schemas.py``): msgspec
enforces them while decoding (the API answers 422, the channels file stops the start), and the OpenAPI
schema publishes them. This module keeps what a schema cannot say (:func:`_columns`: the fields of each
kind, one credential source, URL hosts, ``whsec_`` secrets, matcher regexes), the egress guard at
create/update (:func:`_check_destinations`), and the normalisation of accepted values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from uuid import UUID

import httpx
import msgspec
from advanced_alchemy.exceptions import DuplicateKeyError
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.alerts.matchers import MatcherError
from prodsentinel.auth.services import ProjectService
from prodsentinel.lib import vocabulary
from prodsentinel.lib.config_files import config_file_error, read_yaml_list
from prodsentinel.lib.errors import ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import egress, routing, standard_webhooks
from prodsentinel.notifications.models import Channel
from prodsentinel.notifications.outbox import add_event
from prodsentinel.notifications.reports import HEALTH_WINDOW, ReportService, check_window, empty_health
from prodsentinel.notifications.repositories import ChannelRepository, OutboxRepository
from prodsentinel.notifications.schemas import (
    ChannelCreate,
    ChannelHealth,
    ChannelOut,
    ChannelTestOut,
    ChannelUpdate,
    MatcherIn,
)
from prodsentinel.settings import Settings, SettingsError

__all__ = ("ChannelFileItem", "ChannelService", "parse_channels_file")

_FILE_VARIABLE = "PRODSENTINEL_CHANNELS_FILE"


# --- what msgspec cannot check --------------------------------------------------------------------

#: The fields that belong to one kind or another (the rest apply to every kind).
_KIND_FIELDS: Final = (
    "url", "secret", "secret_env", "signing", "token", "token_env", "slack_channel", "to", "routing_key",
    "routing_key_env",
)  # fmt: skip
_ALLOWED: Final[dict[str, frozenset[str]]] = {
    "webhook": frozenset({"url", "secret", "secret_env", "signing"}),
    "slack": frozenset({"url", "token", "token_env", "slack_channel"}),
    "email": frozenset({"to"}),
    "pagerduty": frozenset({"routing_key", "routing_key_env"}),
    "teams": frozenset({"url"}),
}
#: The API names of a kind's credential (stored in the ``secret``/``secret_env`` columns).
_CREDENTIAL: Final[dict[str, tuple[str, str]]] = {
    "webhook": ("secret", "secret_env"),
    "slack": ("token", "token_env"),
    "pagerduty": ("routing_key", "routing_key_env"),
}


def _check_url(url: str) -> str:
    """The schema's pattern admits ``scheme://authority...``; whether the authority holds a usable host
    needs a URL parser: httpx decodes the host lazily, so an invalid IDNA label (``xn--``) or a bad
    port only raises here, and ``https://user@`` has an authority but no host."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host
    except Exception:
        raise ValidationError("url is not a valid URL.") from None
    if parsed.scheme not in {"http", "https"} or not host:
        raise ValidationError("url must be an absolute http:// or https:// URL with a host.")
    return url


def _name(name: str) -> str:
    """Names are compared trimmed (the schema's ``\\S`` pattern guarantees something is left)."""
    return name.strip()


def _event_types(event_types: list[str] | None) -> list[str] | None:
    """Duplicates dropped, order kept; None means every event type."""
    return None if event_types is None else list(dict.fromkeys(event_types))


def _spec(data: ChannelCreate) -> dict[str, Any]:
    """A decoded channel as plain values in API terms (matchers as dicts)."""
    spec = msgspec.structs.asdict(data)
    if data.matchers is not None:
        spec["matchers"] = [msgspec.structs.asdict(m) for m in data.matchers]
    return spec


def _columns(spec: dict[str, Any]) -> dict[str, Any]:
    """The stored values of a channel in API terms, after the checks msgspec could not make: which
    fields a kind takes and needs, one credential source at most (a JSON schema cannot say "not both"
    of two optional fields without a ``oneOf`` that generated clients handle badly), the URL's host,
    Standard Webhooks secrets, matcher regexes."""
    kind = spec.get("kind") or "webhook"
    given = {f for f in _KIND_FIELDS if spec.get(f) is not None}
    if spec.get("signing") == "prodsentinel":
        given.discard("signing")
    for field in sorted(given - _ALLOWED[kind]):
        raise ValidationError(f"{field} does not apply to a {kind} channel.")
    inline_name, env_name = _CREDENTIAL.get(kind, ("secret", "secret_env"))
    inline, env = spec.get(inline_name), spec.get(env_name)
    if inline is not None and env is not None:
        raise ValidationError(f"give either {inline_name} or {env_name}, not both.")
    url = spec.get("url")
    if kind in {"webhook", "teams"} and url is None:
        raise ValidationError(f"a {kind} channel needs a url.")
    if kind == "slack":
        if url is not None and (inline or env or spec.get("slack_channel")):
            raise ValidationError("a slack channel has either an incoming-webhook url or a token, not both.")
        if url is None and (not (inline or env) or not spec.get("slack_channel")):
            raise ValidationError(
                "a slack channel needs an incoming-webhook url, or token (or token_env) and slack_channel."
            )
    if kind == "email" and not spec.get("to"):
        raise ValidationError("an email channel needs to (a list of addresses).")
    if kind == "pagerduty" and not (inline or env):
        raise ValidationError("a pagerduty channel needs routing_key or routing_key_env.")
    signing = spec.get("signing") or "prodsentinel"
    if kind == "webhook" and signing == "standard" and inline is not None:
        try:
            standard_webhooks.parse_secrets(inline)
        except ValueError as exc:
            raise ValidationError(f"secret: {exc}.") from None
    matchers = spec.get("matchers")
    if matchers is not None:
        try:
            matchers = routing.validate_matchers(matchers)
        except MatcherError as exc:
            raise ValidationError(str(exc)) from None
    return {
        "name": _name(spec["name"]),
        "kind": kind,
        "url": _check_url(url) if url is not None else None,
        "secret": inline,
        "secret_env": env,
        "signing": signing,
        "slack_channel": spec.get("slack_channel"),
        "email_to": list(spec["to"]) if spec.get("to") else None,
        "matchers": matchers or None,
        "min_severity": spec.get("min_severity") or "low",
        "event_types": _event_types(spec.get("event_types")),
        "enabled": spec.get("enabled", True),
        "group_by": list(dict.fromkeys(spec["group_by"])) if spec.get("group_by") else None,
        "group_wait": spec.get("group_wait", 30),
        "group_interval": spec.get("group_interval", 300),
        "repeat_interval": spec.get("repeat_interval", 14400),
    }


def _spec_of(channel: Channel) -> dict[str, Any]:
    """A stored channel back in API terms (what PATCH merges its changes into)."""
    inline_name, env_name = _CREDENTIAL.get(channel.kind, ("secret", "secret_env"))
    spec: dict[str, Any] = {
        "name": channel.name,
        "kind": channel.kind,
        "url": channel.url,
        "signing": channel.signing,
        "slack_channel": channel.slack_channel,
        "to": list(channel.email_to) if channel.email_to else None,
        "matchers": channel.matchers,
        "min_severity": channel.min_severity,
        "event_types": channel.event_types,
        "enabled": channel.enabled,
        "group_by": list(channel.group_by) if channel.group_by else None,
        "group_wait": channel.group_wait,
        "group_interval": channel.group_interval,
        "repeat_interval": channel.repeat_interval,
    }
    if channel.secret is not None or channel.kind in _CREDENTIAL:
        spec[inline_name] = channel.secret
        spec[env_name] = channel.secret_env
    return spec


def _destinations(columns: dict[str, Any], settings: Settings) -> list[tuple[str, int]]:
    """The hosts a channel's deliveries go to (``PRODSENTINEL_SMTP_HOST`` must be set for email)."""
    kind = columns["kind"]
    if kind == "email":
        if not settings.smtp_host:
            raise ValidationError("email channels need PRODSENTINEL_SMTP_HOST to be set.")
        return [(settings.smtp_host, settings.smtp_port)]
    url = columns["url"]
    if url is None:
        url = settings.pagerduty_url if kind == "pagerduty" else settings.slack_api_url
    parsed = httpx.URL(url)
    return [(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))]


async def _check_destinations(columns: dict[str, Any], settings: Settings) -> None:
    """The egress guard at create/update: a destination resolving to a refused address is a 422. A
    name that does not resolve (yet) is accepted; delivery checks again, every time."""
    for host, port in _destinations(columns, settings):
        try:
            await egress.resolve(host, port, block_private=settings.notify_block_private)
        except egress.BlockedDestinationError as exc:
            raise ValidationError(f"{exc}.") from None
        except OSError:
            continue


# --- presentation ---------------------------------------------------------------------------------


def _secret_hint(channel: Channel) -> str | None:
    """Enough to recognise which webhook secret is set, never enough to matter: the last 4 characters
    of a secret of 12+ characters, ``****`` for shorter ones. No hint of tokens or routing keys."""
    if not channel.secret or channel.kind != "webhook":
        return None
    return "****" + channel.secret[-4:] if len(channel.secret) >= 12 else "****"


def _display_url(url: str | None, kind: str) -> str | None:
    """The URL with any password masked; a Slack or Teams webhook URL (a credential itself: anyone who
    has it can post) shows only its scheme and host."""
    if url is None:
        return None
    try:
        parsed = httpx.URL(url)
    except Exception:
        return url
    if kind in {"slack", "teams"}:
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{parsed.host}{port}/****"
    if parsed.password:
        return str(parsed.copy_with(password="****"))
    return url


def _channel_out(channel: Channel, health: ChannelHealth | None = None) -> ChannelOut:
    env_of = {"webhook": "secret_env", "slack": "token_env", "pagerduty": "routing_key_env"}.get(channel.kind)
    return ChannelOut(
        id=channel.id,
        name=channel.name,
        kind=channel.kind,
        url=_display_url(channel.url, channel.kind),
        has_secret=bool(channel.secret or channel.secret_env),
        secret_hint=_secret_hint(channel),
        secret_env=channel.secret_env if env_of == "secret_env" else None,
        signing=channel.signing,
        token_env=channel.secret_env if env_of == "token_env" else None,
        slack_channel=channel.slack_channel,
        to=list(channel.email_to) if channel.email_to else None,
        routing_key_env=channel.secret_env if env_of == "routing_key_env" else None,
        matchers=[msgspec.convert(m, MatcherIn) for m in channel.matchers] if channel.matchers else None,
        min_severity=channel.min_severity,
        event_types=list(channel.event_types) if channel.event_types else list(vocabulary.EVENT_TYPES),
        enabled=channel.enabled,
        disabled_reason=channel.disabled_reason,
        disabled_at=channel.disabled_at,
        created_at=channel.created_at,
        updated_at=channel.updated_at,
        group_by=list(channel.group_by) if channel.group_by else None,
        group_wait=channel.group_wait,
        group_interval=channel.group_interval,
        repeat_interval=channel.repeat_interval,
        health=health,
    )


# --- the service ----------------------------------------------------------------------------------


class ChannelService(SQLAlchemyAsyncRepositoryService[Channel]):
    """A project's channels; every method is limited to ``project_id`` (another project's id is 404)."""

    repository_type = ChannelRepository
    repository: ChannelRepository

    async def _of_project(self, channel_id: UUID, project_id: UUID) -> Channel:
        channel = await self.get_one_or_none(id=channel_id, project_id=project_id)
        if channel is None:
            raise NotFoundError("Channel not found.")
        return channel

    async def _health(self, channel: Channel) -> ChannelHealth | None:
        reports = ReportService(session=self.repository.session)
        health = await reports.channel_health(project_id=channel.project_id, channel_id=channel.id)
        return health.get(channel.id)

    async def create_channel(
        self, *, project_id: UUID, data: ChannelCreate, settings: Settings
    ) -> ChannelOut:
        fields = _columns(_spec(data))
        await _check_destinations(fields, settings)
        try:
            channel = await self.create(Channel(project_id=project_id, **fields))
        except DuplicateKeyError:
            raise ConflictError(
                f"a channel named {fields['name']!r} already exists in this project."
            ) from None
        return _channel_out(channel, empty_health())

    async def update_channel(
        self, *, project_id: UUID, channel_id: UUID, data: ChannelUpdate, settings: Settings
    ) -> ChannelOut:
        """PATCH semantics: absent fields are kept, the result is checked as a whole (as at create).
        Setting one credential source clears the other unless both are given (422). ``enabled: true``
        on a disabled channel clears ``disabled_reason`` and restarts its failure count."""
        channel = await self._of_project(channel_id, project_id)
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if changes.get("matchers") is not None:
            changes["matchers"] = [msgspec.structs.asdict(m) for m in data.matchers or []]  # type: ignore[union-attr]
        spec = _spec_of(channel)
        for inline_name, env_name in _CREDENTIAL.values():
            if changes.get(inline_name) is not None and changes.get(env_name) is None:
                spec[env_name] = None
            if changes.get(env_name) is not None and changes.get(inline_name) is None:
                spec[inline_name] = None
        spec.update(changes)
        fields = _columns(spec)
        if {"url", "kind"} & changes.keys() or channel.kind == "email":
            await _check_destinations(fields, settings)
        was_enabled = channel.enabled
        for column, value in fields.items():
            setattr(channel, column, value)
        now = utcnow()
        if channel.enabled and not was_enabled:
            channel.disabled_reason = None
            channel.disabled_at = None
            channel.throttled_until = None
            channel.reenabled_at = now
        channel.updated_at = now
        try:
            channel = await self.update(channel)
        except DuplicateKeyError:
            raise ConflictError(f"a channel named {channel.name!r} already exists in this project.") from None
        return _channel_out(channel, await self._health(channel))

    async def send_test(self, *, project_id: UUID, channel_id: UUID) -> ChannelTestOut:
        """Write a TEST event through the outbox to this channel only (delivered like any event)."""
        channel = await self._of_project(channel_id, project_id)
        if not channel.enabled:
            raise ConflictError("the channel is disabled; enable it first.")
        session = self.repository.session
        assert isinstance(session, AsyncSession)
        event_id = await add_event(
            session,
            project_id=project_id,
            event_type="TEST",
            severity="low",
            payload={
                "channel": {"id": str(channel.id), "name": channel.name, "kind": channel.kind},
                "message": "ProdSentinel test notification",
            },
            channel_ids=[channel.id],
        )
        item = await OutboxRepository(session=session).get_one(
            project_id=project_id, event_id=event_id, channel_id=channel.id
        )
        return ChannelTestOut(event_id=event_id, outbox_id=item.id)

    async def delete_channel(self, *, project_id: UUID, channel_id: UUID) -> None:
        """Delete a channel and (by cascade) its outbox items and their attempts."""
        channel = await self._of_project(channel_id, project_id)
        await self.delete((channel.project_id, channel.id))

    async def get_channel(self, *, project_id: UUID, channel_id: UUID) -> ChannelOut:
        channel = await self._of_project(channel_id, project_id)
        return _channel_out(channel, await self._health(channel))

    async def list_channels(
        self, *, project_id: UUID, window_seconds: int = HEALTH_WINDOW
    ) -> list[ChannelOut]:
        """The project's channels with delivery health over the last ``window_seconds``."""
        check_window(window_seconds)
        channels = await self.repository.of_project(project_id)
        reports = ReportService(session=self.repository.session)
        health = await reports.channel_health(project_id=project_id, window_seconds=window_seconds)
        return [_channel_out(channel, health.get(channel.id)) for channel in channels]

    async def load_file(self, items: list[ChannelFileItem], settings: Settings) -> int:
        """Upsert the file's channels by (project, name), creating projects as needed. Idempotent, so
        every instance may run it at start. Channels missing from the file are left alone (the API may
        own them); omitted fields take their defaults."""
        async with ProjectService.new(session=self.repository.session) as projects:
            for item in items:
                project = await projects.get_or_create(item.project)
                values = _columns(_spec(item))
                await _check_destinations(values, settings)
                await self.repository.upsert_by_name(project_id=project.id, values=values)
        return len(items)


# --- channels from PRODSENTINEL_CHANNELS_FILE ------------------------------------------------------


class ChannelFileItem(ChannelCreate, forbid_unknown_fields=True, kw_only=True):
    """One item of the channels YAML list: a channel plus the name of its project (created if needed)."""

    project: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")]


def parse_channels_file(path: Path) -> list[ChannelFileItem]:
    """Read and validate the whole file; any problem is one SettingsError line naming the variable."""

    def fail(reason: str) -> SettingsError:
        return config_file_error(_FILE_VARIABLE, path, reason)

    raw = read_yaml_list(_FILE_VARIABLE, path, key="channels", what="channel")
    items: list[ChannelFileItem] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(raw):
        try:
            item = msgspec.convert(entry, ChannelFileItem)
            fields = _columns(_spec(item))
        except (msgspec.ValidationError, ValidationError) as exc:
            raise fail(f"item {index}: {exc}") from None
        project = item.project.strip()
        if (project, fields["name"]) in seen:
            raise fail(f"item {index}: duplicate channel {fields['name']!r} in project {project!r}")
        seen.add((project, fields["name"]))
        items.append(msgspec.structs.replace(item, project=project, name=fields["name"]))
    return items
