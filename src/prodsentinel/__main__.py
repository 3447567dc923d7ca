"""The ``prodsentinel`` console script: Litestar's CLI bound to this app.

``run`` (granian, via litestar-granian), ``workers run`` (litestar-saq), ``database ...``
(advanced-alchemy) and ``keys ...`` (ours) all come from plugins of the same app.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from prodsentinel.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from prodsentinel.alerts.policy_file import PolicyFileItem


def main() -> None:
    os.environ.setdefault("LITESTAR_APP", "prodsentinel.app:create_app")
    args = sys.argv[1:]
    if args[:1] == ["workers"]:
        # Dedicated worker processes: the SAQ worker must run in its own process, not inside an app.
        os.environ["PRODSENTINEL_INPROCESS_WORKERS"] = "0"
    try:
        settings = _checked_settings(args)
    except SettingsError as exc:
        print(f"prodsentinel: {exc}", file=sys.stderr)
        sys.exit(2)
    if args[:1] == ["run"]:
        _apply_run_defaults(args, settings.host, settings.port)
        from prodsentinel.lib.lifeline import mark_supervisor

        mark_supervisor()  # granian's processes stop when this one dies, even by SIGKILL
    from litestar.cli.main import litestar_group

    litestar_group()


def _checked_settings(args: list[str]) -> Settings:
    """The settings and the policies and routing files they name, validated before any command runs.

    Every problem is a :class:`SettingsError` (one line naming the variable). ``run`` also checks the
    file's regular expressions in PostgreSQL here, so nothing is left to fail inside the server's start.
    """
    settings = get_settings()
    if args[:1] == ["run"] and not _wants_help(args):
        _refuse_served_port(args, settings)
    policies = _parse_policies_file(settings)
    _parse_routing_file(settings)
    if settings.embedded and _needs_database(args):
        _start_embedded_database(settings, worker_only=args[:1] == ["workers"])
        settings = get_settings()
    if policies and settings.policies_file and args[:1] == ["run"] and _needs_database(args):
        _check_policies_in_database(settings, settings.policies_file, policies)
    return settings


def _parse_policies_file(settings: Settings) -> list[PolicyFileItem]:
    if settings.policies_file is None:
        return []
    from prodsentinel.alerts.policy_file import parse_policies_file

    return parse_policies_file(settings.policies_file)


def _parse_routing_file(settings: Settings) -> None:
    """``PRODSENTINEL_ROUTING_FILE``'s inhibit rules, validated before any command (SettingsError)."""
    if settings.routing_file is None:
        return
    from prodsentinel.alerts.routing_file import parse_routing_file

    parse_routing_file(settings.routing_file)


def _check_policies_in_database(settings: Settings, path: Path, policies: list[PolicyFileItem]) -> None:
    from prodsentinel.alerts.policy_file import check_policies_file_in_database
    from prodsentinel.lib.database import resolve_direct_url

    asyncio.run(check_policies_file_in_database(resolve_direct_url(settings), path, policies))


def _wants_help(args: list[str]) -> bool:
    return bool({"-h", "--help"} & set(args))


def _refuse_served_port(args: list[str], settings: Settings) -> None:
    """Exit with one line when the address ``run`` would listen on is already taken.

    granian binds with SO_REUSEPORT, so a second ``run`` (or one beside an orphaned server) would
    otherwise start *next to* the first and share its traffic. Checked before the embedded database
    starts, so the refused ``run`` touches nothing.
    """
    if any(arg in {"--uds", "--fd"} or arg.startswith(("--uds=", "--fd=")) for arg in args):
        return
    host = _option(args, ("--host", "-H")) or settings.host
    port = int(_option(args, ("--port", "-p")) or settings.port)
    if _address_in_use(host, port):
        raise SettingsError(
            f"{host}:{port} is already in use (another `prodsentinel run`?): stop it or choose another "
            "PRODSENTINEL_PORT / --port"
        )


def _option(args: list[str], names: tuple[str, ...]) -> str | None:
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            return args[index + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def _address_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails with EADDRINUSE (SO_REUSEADDR: TIME_WAIT does not count)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False  # granian reports an unresolvable host itself
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


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
