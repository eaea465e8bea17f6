"""Command line entry point used by the stack manager (keep the flags stable)."""

from __future__ import annotations

import argparse
import sys

from .errors import ClickHouseError
from .server import SOCKET_TIMEOUT_S, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.clickhouse_endpoint",
        description="Serve the ClickHouse HTTP protocol from a chDB data directory.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8123,
        help="port to listen on (default 8123; 0 picks a free one)",
    )
    parser.add_argument(
        "--data-dir", required=True, help="chDB data directory (created if missing)"
    )
    parser.add_argument(
        "--users-file",
        default=None,
        help='JSON {"users": {name: {"password_sha256_hex": hex, "readonly": bool}}}; '
        "required unless --anonymous-default",
    )
    parser.add_argument(
        "--anonymous-default",
        action="store_true",
        help="without --users-file: let anyone in as a writable 'default' user without "
        "password, like a bare ClickHouse server (development only)",
    )
    parser.add_argument(
        "--socket-timeout",
        type=float,
        default=SOCKET_TIMEOUT_S,
        help="seconds a client may stay silent (idle keep-alive, half-sent body) before it is "
        f"disconnected (default {SOCKET_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    if args.socket_timeout <= 0:
        parser.error("--socket-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        serve(
            args.host,
            args.port,
            args.data_dir,
            args.users_file,
            args.anonymous_default,
            args.socket_timeout,
        )
    except ValueError as exc:  # a bad users file: say why instead of a traceback
        print(f"clickhouse_endpoint: {exc}", file=sys.stderr)
        return 2
    except ClickHouseError as exc:  # e.g. the data dir is held by another process
        print(f"clickhouse_endpoint: cannot open {args.data_dir}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(
            f"clickhouse_endpoint: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
