"""A ClickHouse HTTP endpoint backed by chDB, for running the stack without a ClickHouse server.

chDB embeds the ClickHouse engine in-process and allows one process per data directory, so
this package is that one process: it owns the directory and speaks ClickHouse's HTTP
interface well enough that unmodified clickhouse-connect (and curl) work against it.

Run it with ``python -m services.clickhouse_endpoint --host 127.0.0.1 --port 8123
--data-dir DIR --users-file FILE`` or call ``server.serve`` directly.

Supported: every clickhouse-connect call (query/insert in Native, Arrow and DataFrame
flavours, streaming, raw_query/raw_insert, command, external data), HTTP compression both
ways (lz4, zstd, gzip, deflate), chunked bodies and streamed responses, URL settings scoped
to one request, sessions (SET, USE and temporary tables persist), ``{name:Type}`` query
parameters (bound natively by chDB), users with read-only enforcement, ClickHouse-shaped
errors and headers, ``max_query_size``.

Hardened: passwords stored as SHA-256 (``password_sha256_hex``), no user without password unless
configured, failed logins throttled (``login_throttle``), control characters in header fields
and URL parameters and ambiguous body framing refused with 400, silent clients disconnected.

Not supported: ClickHouse's own block compression (``compress=1``/``decompress=1``), brotli,
the native TCP protocol, ``/play`` and other HTTP handlers besides ``/``, ``/ping`` and
``/replicas_status``, progress headers, SQL users/grants (users come only from the users
file, and chDB's ``currentUser()`` is always ``default``), and multi-statement requests.
"""

from .server import serve

__all__ = ["serve"]
