"""Typed settings, read once from the environment (and `.env`) at start.

Every variable the service understands is listed in ``Settings``; `.env.example` mirrors it and a test keeps
the two in step. Invalid values raise :class:`SettingsError` carrying one line that names the variable, which
the CLI prints instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

__all__ = ("Settings", "SettingsError", "get_settings", "load_settings", "parse_rate_limit")

_RATE_UNITS = {"second": "second", "minute": "minute", "hour": "hour", "day": "day"}


class SettingsError(ValueError):
    """One invalid variable; ``str(error)`` is the single line shown to the operator."""


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse_positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _parse_non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _parse_address(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value):
        raise ValueError("expected a mail address like alerts@example.com")
    return value


def _parse_positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a positive number")
    return value


def _parse_partition_interval(raw: str) -> int:
    """``<N>h`` or ``<N>d`` (1 hour to 31 days) as seconds; partitions are aligned to multiples of it."""
    match = re.fullmatch(r"\s*(\d+)\s*([hd])\s*", raw.lower())
    if not match:
        raise ValueError("expected <hours>h or <days>d, e.g. 1d (daily partitions) or 6h")
    seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 86_400)
    if not 3600 <= seconds <= 31 * 86_400:
        raise ValueError("expected an interval from 1h to 31d")
    return seconds


def _parse_port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("expected a TCP port between 1 and 65535")
    return value


def _parse_log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _parse_log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "console"}:
        raise ValueError("expected json or console")
    return value


def _parse_database_url(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    scheme = value.split("://", 1)[0]
    if scheme not in {"postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg"}:
        raise ValueError("expected a postgresql:// URL")
    return value


def _parse_pooler(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"none", "pgbouncer"}:
        raise ValueError("expected none or pgbouncer")
    return value


def _parse_redis_url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^rediss?://", value):
        raise ValueError("expected a redis:// or rediss:// URL")
    return value


def _parse_url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^https?://", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _parse_jwt_secret(raw: str) -> str:
    value = raw.strip()
    if len(value) < 32:
        raise ValueError("expected at least 32 characters (e.g. the output of: openssl rand -base64 48)")
    return value


def _parse_origins(raw: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    for origin in origins:
        if origin == "*":
            raise ValueError("list the frontend origins: a session cookie cannot be sent to '*'")
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com (comma-separated)")
    return origins


def parse_rate_limit(raw: str) -> tuple[Literal["second", "minute", "hour", "day"], int]:
    """Parse ``"600/minute"`` into the ``(unit, count)`` pair Litestar's rate limiter takes."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour|day)\s*", raw)
    if not match or int(match.group(1)) <= 0:
        raise ValueError("expected <count>/<second|minute|hour|day>, e.g. 600/minute")
    return match.group(2), int(match.group(1))  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of the service. Field metadata ``env`` names the variable."""

    database_url: str | None = field(default=None, metadata=_env("DATABASE_URL"))
    #: ``pgbouncer``: DATABASE_URL points at PgBouncer in transaction pooling mode (no named prepared
    #: statements, no session state on it); see docs/scaling.md.
    database_pooler: str = field(default="none", metadata=_env("PRODSENTINEL_DATABASE_POOLER"))
    #: A direct (or session-pooled) connection for what needs a session of its own: migrations (a
    #: session advisory lock) and, without REDIS_URL, SAQ's PostgreSQL queue and live events (LISTEN).
    database_direct_url: str | None = field(default=None, metadata=_env("PRODSENTINEL_DATABASE_DIRECT_URL"))
    redis_url: str | None = field(default=None, metadata=_env("REDIS_URL"))
    log_level: str = field(default="INFO", metadata=_env("LOG_LEVEL"))
    log_format: str = field(default="json", metadata=_env("LOG_FORMAT"))
    otel_exporter_otlp_endpoint: str | None = field(
        default=None, metadata=_env("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    data_dir: Path = field(default=Path("./.prodsentinel"), metadata=_env("PRODSENTINEL_DATA_DIR"))
    host: str = field(default="127.0.0.1", metadata=_env("PRODSENTINEL_HOST"))
    port: int = field(default=8000, metadata=_env("PRODSENTINEL_PORT"))
    debug: bool = field(default=False, metadata=_env("PRODSENTINEL_DEBUG"))
    metrics_auth: bool = field(default=True, metadata=_env("PRODSENTINEL_METRICS_AUTH"))
    channels_file: Path | None = field(default=None, metadata=_env("PRODSENTINEL_CHANNELS_FILE"))
    policies_file: Path | None = field(default=None, metadata=_env("PRODSENTINEL_POLICIES_FILE"))
    routing_file: Path | None = field(default=None, metadata=_env("PRODSENTINEL_ROUTING_FILE"))
    retention_days_logs: int = field(default=14, metadata=_env("PRODSENTINEL_RETENTION_DAYS_LOGS"))
    retention_days_spans: int = field(default=14, metadata=_env("PRODSENTINEL_RETENTION_DAYS_SPANS"))
    retention_days_metrics: int = field(default=30, metadata=_env("PRODSENTINEL_RETENTION_DAYS_METRICS"))
    #: Width of one time partition of the signal tables, in seconds (env: ``1d``, ``6h``, ``7d``...).
    partition_interval_seconds: int = field(default=86_400, metadata=_env("PRODSENTINEL_PARTITION_INTERVAL"))
    rate_limit: str = field(default="600/minute", metadata=_env("PRODSENTINEL_RATE_LIMIT"))
    max_body_bytes: int = field(default=10 * 1024 * 1024, metadata=_env("PRODSENTINEL_MAX_BODY_BYTES"))
    max_batch_items: int = field(default=10_000, metadata=_env("PRODSENTINEL_MAX_BATCH_ITEMS"))
    ingest_max_pending_bytes: int = field(
        default=256 * 1024 * 1024, metadata=_env("PRODSENTINEL_INGEST_MAX_PENDING_BYTES")
    )
    incident_quiet_minutes: int = field(default=30, metadata=_env("PRODSENTINEL_INCIDENT_QUIET_MINUTES"))
    problem_window_seconds: int = field(default=600, metadata=_env("PRODSENTINEL_PROBLEM_WINDOW_SECONDS"))
    analysis_webhook_url: str | None = field(default=None, metadata=_env("PRODSENTINEL_ANALYSIS_WEBHOOK_URL"))
    analysis_webhook_secret: str | None = field(
        default=None, metadata=_env("PRODSENTINEL_ANALYSIS_WEBHOOK_SECRET")
    )
    alerts_interval_seconds: int = field(default=30, metadata=_env("PRODSENTINEL_ALERTS_INTERVAL_SECONDS"))
    notify_max_attempts: int = field(default=8, metadata=_env("PRODSENTINEL_NOTIFY_MAX_ATTEMPTS"))
    notify_backoff_seconds: float = field(default=2.0, metadata=_env("PRODSENTINEL_NOTIFY_BACKOFF_SECONDS"))
    notify_timeout_seconds: float = field(default=10.0, metadata=_env("PRODSENTINEL_NOTIFY_TIMEOUT_SECONDS"))
    notify_visibility_seconds: float | None = field(
        default=None, metadata=_env("PRODSENTINEL_NOTIFY_VISIBILITY_SECONDS")
    )
    notify_concurrency: int = field(default=50, metadata=_env("PRODSENTINEL_NOTIFY_CONCURRENCY"))
    notify_batch_size: int = field(default=200, metadata=_env("PRODSENTINEL_NOTIFY_BATCH_SIZE"))
    notify_block_private: bool = field(default=False, metadata=_env("PRODSENTINEL_NOTIFY_BLOCK_PRIVATE"))
    channel_disable_after_seconds: int = field(
        default=432_000, metadata=_env("PRODSENTINEL_CHANNEL_DISABLE_AFTER_SECONDS")
    )
    channel_disable_min_failures: int = field(
        default=20, metadata=_env("PRODSENTINEL_CHANNEL_DISABLE_MIN_FAILURES")
    )
    slack_api_url: str = field(default="https://slack.com/api", metadata=_env("PRODSENTINEL_SLACK_API_URL"))
    pagerduty_url: str = field(
        default="https://events.pagerduty.com/v2/enqueue", metadata=_env("PRODSENTINEL_PAGERDUTY_URL")
    )
    smtp_host: str | None = field(default=None, metadata=_env("PRODSENTINEL_SMTP_HOST"))
    smtp_port: int = field(default=587, metadata=_env("PRODSENTINEL_SMTP_PORT"))
    smtp_user: str | None = field(default=None, metadata=_env("PRODSENTINEL_SMTP_USER"))
    #: Never shown: left out of the repr, so a logged Settings cannot leak it.
    smtp_password: str | None = field(default=None, repr=False, metadata=_env("PRODSENTINEL_SMTP_PASSWORD"))
    smtp_from: str = field(default="prodsentinel@localhost", metadata=_env("PRODSENTINEL_SMTP_FROM"))
    smtp_starttls: bool = field(default=True, metadata=_env("PRODSENTINEL_SMTP_STARTTLS"))
    inprocess_workers: bool | None = field(default=None, metadata=_env("PRODSENTINEL_INPROCESS_WORKERS"))
    auto_migrate: bool | None = field(default=None, metadata=_env("PRODSENTINEL_AUTO_MIGRATE"))
    queue_name: str = field(default="prodsentinel", metadata=_env("PRODSENTINEL_QUEUE_NAME"))
    worker_concurrency: int = field(default=10, metadata=_env("PRODSENTINEL_WORKER_CONCURRENCY"))
    sse_keepalive_seconds: float = field(default=15.0, metadata=_env("PRODSENTINEL_SSE_KEEPALIVE_SECONDS"))
    #: Never shown. Unset: a random secret is generated once and kept in the database (every instance
    #: shares it); set, it must be at least 32 characters.
    jwt_secret: str | None = field(default=None, repr=False, metadata=_env("PRODSENTINEL_JWT_SECRET"))
    session_hours: int = field(default=12, metadata=_env("PRODSENTINEL_SESSION_HOURS"))
    cookie_secure: bool = field(default=False, metadata=_env("PRODSENTINEL_COOKIE_SECURE"))
    cors_origins: tuple[str, ...] = field(default=(), metadata=_env("PRODSENTINEL_CORS_ORIGINS"))
    login_limit_email: str = field(default="5/minute", metadata=_env("PRODSENTINEL_LOGIN_LIMIT_EMAIL"))
    login_limit_address: str = field(default="20/minute", metadata=_env("PRODSENTINEL_LOGIN_LIMIT_ADDRESS"))

    def __post_init__(self) -> None:
        if self.database_pooler == "pgbouncer" and (
            self.database_url is None or self.database_direct_url is None
        ):
            raise SettingsError(
                "invalid configuration: PRODSENTINEL_DATABASE_POOLER='pgbouncer' needs DATABASE_URL (the "
                "PgBouncer address) and PRODSENTINEL_DATABASE_DIRECT_URL (a direct connection for the "
                "migrations, SAQ's PostgreSQL queue and LISTEN/NOTIFY events, which need sessions)"
            )
        if (
            self.notify_visibility_seconds is not None
            and self.notify_visibility_seconds <= self.notify_timeout_seconds
        ):
            raise SettingsError(
                "invalid configuration: PRODSENTINEL_NOTIFY_VISIBILITY_SECONDS="
                f"{self.notify_visibility_seconds!r}: must exceed PRODSENTINEL_NOTIFY_TIMEOUT_SECONDS "
                f"({self.notify_timeout_seconds!r}), or a slow send could be claimed again while in flight"
            )

    @property
    def notify_visibility(self) -> float:
        """How long a claimed outbox item stays invisible to other dispatchers (crash recovery delay).

        Default: the send timeout plus 30 s, so a live worker always finishes (or times out) before its
        claim expires; only a dead worker's claim is ever taken over.
        """
        if self.notify_visibility_seconds is not None:
            return self.notify_visibility_seconds
        return self.notify_timeout_seconds + 30.0

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is configured and the bundled PostgreSQL is used."""
        return self.database_url is None

    @property
    def run_inprocess_workers(self) -> bool:
        """In-process SAQ workers default to on only in the embedded single-process setup."""
        return self.embedded if self.inprocess_workers is None else self.inprocess_workers

    @property
    def run_auto_migrate(self) -> bool:
        """Apply migrations at start: default on for the embedded database, off for a managed one."""
        return self.embedded if self.auto_migrate is None else self.auto_migrate

    @property
    def rate_limit_rule(self) -> tuple[Literal["second", "minute", "hour", "day"], int]:
        return parse_rate_limit(self.rate_limit)

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _parse_database_url,
    "database_pooler": _parse_pooler,
    "database_direct_url": _parse_database_url,
    "redis_url": _parse_redis_url,
    "log_level": _parse_log_level,
    "log_format": _parse_log_format,
    "otel_exporter_otlp_endpoint": _parse_url,
    "data_dir": lambda raw: Path(raw).expanduser(),
    "host": str.strip,
    "port": _parse_port,
    "debug": _parse_bool,
    "metrics_auth": _parse_bool,
    "channels_file": lambda raw: Path(raw).expanduser(),
    "policies_file": lambda raw: Path(raw).expanduser(),
    "routing_file": lambda raw: Path(raw).expanduser(),
    "retention_days_logs": _parse_positive_int,
    "retention_days_spans": _parse_positive_int,
    "retention_days_metrics": _parse_positive_int,
    "partition_interval_seconds": _parse_partition_interval,
    "rate_limit": lambda raw: (parse_rate_limit(raw), raw.strip())[1],
    "max_body_bytes": _parse_positive_int,
    "max_batch_items": _parse_positive_int,
    "ingest_max_pending_bytes": _parse_positive_int,
    "incident_quiet_minutes": _parse_positive_int,
    "problem_window_seconds": _parse_positive_int,
    "analysis_webhook_url": _parse_url,
    "analysis_webhook_secret": str,
    "alerts_interval_seconds": _parse_positive_int,
    "notify_max_attempts": _parse_positive_int,
    "notify_backoff_seconds": _parse_positive_float,
    "notify_timeout_seconds": _parse_positive_float,
    "notify_visibility_seconds": _parse_positive_float,
    "notify_concurrency": _parse_positive_int,
    "notify_batch_size": _parse_positive_int,
    "notify_block_private": _parse_bool,
    "channel_disable_after_seconds": _parse_non_negative_int,
    "channel_disable_min_failures": _parse_positive_int,
    "slack_api_url": lambda raw: _parse_url(raw).rstrip("/"),
    "pagerduty_url": _parse_url,
    "smtp_host": str.strip,
    "smtp_port": _parse_port,
    "smtp_user": str,
    "smtp_password": str,
    "smtp_from": _parse_address,
    "smtp_starttls": _parse_bool,
    "inprocess_workers": _parse_bool,
    "auto_migrate": _parse_bool,
    "queue_name": lambda raw: raw.strip() or "prodsentinel",
    "worker_concurrency": _parse_positive_int,
    "sse_keepalive_seconds": _parse_positive_float,
    "jwt_secret": _parse_jwt_secret,
    "session_hours": _parse_positive_int,
    "cookie_secure": _parse_bool,
    "cors_origins": _parse_origins,
    "login_limit_email": lambda raw: (parse_rate_limit(raw), raw.strip())[1],
    "login_limit_address": lambda raw: (parse_rate_limit(raw), raw.strip())[1],
}


def env_names() -> list[str]:
    """Every environment variable the service reads, in declaration order."""
    return [f.metadata["env"] for f in dataclasses.fields(Settings)]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment after loading `.env`)."""
    if environ is None:
        _load_dotenv()
        environ = os.environ
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(Settings):
        name = spec.metadata["env"]
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[spec.name] = _PARSERS[spec.name](raw)
        except ValueError as exc:
            raise SettingsError(f"invalid configuration: {name}={raw!r}: {exc}") from None
    return Settings(**values)


def _load_dotenv() -> None:
    try:
        import dotenv
    except ImportError:  # pragma: no cover - python-dotenv ships with litestar[standard]
        return
    dotenv.load_dotenv(override=False)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use (at start, never at import)."""
    return load_settings()
