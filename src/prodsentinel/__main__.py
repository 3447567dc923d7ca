"""The ``prodsentinel`` console script: Litestar's CLI bound to this app.

``run`` (granian, via litestar-granian), ``workers run`` (litestar-saq), ``database ...``
(advanced-alchemy) and ``keys ...`` (ours) all come from plugins of the same app.
"""

from __future__ import annotations

import os
import sys

from prodsentinel.settings import Settings, SettingsError, get_settings


def main() -> None:
    os.environ.setdefault("LITESTAR_APP", "prodsentinel.app:create_app")
    args = sys.argv[1:]
    if args[:1] == ["workers"]:
        # Dedicated worker processes: the SAQ worker must run in its own process, not inside an app.
        os.environ["PRODSENTINEL_INPROCESS_WORKERS"] = "0"
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"prodsentinel: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.embedded and _needs_database(args):
        _start_embedded_database(settings, worker_only=args[:1] == ["workers"])
    if args[:1] == ["run"]:
        _apply_run_defaults(args, settings.host, settings.port)
    from litestar.cli.main import litestar_group

    litestar_group()


def _needs_database(args: list[str]) -> bool:
    return (
        bool(args) and not {"-h", "--help", "--version"} & set(args) and args[0] not in {"version", "schema"}
    )


def _start_embedded_database(settings: Settings, *, worker_only: bool) -> None:
    """Start (or attach to) the embedded PostgreSQL here, in the main process, and pass it on.

    Children inherit ``DATABASE_URL``; the embedded defaults (migrate at start, in-process workers) are
    passed explicitly because the children no longer see an unset ``DATABASE_URL``.
    """
    from prodsentinel.embedded import embedded_database_url

    os.environ["DATABASE_URL"] = embedded_database_url(settings.data_dir)
    os.environ.setdefault("PRODSENTINEL_AUTO_MIGRATE", "1")
    os.environ.setdefault("PRODSENTINEL_INPROCESS_WORKERS", "0" if worker_only else "1")
    get_settings.cache_clear()


def _apply_run_defaults(args: list[str], host: str, port: int) -> None:
    """PRODSENTINEL_HOST/PORT are the defaults of ``run``; explicit flags still win."""
    if not any(arg in {"--host", "-H"} or arg.startswith("--host=") for arg in args):
        sys.argv += ["--host", host]
    if not any(arg in {"--port", "-p"} or arg.startswith("--port=") for arg in args):
        sys.argv += ["--port", str(port)]


if __name__ == "__main__":
    main()
