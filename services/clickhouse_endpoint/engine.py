"""The chDB side: one embedded engine bound to the data directory, and cheap connections to it.

chDB 4.x hosts a single engine per process and lets any number of connections share it.
Each connection has its own settings, current database and temporary tables, and queries on
different connections run in parallel (the GIL is released). A single connection must not be
used by two threads at once, and while a streaming result is open on it, other queries on it
return nothing. So the endpoint opens a fresh connection per request (about 0.2 ms), keeps
one per session, and never shares one between concurrent requests.

Everything chDB raises is converted to ``ClickHouseError`` here so callers deal with one type.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from chdb import _chdb

from .errors import ClickHouseError
from .sql import is_plain_identifier, quote_identifier, quote_string


@dataclass
class Outcome:
    """What a finished statement produced, in the units X-ClickHouse-Summary reports."""

    data: bytes = b""
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, str]:
        # ClickHouse sends every counter as a string.
        return {
            "read_rows": str(self.read_rows),
            "read_bytes": str(self.read_bytes),
            "written_rows": str(self.written_rows),
            "written_bytes": str(self.written_bytes),
            "total_rows_to_read": str(self.read_rows),
            "result_rows": str(self.result_rows),
            "result_bytes": str(len(self.data)),
            "elapsed_ns": str(int(self.elapsed_s * 1e9)),
        }


def _outcome_from(result: Any) -> Outcome:
    data = result.bytes() or b""
    return Outcome(
        data=data,
        read_rows=int(result.storage_rows_read()),
        read_bytes=int(result.storage_bytes_read()),
        written_rows=int(result.rows_written()),
        written_bytes=int(result.bytes_written()),
        result_rows=int(result.rows_read()),
        elapsed_s=float(result.elapsed()),
    )


class ResultStream:
    """Blocks of a streaming query; ``close`` cancels the query if it has not finished."""

    def __init__(self, raw: Any, handle: Any) -> None:
        self._raw = raw
        self._handle = handle
        self._done = False
        self._yielded = False
        self.outcome = Outcome()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        while not self._done:
            try:
                result = self._raw.streaming_fetch_result(self._handle)
            except RuntimeError as exc:
                self._done = True
                raise ClickHouseError.from_engine(exc) from None
            if result is None:
                self._done = True
                break
            chunk = result.bytes() or b""
            if result.rows_read() == 0:
                # End of data. For an empty result, formats with a header (ArrowStream's
                # schema, CSVWithNames...) still deliver it in this last chunk.
                self._done = True
                if chunk and not self._yielded:
                    self._yielded = True
                    return chunk
                break
            self.outcome.result_rows += int(result.rows_read())
            self.outcome.read_rows += int(result.storage_rows_read())
            self.outcome.read_bytes += int(result.storage_bytes_read())
            self.outcome.elapsed_s += float(result.elapsed())
            if chunk:
                self._yielded = True
                return chunk
        raise StopIteration

    def close(self) -> None:
        if not self._done:
            self._done = True
            with contextlib.suppress(RuntimeError):
                self._raw.streaming_cancel_query(self._handle)


class InsertStream:
    """Feeds raw input-format bytes into a streaming INSERT; nothing is written until finish()."""

    def __init__(self, raw: Any, handle: Any) -> None:
        self._raw = raw
        self._handle = handle
        self._open = True

    def append(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._raw.insert_append(self._handle, data)
        except RuntimeError as exc:
            self.cancel()
            raise ClickHouseError.from_engine(exc) from None

    def finish(self) -> Outcome:
        self._open = False
        try:
            result = self._raw.insert_done(self._handle)
        except RuntimeError as exc:
            raise ClickHouseError.from_engine(exc) from None
        return Outcome(
            written_rows=int(result.rows_written()),
            written_bytes=int(result.bytes_written()),
            elapsed_s=float(result.elapsed()),
        )

    def cancel(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(RuntimeError):
                self._raw.insert_cancel(self._handle)


def _engine_text(text: str) -> bytes:
    """SQL text as the bytes the client sent.

    Request text is decoded with ``surrogateescape`` so that binary data inside it (a
    ``$name$`` heredoc holding a Parquet file, inline insert data) survives: ClickHouse parses
    bytes, not Unicode, and chDB takes bytes as well.
    """
    return text.encode("utf-8", "surrogateescape")


def _engine_params(params: Mapping[str, str] | None) -> dict[str, str]:
    """Bound parameter values for chDB, which takes them only as valid Unicode text.

    Undecodable bytes in a value become U+FFFD (ClickHouse reads parameter values as escaped
    text, so binary data does not belong there).
    """
    return {
        name: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        for name, value in (params or {}).items()
    }


def settings_statement(settings: Mapping[str, str]) -> str:
    """One ``SET`` statement assigning every value as a string literal.

    ClickHouse converts string literals to any setting type, so quoting everything avoids
    both type guessing and SQL injection through URL parameters. Names that are not plain
    identifiers cannot be settings and are rejected the way ClickHouse rejects unknown ones.
    """
    for name in settings:
        if not is_plain_identifier(name):
            raise ClickHouseError(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
    return "SET " + ", ".join(f"{name} = {quote_string(value)}" for name, value in settings.items())


class EngineConnection:
    """One chDB connection. Not thread-safe: one request (or session) at a time."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def execute(
        self, sql: str, fmt: str = "TabSeparated", params: Mapping[str, str] | None = None
    ) -> Outcome:
        try:
            result = self._raw.query(_engine_text(sql), fmt, params=_engine_params(params))
        except RuntimeError as exc:
            raise ClickHouseError.from_engine(exc) from None
        if result.has_error():
            raise ClickHouseError.from_engine(RuntimeError(result.error_message()))
        return _outcome_from(result)

    def stream(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> ResultStream:
        try:
            handle = self._raw.send_query(_engine_text(sql), fmt, params=_engine_params(params))
        except RuntimeError as exc:
            raise ClickHouseError.from_engine(exc) from None
        return ResultStream(self._raw, handle)

    def begin_insert(self, statement: str, fmt: str) -> InsertStream:
        try:
            handle = self._raw.send_insert(_engine_text(statement), fmt)
        except RuntimeError as exc:
            raise ClickHouseError.from_engine(exc) from None
        return InsertStream(self._raw, handle)

    def classify(self, sql: str) -> dict[str, Any]:
        """chDB's own parser-based verdict (query_class, statement_count) for a statement."""
        return dict(self._raw.classify_query(_engine_text(sql)))

    def apply_settings(self, settings: Mapping[str, str]) -> None:
        if settings:
            self.execute(settings_statement(settings))

    def read_settings(self, names: list[str]) -> dict[str, str]:
        """Current values of the named settings, as strings ``SET`` accepts back."""
        if not names:
            return {}
        columns = ", ".join(f"toString(getSetting({quote_string(name)}))" for name in names)
        values = json.loads(self.execute(f"SELECT {columns}", "JSONCompactEachRow").data)
        return dict(zip(names, values, strict=True))

    def restore_settings(self, values: Mapping[str, str], defaults: Iterable[str] = ()) -> None:
        """Set ``values`` back and reset ``defaults`` to their defaults, in one statement."""
        parts = [f"{name} = {quote_string(value)}" for name, value in values.items()]
        parts += [f"{name} = DEFAULT" for name in defaults]
        if parts:
            self.execute("SET " + ", ".join(parts))

    def current_database(self) -> str:
        return (
            self.execute("SELECT currentDatabase()", "TabSeparatedRaw").data.decode("utf-8").strip()
        )

    def current_timezone(self) -> str:
        return self.execute("SELECT timezone()", "TabSeparatedRaw").data.decode("utf-8").strip()

    def use_database(self, name: str) -> None:
        self.execute(f"USE {quote_identifier(name)}")

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(RuntimeError):
                raw.close()


@dataclass(frozen=True)
class ServerInfo:
    version: str
    timezone: str
    http_compression_default: bool
    setting_names: frozenset[str]
    # Lowercased names of the engine's table functions (the query policy refuses unknown ones).
    table_functions: frozenset[str] = frozenset()


class Engine:
    """Owns the chDB engine for one data directory for the life of the process.

    An "anchor" connection stays open the whole time because chDB shuts the engine down when
    its last connection closes; closing it (in ``close``) is what flushes and releases the
    data directory so another process can open it.
    """

    def __init__(self, data_dir: str) -> None:
        path = os.path.abspath(data_dir)
        os.makedirs(path, exist_ok=True)
        self.data_dir = path
        self._lock = threading.Lock()
        try:
            self._anchor: Any = _chdb.connect(path)
        except RuntimeError as exc:
            raise ClickHouseError.from_engine(exc) from None
        anchor = EngineConnection(self._anchor)
        row = anchor.execute(
            "SELECT version() AS version, timezone() AS timezone, "
            "getSetting('enable_http_compression') AS compression",
            "JSONEachRow",
        ).data
        info = json.loads(row)
        names = anchor.execute("SELECT name FROM system.settings", "TabSeparatedRaw").data
        functions = anchor.execute(
            "SELECT lower(name) FROM system.table_functions", "TabSeparatedRaw"
        ).data
        self.info = ServerInfo(
            version=str(info["version"]),
            timezone=str(info["timezone"]),
            http_compression_default=str(info["compression"]).lower() in ("1", "true"),
            setting_names=frozenset(names.decode("utf-8").split()),
            table_functions=frozenset(functions.decode("utf-8").split()),
        )

    def connect(self) -> EngineConnection:
        with self._lock:
            if self._anchor is None:
                raise ClickHouseError(210, "The endpoint is shutting down", "NETWORK_ERROR")
            try:
                return EngineConnection(_chdb.connect(self.data_dir))
            except RuntimeError as exc:
                raise ClickHouseError.from_engine(exc) from None

    def close(self) -> None:
        with self._lock:
            anchor, self._anchor = self._anchor, None
        if anchor is not None:
            with contextlib.suppress(RuntimeError):
                anchor.close()
