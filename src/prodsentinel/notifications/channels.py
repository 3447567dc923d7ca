"""Webhook channels: CRUD through the API and the declarative ``PRODSENTINEL_CHANNELS_FILE``.

A channel's constraints are declared on ``ChannelCreate``/``ChannelUpdate`` (``schemas.py``): msgspec
enforces them while decoding (the API answers 422, the channels file stops the start), and the OpenAPI
schema publishes them. This module keeps only what a schema cannot say (:func:`_check_url`,
:func:`_check_secrets`) and the normalisation of accepted values (name trimmed, event types deduplicated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import httpx
import msgspec
from advanced_alchemy.exceptions import DuplicateKeyError
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from prodsentinel.auth.services import ProjectService
from prodsentinel.lib import vocabulary
from prodsentinel.lib.config_files import config_file_error, read_yaml_list
from prodsentinel.lib.errors import ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import Channel
from prodsentinel.notifications.reports import HEALTH_WINDOW, ReportService, check_window, empty_health
from prodsentinel.notifications.repositories import ChannelRepository
from prodsentinel.notifications.schemas import ChannelCreate, ChannelHealth, ChannelOut, ChannelUpdate
from prodsentinel.settings import SettingsError

__all__ = ("ChannelFileItem", "ChannelService", "parse_channels_file")

_FILE_VARIABLE = "PRODSENTINEL_CHANNELS_FILE"


# --- what msgspec cannot check --------------------------------------------------------------------


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


def _check_secrets(secret: str | None, secret_env: str | None) -> None:
    """One signing key source at most: a JSON schema cannot say "not both" of two optional fields
    without a ``oneOf`` that generated clients handle badly."""
    if secret is not None and secret_env is not None:
        raise ValidationError("give either secret or secret_env, not both.")


def _name(name: str) -> str:
    """Names are compared trimmed (the schema's ``\\S`` pattern guarantees something is left)."""
    return name.strip()


def _event_types(event_types: list[str] | None) -> list[str] | None:
    """Duplicates dropped, order kept; None means every event type."""
    return None if event_types is None else list(dict.fromkeys(event_types))


def _fields(data: ChannelCreate) -> dict[str, Any]:
    """The stored values of a decoded channel, after the checks msgspec could not make."""
    _check_secrets(data.secret, data.secret_env)
    return {
        "name": _name(data.name),
        "url": _check_url(data.url),
        "secret": data.secret,
        "secret_env": data.secret_env,
        "min_severity": data.min_severity,
        "event_types": _event_types(data.event_types),
        "enabled": data.enabled,
    }


# --- presentation ---------------------------------------------------------------------------------


def _secret_hint(channel: Channel) -> str | None:
    """Enough to recognise which secret is set, never enough to matter: the last 4 characters of a
    secret of 12+ characters, ``****`` for shorter ones."""
    if not channel.secret:
        return None
    return "****" + channel.secret[-4:] if len(channel.secret) >= 12 else "****"


def _display_url(url: str) -> str:
    """The URL with any password in its userinfo masked (credentials are secrets too)."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return url
    if parsed.password:
        return str(parsed.copy_with(password="****"))
    return url


def _channel_out(channel: Channel, health: ChannelHealth | None = None) -> ChannelOut:
    return ChannelOut(
        id=channel.id,
        name=channel.name,
        url=_display_url(channel.url),
        has_secret=bool(channel.secret or channel.secret_env),
        secret_hint=_secret_hint(channel),
        secret_env=channel.secret_env,
        min_severity=channel.min_severity,
        event_types=list(channel.event_types) if channel.event_types else list(vocabulary.EVENT_TYPES),
        enabled=channel.enabled,
        created_at=channel.created_at,
        updated_at=channel.updated_at,
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

    async def create_channel(self, *, project_id: UUID, data: ChannelCreate) -> ChannelOut:
        fields = _fields(data)
        try:
            channel = await self.create(Channel(project_id=project_id, **fields))
        except DuplicateKeyError:
            raise ConflictError(
                f"a channel named {fields['name']!r} already exists in this project."
            ) from None
        return _channel_out(channel, empty_health())

    async def update_channel(self, *, project_id: UUID, channel_id: UUID, data: ChannelUpdate) -> ChannelOut:
        """PATCH semantics: absent fields are kept. Setting ``secret`` clears ``secret_env`` and vice
        versa unless both are given (422)."""
        channel = await self._of_project(channel_id, project_id)
        changes = msgspec.structs.asdict(data)
        changes = {name: value for name, value in changes.items() if value is not msgspec.UNSET}
        if changes.get("secret") is not None and changes.get("secret_env") is not None:
            _check_secrets(changes["secret"], changes["secret_env"])
        if "name" in changes:
            channel.name = _name(changes["name"])
        if "url" in changes:
            channel.url = _check_url(changes["url"])
        if "secret" in changes:
            channel.secret = changes["secret"]
            if changes["secret"] is not None:
                channel.secret_env = None
        if "secret_env" in changes:
            channel.secret_env = changes["secret_env"]
            if changes["secret_env"] is not None:
                channel.secret = None
        if "min_severity" in changes:
            channel.min_severity = changes["min_severity"]
        if "event_types" in changes:
            channel.event_types = _event_types(changes["event_types"])
        if "enabled" in changes:
            channel.enabled = changes["enabled"]
        channel.updated_at = utcnow()
        try:
            channel = await self.update(channel)
        except DuplicateKeyError:
            raise ConflictError(f"a channel named {channel.name!r} already exists in this project.") from None
        return _channel_out(channel, await self._health(channel))

    async def delete_channel(self, *, project_id: UUID, channel_id: UUID) -> None:
        """Delete a channel and (by cascade) its outbox items and their attempts."""
        channel = await self._of_project(channel_id, project_id)
        await self.delete(channel.id)

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

    async def load_file(self, items: list[ChannelFileItem]) -> int:
        """Upsert the file's channels by (project, name), creating projects as needed. Idempotent, so
        every instance may run it at start. Channels missing from the file are left alone (the API may
        own them); omitted fields take their defaults."""
        async with ProjectService.new(session=self.repository.session) as projects:
            for item in items:
                project = await projects.get_or_create(item.project)
                values = _fields(item)
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
            fields = _fields(item)
        except (msgspec.ValidationError, ValidationError) as exc:
            raise fail(f"item {index}: {exc}") from None
        project = item.project.strip()
        if (project, fields["name"]) in seen:
            raise fail(f"item {index}: duplicate channel {fields['name']!r} in project {project!r}")
        seen.add((project, fields["name"]))
        items.append(ChannelFileItem(project=project, **fields))
    return items
