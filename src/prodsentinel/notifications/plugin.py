"""App wiring of the notifications domain: channels from ``PRODSENTINEL_CHANNELS_FILE`` and the shared
webhook client's lifetime.

The file is parsed and validated when the app is built, so a bad file stops the start with one line
naming the variable (no traceback); it is upserted into the database at startup, after migrations.
"""

from __future__ import annotations

import sys

import structlog
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol

from prodsentinel.lib.database import SESSION_MAKER_STATE_KEY, session_scope
from prodsentinel.notifications import delivery
from prodsentinel.notifications.channels import ChannelFileItem, ChannelService, parse_channels_file
from prodsentinel.notifications.escalations import EscalationFileItem, EscalationService, parse_escalations
from prodsentinel.settings import Settings, SettingsError

__all__ = ("NotificationsPlugin",)

logger = structlog.get_logger("prodsentinel.notifications")


class NotificationsPlugin(InitPluginProtocol):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channel_items: list[ChannelFileItem] = []
        self.escalation_items: list[EscalationFileItem] = []

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        if self.settings.channels_file is not None:
            try:
                self.channel_items = parse_channels_file(self.settings.channels_file)
            except SettingsError as exc:
                print(f"prodsentinel: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        if self.settings.routing_file is not None:
            try:
                self.escalation_items = parse_escalations(self.settings.routing_file)
            except SettingsError as exc:
                print(f"prodsentinel: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        app_config.on_startup.append(self._load_channels)
        app_config.on_startup.append(self._load_escalations)
        app_config.on_shutdown.append(self._close_client)
        return app_config

    async def _load_channels(self, app: Litestar) -> None:
        if not self.channel_items:
            return
        async with session_scope(app.state[SESSION_MAKER_STATE_KEY]) as session:
            count = await ChannelService(session=session).load_file(self.channel_items, self.settings)
        logger.info("channels_loaded", count=count, file=str(self.settings.channels_file))

    async def _load_escalations(self, app: Litestar) -> None:
        """After the channels (a file's step may name a channel of the channels file)."""
        if not self.escalation_items:
            return
        async with session_scope(app.state[SESSION_MAKER_STATE_KEY]) as session:
            count = await EscalationService(session).load_file(self.escalation_items)
        logger.info("escalations_loaded", count=count, file=str(self.settings.routing_file))

    async def _close_client(self, app: Litestar) -> None:
        await delivery.close_client()
