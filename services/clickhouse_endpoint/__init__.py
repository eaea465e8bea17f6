"""A ClickHouse HTTP endpoint backed by chDB, for running the stack without a ClickHouse server.

chDB embeds the ClickHouse engine in-process and allows one process per data directory, so
this package is that one process: it owns the directory and speaks ClickHouse's HTTP
interface well enough that unmodified clickhouse-connect (and curl) work against it.

Run it with ``python -m services.clickhouse_endpoint --host 127.0.0.1 --port 8123
--data-dir DIR [--users-file FILE]`` or call ``server.serve`` directly.
"""

from .server import serve

__all__ = ["serve"]
