"""Running one HTTP query against chDB with ClickHouse's semantics.

This is where the request's pieces meet: the statement is read off the body (splitting an
INSERT from its inline data), checked against the user's rights, given a connection with the
request's settings, executed, and returned as a ``Reply`` that the HTTP layer sends either in
one piece or as a stream.

Settings isolation: URL settings apply to one request only. Fresh per-request connections
get that for free; on a session's long-lived connection the previous values are read first
and put back when the reply is closed, so only ``SET`` statements persist in a session.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain

from . import policy, sql
from .auth import User
from .engine import Engine, EngineConnection, Outcome
from .errors import ClickHouseError, readonly_error
from .policy import readonly_setting_allowed
from .processes import Registry, RunningQuery
from .request import QueryInput as _Input
from .request import RequestBody, is_true, query_size_limit, read_input, split_params
from .sessions import Session, SessionManager, parse_timeout

log = logging.getLogger(__name__)

__all__ = [
    "Executor",
    "HttpQuery",
    "Reply",
    "content_type_for",
    "read_input",
    "readonly_setting_allowed",
]

# HTTP-server settings that clients (clickhouse-connect among them) send routinely. They mean
# nothing to an embedded engine, so if a chDB build does not know one it is dropped instead of
# failing every request with UNKNOWN_SETTING. Any other unknown setting is still an error.
HTTP_ONLY_SETTINGS = frozenset(
    {
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
        "http_response_buffer_size",
        "http_wait_end_of_query",
        "http_write_exception_in_output_format",
        "date_time_input_format",
        "cast_string_to_dynamic_use_inference",
    }
)

# Output formats whose per-block chunks from chDB concatenate into one valid document.
# (chDB restarts the writer per streamed block, so formats with a header, footer or names
# row are produced in one piece instead.)
STREAMABLE_FORMATS = frozenset(
    name.lower()
    for name in (
        "Native",
        "TabSeparated",
        "TSV",
        "TabSeparatedRaw",
        "TSVRaw",
        "Raw",
        "CSV",
        "JSONEachRow",
        "JSONLines",
        "NDJSON",
        "JSONCompactEachRow",
        "JSONStringsEachRow",
        "JSONCompactStringsEachRow",
        "RowBinary",
        "Values",
        "TSKV",
        "LineAsString",
    )
)

_CONTENT_TYPES = (
    ("tabseparated", "text/tab-separated-values; charset=UTF-8"),
    ("tsv", "text/tab-separated-values; charset=UTF-8"),
    ("csvwithnames", "text/csv; charset=UTF-8; header=present"),
    ("csv", "text/csv; charset=UTF-8; header=absent"),
    ("json", "application/json; charset=UTF-8"),
    ("ndjson", "application/json; charset=UTF-8"),
    ("xml", "application/xml; charset=UTF-8"),
    ("native", "application/octet-stream"),
    ("rowbinary", "application/octet-stream"),
    ("arrow", "application/octet-stream"),
    ("parquet", "application/octet-stream"),
    ("orc", "application/octet-stream"),
    ("avro", "application/octet-stream"),
    ("protobuf", "application/octet-stream"),
    ("msgpack", "application/octet-stream"),
    ("bson", "application/octet-stream"),
)


def content_type_for(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    lowered = fmt.lower()
    for prefix, content_type in _CONTENT_TYPES:
        if lowered.startswith(prefix):
            return content_type
    return "text/plain; charset=UTF-8"


@dataclass
class HttpQuery:
    """The HTTP-level inputs of one query request."""

    method: str
    params: dict[str, str]
    body: RequestBody | None
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Reply:
    """A statement's result, ready to send. ``close`` releases its connection/session."""

    format: str | None = None
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    outcome: Outcome = field(default_factory=Outcome)
    timezone: str = "UTC"
    statement_kind: str = ""
    _cleanup: ExitStack = field(default_factory=ExitStack, repr=False)

    def close(self) -> None:
        self._cleanup.close()


# How long the list of databases is trusted before it is read again (it is also re-read after
# any CREATE/DROP/RENAME/ATTACH/DETACH run through this endpoint).
DATABASES_TTL_S = 2.0


class Executor:
    def __init__(
        self,
        engine: Engine,
        sessions: SessionManager,
        grants: Mapping[str, policy.Grants] | None = None,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.grants: Mapping[str, policy.Grants] = dict(grants or {})
        self.registry = Registry()
        self._databases: frozenset[str] = frozenset()
        self._databases_read_at = float("-inf")
        self._databases_lock = threading.Lock()

    def grants_for(self, user: User) -> policy.Grants:
        grants = self.grants.get(user.name)
        if grants is None:
            return policy.Grants(None, policy.default_limits(user.readonly))
        return grants

    def run(self, request: HttpQuery, user: User) -> Reply:
        stack = ExitStack()
        try:
            reply = self._run(request, user, stack)
        except ClickHouseError as exc:
            stack.close()
            self.registry.record_error(user.name, exc.name, exc.code, exc.message)
            raise
        except BaseException:
            stack.close()
            raise
        reply._cleanup = stack
        return reply

    def _known_databases(self, conn: EngineConnection) -> frozenset[str]:
        with self._databases_lock:
            if time.monotonic() - self._databases_read_at < DATABASES_TTL_S:
                return self._databases
        names = conn.execute("SELECT name FROM system.databases", "TabSeparatedRaw").data
        databases = frozenset(names.decode("utf-8").splitlines())
        with self._databases_lock:
            self._databases, self._databases_read_at = databases, time.monotonic()
        return databases

    def _forget_databases(self) -> None:
        with self._databases_lock:
            self._databases_read_at = float("-inf")

    # -- checks -----------------------------------------------------------------------------

    def _check_request(
        self,
        request: HttpQuery,
        user: User,
        source: _Input,
        settings: Mapping[str, str],
        readonly_reason: str | None,
    ) -> None:
        params = request.params
        if is_true(params.get("compress")) or is_true(params.get("decompress")):
            raise ClickHouseError(
                48,
                "ClickHouse native block compression (compress=1/decompress=1) is not supported by "
                "this endpoint; use HTTP Content-Encoding and Accept-Encoding instead",
                "NOT_IMPLEMENTED",
            )
        statement = source.statement
        if not statement.text:
            raise ClickHouseError(62, "Empty query", "SYNTAX_ERROR")
        if source.insert is None and len(sql.split_statements(statement.text)) > 1:
            raise ClickHouseError(62, "Multi-statements are not allowed", "SYNTAX_ERROR")
        if statement.kills_host:
            raise ClickHouseError(
                497,
                f"{user.name}: Not enough privileges. {' '.join(statement.keywords[:2])} is disabled on this "
                "endpoint because it would terminate the process hosting chDB",
                "ACCESS_DENIED",
            )
        grants = self.grants_for(user)
        for name, value in settings.items():
            policy.check_setting(user.name, user.readonly, grants.limits, name, value)
        policy.check_format(user.name, params.get("default_format"))
        if source.insert is not None:
            policy.check_format(user.name, source.insert.input_format)
        for name in request.files:
            policy.check_format(user.name, params.get(f"{name}_format"))
        if readonly_reason is not None:
            self._check_read_statement(statement, source.insert is not None, user, readonly_reason)

    def _check_read_statement(
        self, statement: sql.Statement, is_insert: bool, user: User, reason: str
    ) -> None:
        def refuse() -> ClickHouseError:
            return _readonly_refusal(user, reason)

        if is_insert:
            raise refuse()
        if statement.kind == "USE":
            return
        if statement.kind == "SET":
            if sql.parse_set(statement.text) is None:
                raise refuse()
            return
        if not statement.is_read:
            raise refuse()

    def _check_with_engine(
        self, conn: EngineConnection, source: _Input, user: User, readonly_reason: str | None
    ) -> None:
        """Second opinion from chDB's real parser on what the statement does."""
        verdict = conn.classify(source.insert.statement if source.insert else source.statement.text)
        if int(verdict.get("statement_count", 0)) > 1:
            raise ClickHouseError(62, "Multi-statements are not allowed", "SYNTAX_ERROR")
        query_class = getattr(verdict.get("query_class"), "name", str(verdict.get("query_class")))
        if (
            readonly_reason is not None
            and source.statement.is_read
            and query_class not in ("READ_ONLY", "UNKNOWN")
        ):
            raise _readonly_refusal(user, readonly_reason)

    # -- query policy -----------------------------------------------------------------------

    def _check_policy(
        self, user: User, grants: policy.Grants, source: _Input, binds: Mapping[str, str]
    ) -> tuple[_Input, policy.Scan]:
        """Refuse what reaches outside the engine; check SET/SETTINGS and databases named.

        ``{name:Identifier}`` parameters are substituted first so the names they carry are
        checked; a statement that had any then runs in its substituted form.
        """
        statement = source.statement
        if statement.kind == "SHOW" and source.insert is None:
            shown = [k for k in statement.keywords[1:4] if k not in ("FULL", "CREATE")]
            if shown[:2] == ["SETTINGS", "PROFILES"] or shown[:2] == ["SETTINGS", "PROFILE"]:
                shown = ["PROFILES"]
            if shown[:1] == ["PROCESSLIST"]:
                # Same as SELECT * FROM system.processes, which the per-user view replaces.
                statement = sql.parse_statement("SELECT * FROM system.processes")
                source = _Input(statement, None, source.data)
            elif shown[:1] == ["DATABASES"] and grants.databases is not None:
                # Only the granted databases (system.databases is filtered per user).
                if len(sql.significant_tokens(statement.text)) > 2:
                    raise policy.access_denied(
                        user.name, "SHOW DATABASES takes no clauses here; query system.databases"
                    )
                statement = sql.parse_statement("SELECT name FROM system.databases")
                source = _Input(statement, None, source.data)
            elif shown[:1] and shown[0] in policy.REFUSED_SHOW:
                raise policy.access_denied(
                    user.name, f"SHOW {shown[0]} reveals users, grants or server storage"
                )
        original = source.insert.statement if source.insert is not None else statement.text
        text = policy.substitute_identifier_parameters(original, binds)
        if text != original and source.insert is None:
            statement = sql.Statement(text, statement.keywords)
            source = _Input(statement, None, source.data)
        tokens = sql.significant_tokens(text)
        scan = policy.scan_statement(
            user.name,
            tokens,
            text,
            self.engine.info.table_functions,
            restricted=grants.databases is not None,
        )
        assignments = [(a.name, a.value_sql) for a in sql.parse_set(text) or []]
        for name, value in assignments + scan.settings:
            policy.check_setting(user.name, user.readonly, grants.limits, name, value)
        if statement.kind == "USE":
            target = sql.parse_use(statement.text)
            if target is not None:
                _check_database(user, grants, target)
        return source, scan

    def _apply_database_policy(
        self,
        conn: EngineConnection,
        user: User,
        grants: policy.Grants,
        source: _Input,
        scan: policy.Scan,
    ) -> tuple[_Input, sql.Statement]:
        """Check databases named by the statement; swap in per-user system views.

        ``system.processes``/``system.errors`` become the user's own entries for everyone;
        tables holding other users' query texts are refused to everyone; a user with
        database grants reads only its databases and the system tables clients need, with
        ``system.tables``/``columns``/... filtered to its databases.
        """
        statement = source.statement
        known = self._known_databases(conn)
        for name in scan.show_names:
            if name in known and not grants.may_use(name):
                raise policy.access_denied(user.name, f"Database {name} is not granted")
        replacements: list[tuple[int, int, str]] = []
        for database, table, first, last in scan.qualified:
            if database not in known:
                continue  # a table alias or a tuple, not a database
            if database == "system":
                lowered = table.lower()
                if lowered in policy.QUERY_TEXT_TABLES:
                    raise policy.access_denied(
                        user.name, f"system.{table} shows other users' queries or secrets"
                    )
                if lowered == "processes":
                    view = self.registry.processes_view(user.name)
                elif lowered == "errors":
                    view = self.registry.errors_view(user.name)
                elif grants.databases is None or lowered in policy.SAFE_SYSTEM_TABLES:
                    continue
                elif lowered in policy.FILTERED_SYSTEM_TABLES:
                    column = "name" if lowered == "databases" else "database"
                    allowed = ", ".join(sql.quote_string(d) for d in sorted(grants.databases))
                    view = f"(SELECT * FROM system.{lowered} WHERE {column} IN ({allowed}))"
                else:
                    raise policy.access_denied(user.name, f"system.{table} is not granted")
                replacements.append((first.start, last.end, view))
            elif not grants.may_use(database):
                raise policy.access_denied(user.name, f"Database {database} is not granted")
        if not replacements or source.insert is not None:
            if replacements:
                raise policy.access_denied(user.name, "system views cannot be inserted from")
            return source, statement
        text = statement.text
        for start, end, view in sorted(replacements, reverse=True):
            text = text[:start] + view + text[end:]
        rewritten = sql.Statement(text, statement.keywords)
        return _Input(rewritten, None, source.data), rewritten

    def _limit_settings(
        self, grants: policy.Grants, settings: Mapping[str, str], session: Session | None
    ) -> dict[str, str]:
        """The user's limits, unless this request or its session already set them lower."""
        chosen = set(settings)
        if session is not None:
            chosen |= set(session.settings) | session.set_names
        return {k: v for k, v in grants.limits.settings().items() if k not in chosen}

    def _kill(self, user: User, kill: KillRequest, params: Mapping[str, str]) -> Reply:
        """KILL QUERY WHERE query_id = ...: cancels the user's own matching queries only.

        chDB's own KILL would reach every user's queries, so it never gets the user's statement.
        The registry marks the entries (a streamed query stops at its next block), and an
        internal chDB KILL matching each entry's secret marker interrupts a query that is
        computing: measured, ``SELECT sum(number) FROM numbers(1e11)`` stops within ~40 ms,
        whereas chDB's streaming cancel waits for the running fetch to finish (22 s).
        With ``TEST`` the matching queries are only listed, as in ClickHouse.
        """
        policy.check_format(user.name, kill.format)
        policy.check_format(user.name, params.get("default_format"))
        if kill.test:
            found = [q for q in self.registry.own(user.name) if q.query_id in kill.query_ids]
        else:
            found = self.registry.kill(user.name, kill.query_ids)
        conn = self.engine.connect()
        try:
            for entry in [] if kill.test else found:
                marker = sql.quote_string(entry.marker)
                with contextlib.suppress(ClickHouseError):
                    conn.execute(f"KILL QUERY WHERE endsWith(query, {marker}) ASYNC")
            fmt = kill.format or params.get("default_format") or "TabSeparated"
            status = "waiting" if kill.test else "cancel_requested"
            body = conn.execute(_kill_result_query(status, found), fmt).data
        finally:
            conn.close()
        return Reply(format=fmt, body=body, statement_kind="KILL")

    # -- execution --------------------------------------------------------------------------

    def _run(self, request: HttpQuery, user: User, stack: ExitStack) -> Reply:
        params = request.params
        settings, binds = split_params(params)
        known = self.engine.info.setting_names
        settings = {k: v for k, v in settings.items() if k in known or k not in HTTP_ONLY_SETTINGS}
        for name in request.files:  # <name>_structure etc. describe external tables
            for suffix in EXTERNAL_TABLE_PARAM_SUFFIXES:
                settings.pop(name + suffix, None)
        lock_level, readonly_reason = _readonly_mode(user, request.method, settings)
        source = read_input(
            params.get("query"), request.body, query_size_limit(settings, user.readonly)
        )
        grants = self.grants_for(user)
        kill = _kill_query_ids(source.statement) if source.insert is None else None
        if kill is not None:
            return self._kill(user, kill, params)
        self._check_request(request, user, source, settings, readonly_reason)
        source, scan = self._check_policy(user, grants, source, binds)
        statement = source.statement

        session: Session | None = None
        session_id = params.get("session_id") or None
        if session_id:
            timeout = parse_timeout(params.get("session_timeout"))
            if is_true(params.get("close_session")):
                # Registered first so it runs after the session lock below is released.
                stack.callback(self.sessions.close_session, user, session_id)
            session = stack.enter_context(
                self.sessions.acquire(
                    user, session_id, timeout, is_true(params.get("session_check"))
                )
            )

        database = params.get("database") or None
        if (
            database is None
            and grants.databases is not None
            and (session is None or session.database is None)
        ):
            database = grants.default_database
        for name in (database, session.database if session else None):
            if name:
                _check_database(user, grants, name)
        settings = {**self._limit_settings(grants, settings, session), **settings}
        on_session_connection = session is not None and session.connection is not None
        if session is not None and session.connection is not None:
            conn = session.connection
            self._overlay_request_state(session, statement, settings, database, stack)
        else:
            conn = self.engine.connect()
            stack.callback(conn.close)
            if session is not None:
                conn.apply_settings(session.settings)
                if session.database:
                    conn.use_database(session.database)
            conn.apply_settings(settings)
            if database:
                conn.use_database(database)

        if request.files:
            self._load_external_tables(conn, request.files, params, stack)
        self._check_with_engine(conn, source, user, readonly_reason)
        if scan.qualified or scan.show_names:
            source, statement = self._apply_database_policy(conn, user, grants, source, scan)
        entry = RunningQuery(
            user.name,
            params.get("query_id") or str(uuid.uuid4()),
            statement.text,
            database or (session.database if session and session.database else ""),
        )
        stack.enter_context(self.registry.running(entry))
        timezone = self._timezone(conn, settings, session) if statement.returns_rows else ""

        if user.readonly:
            remembered = self._remember_readonly_session_state(conn, statement, session)
            if remembered is not None:
                return Reply(outcome=remembered, timezone=timezone, statement_kind=statement.kind)
        if lock_level is not None and not on_session_connection:
            # chDB itself now refuses any write, whatever our own checks missed.
            conn.execute(f"SET readonly = {sql.quote_string(lock_level)}")

        reply = self._execute(conn, source, binds, params, stack, entry)
        if statement.kind in ("CREATE", "DROP", "RENAME", "ATTACH", "DETACH", "EXCHANGE"):
            self._forget_databases()
        reply.timezone = timezone
        reply.statement_kind = statement.kind
        return reply

    def _load_external_tables(
        self,
        conn: EngineConnection,
        files: Mapping[str, bytes],
        params: Mapping[str, str],
        stack: ExitStack,
    ) -> None:
        """ClickHouse "external data": each uploaded file becomes a temporary table.

        They live on the request's connection and are dropped when the reply closes, so on a
        session connection they do not outlive the request either.
        """
        for name, data in files.items():
            columns = external_table_columns(name, params)
            table = sql.quote_identifier(name)
            conn.execute(f"CREATE TEMPORARY TABLE {table} ({columns})")
            stack.callback(_quietly, conn.execute, f"DROP TEMPORARY TABLE IF EXISTS {table}")
            inserter = conn.begin_insert(
                f"INSERT INTO {table}", params.get(f"{name}_format") or "TabSeparated"
            )
            inserter.append(data)
            inserter.finish()

    def _overlay_request_state(
        self,
        session: Session,
        statement: sql.Statement,
        settings: Mapping[str, str],
        database: str | None,
        stack: ExitStack,
    ) -> None:
        """Apply URL settings/database to a session connection for this request only.

        Settings the session never changed with ``SET`` are still at their defaults, so they
        are put back with ``SET x = DEFAULT`` without asking chDB first; only the rest need
        their current value read. Settings assigned by this request's own ``SET`` stay.
        """
        conn = session.connection
        assert conn is not None
        assigned: set[str] = set()
        if statement.kind == "SET":
            assigned = {a.name for a in sql.parse_set(statement.text) or []}
        if settings:
            overlaid = [name for name in settings if name not in assigned]
            previous = conn.read_settings([n for n in overlaid if n in session.set_names])
            defaults = [n for n in overlaid if n not in session.set_names]
            stack.callback(_quietly, conn.restore_settings, previous, defaults)
            conn.apply_settings(settings)
        session.set_names.update(assigned)
        if database:
            if statement.kind != "USE":
                stack.callback(_quietly, conn.use_database, conn.current_database())
            conn.use_database(database)

    def _timezone(
        self, conn: EngineConnection, settings: Mapping[str, str], session: Session | None
    ) -> str:
        """The zone the client must decode DateTime values in (X-ClickHouse-Timezone)."""
        if settings.get("session_timezone"):
            return settings["session_timezone"]
        if session is not None:
            if session.settings.get("session_timezone"):
                return session.settings["session_timezone"]
            if "session_timezone" in session.set_names:
                return conn.current_timezone()
        return self.engine.info.timezone

    def _remember_readonly_session_state(
        self, conn: EngineConnection, statement: sql.Statement, session: Session | None
    ) -> Outcome | None:
        """SET/USE by a read-only user: run them now (before readonly=1) and keep the result.

        Returns None for every other statement.
        """
        if statement.kind == "SET":
            assignments = sql.parse_set(statement.text) or []
            outcome = conn.execute(statement.text)
            if session is not None:
                session.settings.update(conn.read_settings([a.name for a in assignments]))
            return outcome
        if statement.kind == "USE":
            outcome = conn.execute(statement.text)
            if session is not None:
                session.database = conn.current_database()
            return outcome
        return None

    def _execute(
        self,
        conn: EngineConnection,
        source: _Input,
        binds: Mapping[str, str],
        params: Mapping[str, str],
        stack: ExitStack,
        entry: RunningQuery,
    ) -> Reply:
        statement = source.statement
        if source.insert is not None and binds and _has_placeholder(source.insert.statement):
            return Reply(outcome=_insert_with_parameters(conn, source.insert, source.data, binds))
        if source.insert is not None:
            inserter = conn.begin_insert(source.insert.statement, source.insert.input_format)
            try:
                for chunk in source.data:
                    inserter.append(chunk)
            except BaseException:
                inserter.cancel()
                raise
            return Reply(outcome=inserter.finish())

        if not statement.returns_rows:
            return Reply(outcome=conn.execute(statement.text + entry.marker, "TabSeparated", binds))

        fmt = sql.output_format(statement.text) or params.get("default_format") or "TabSeparated"
        wait = is_true(params.get("wait_end_of_query"))
        if statement.streamable and not wait:
            lowered = fmt.lower()
            if lowered in STREAMABLE_FORMATS:
                return self._stream_reply(conn, statement, fmt, binds, stack, None, entry)
            if lowered == "arrowstream":
                return self._stream_reply(
                    conn, statement, fmt, binds, stack, _merge_arrow_streams, entry
                )
        outcome = _cancelled_as_394(entry, conn.execute, statement.text + entry.marker, fmt, binds)
        return Reply(format=fmt, body=outcome.data, outcome=outcome)

    def _stream_reply(
        self,
        conn: EngineConnection,
        statement: sql.Statement,
        fmt: str,
        binds: Mapping[str, str],
        stack: ExitStack,
        transform: Callable[[Iterator[bytes]], Iterator[bytes]] | None,
        entry: RunningQuery,
    ) -> Reply:
        stream = conn.stream(statement.text + entry.marker, fmt, binds)
        stack.callback(stream.close)
        chunks: Iterator[bytes] = _until_killed(transform(stream) if transform else stream, entry)
        # Pull the first block before any header is sent, so that errors which happen
        # immediately (most of them) still get a proper HTTP status.
        first = next(chunks, None)
        if first is None:
            # Like ClickHouse: an empty result in Native is an empty body (no header block).
            stream.close()
            return Reply(format=fmt, body=b"", outcome=stream.outcome)
        return Reply(format=fmt, stream=chain([first], chunks), outcome=stream.outcome)


# Inline data of an INSERT whose statement has {name:Type} placeholders is buffered (chDB's
# streaming insert cannot bind parameters); beyond this it is refused.
MAX_BOUND_INSERT_BYTES = 64 << 20


def _has_placeholder(statement: str) -> bool:
    return any(
        t.kind is sql.Kind.PUNCT and t.text == "{" for t in sql.significant_tokens(statement)
    )


def _insert_with_parameters(
    conn: EngineConnection, insert: sql.InsertSplit, data: Iterator[bytes], binds: Mapping[str, str]
) -> Outcome:
    """``WITH {v:Int32} AS value INSERT INTO t FORMAT TSV`` plus data, run as one statement.

    ClickHouse binds the parameters of the statement part of an INSERT; chDB's streaming
    insert takes no parameters, so the statement and its data go through ``query`` together.
    """
    parts: list[bytes] = []
    size = 0
    for chunk in data:
        size += len(chunk)
        if size > MAX_BOUND_INSERT_BYTES:
            raise ClickHouseError(
                62,
                "Inline data of an INSERT with query parameters is limited to "
                f"{MAX_BOUND_INSERT_BYTES} bytes on this endpoint; send it without parameters",
                "SYNTAX_ERROR",
            )
        parts.append(chunk)
    text = f"{insert.statement} FORMAT {insert.input_format}\n" + b"".join(parts).decode(
        "utf-8", errors="surrogateescape"
    )
    return conn.execute(text, "TabSeparated", binds)


EXTERNAL_TABLE_PARAM_SUFFIXES = ("_structure", "_types", "_format")


def external_table_columns(name: str, params: Mapping[str, str]) -> str:
    """Column list for an external table from ``<name>_structure`` or ``<name>_types``.

    The text ends up inside ``CREATE TEMPORARY TABLE t (...)``, so it must not be able to
    close that parenthesis or start another statement.
    """
    structure = params.get(f"{name}_structure")
    types = params.get(f"{name}_types")
    if structure:
        columns = structure
    elif types:
        columns = ", ".join(
            f"_{i} {t}" for i, t in enumerate(sql.split_top_level(types, ","), start=1)
        )
    else:
        raise ClickHouseError(
            36,
            f"Neither structure nor types have not been provided for external table {name}. "
            f"Use fields {name}_structure or {name}_types to do so.",
            "BAD_ARGUMENTS",
        )
    if not sql.is_balanced(columns):
        raise ClickHouseError(36, f"Invalid structure of external table {name}", "BAD_ARGUMENTS")
    return columns


def _readonly_mode(
    user: User, method: str, settings: dict[str, str]
) -> tuple[str | None, str | None]:
    """(readonly level to lock the connection with, why the request is read-only).

    Read-only users get ``readonly=1``; a GET gets ``readonly=2`` like in ClickHouse; a
    writable user may also ask for a read-only request with the ``readonly`` setting, which is
    taken out of ``settings`` here because it is applied last: once set, it cannot be undone
    on the connection.
    """
    if user.readonly:
        return "1", "user"
    requested = settings.pop("readonly", "0").strip()
    if requested not in ("", "0"):
        return requested, "get" if method == "GET" else "setting"
    if method == "GET":
        return "2", "get"
    return None, None


def _readonly_refusal(user: User, reason: str) -> ClickHouseError:
    if reason == "user":
        return readonly_error(f"{user.name}: Cannot execute query in readonly mode")
    if reason == "get":
        return readonly_error(
            "Cannot execute query in readonly mode. For queries over HTTP, method GET implies "
            "readonly. You should use method POST for modifying queries"
        )
    return readonly_error("Cannot execute query in readonly mode")


def _quietly(action: Callable[..., object], *args: object) -> None:
    try:
        action(*args)
    except ClickHouseError as exc:
        log.warning("could not restore session state: %s", exc.message.splitlines()[0])


def _merge_arrow_streams(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Re-frame chDB's per-block Arrow IPC streams as one stream (one schema, one EOS).

    chDB emits every streamed block as a complete IPC stream; concatenated, a reader would stop
    at the first end-of-stream marker.
    """
    import pyarrow as pa

    class _Collector(io.RawIOBase):
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.parts.append(bytes(data))
            return len(data)

        def take(self) -> bytes:
            out, self.parts = b"".join(self.parts), []
            return out

    sink = _Collector()
    writer = None
    for chunk in chunks:
        reader = pa.ipc.open_stream(chunk)
        if writer is None:
            writer = pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), reader.schema)
        for batch in reader:
            writer.write_batch(batch)
        if data := sink.take():
            yield data
    if writer is not None:
        writer.close()
        if data := sink.take():
            yield data


@dataclass(frozen=True)
class KillRequest:
    """``KILL QUERY WHERE query_id = 'x' [SYNC|ASYNC|TEST] [FORMAT f]``, the form served."""

    query_ids: set[str]
    test: bool = False
    format: str | None = None


# The result columns of ClickHouse's KILL QUERY.
KILL_RESULT_COLUMNS = "kill_status String, query_id String, user String, query String"


def _kill_result_query(status: str, queries: list[RunningQuery]) -> str:
    """A query producing KILL QUERY's result rows, so chDB renders them in any format.

    With nothing matched it yields no rows (an empty body in Native, like ClickHouse).
    """
    columns = sql.quote_string(KILL_RESULT_COLUMNS)
    if not queries:
        return f"SELECT * FROM values({columns}, ('', '', '', '')) WHERE 0"
    rows = ", ".join(
        "(" + ", ".join(sql.quote_string(v) for v in (status, q.query_id, q.user, q.query)) + ")"
        for q in queries
    )
    return f"SELECT * FROM values({columns}, {rows})"


def _kill_query_ids(statement: sql.Statement) -> KillRequest | None:
    """The request of ``KILL QUERY WHERE query_id = 'x' [SYNC|ASYNC|TEST] [FORMAT f]``.

    ``query_id IN ('a', 'b')`` is accepted too; clients append ``FORMAT`` (clickhouse-connect's
    streaming calls add ``FORMAT Native``) and the trailing ``;`` is the statement's end.
    """
    if statement.keywords[:3] != ("KILL", "QUERY", "WHERE"):
        return None
    tokens = sql.significant_tokens(statement.text)[3:]
    while tokens and tokens[-1].kind is sql.Kind.PUNCT and tokens[-1].text == ";":
        tokens.pop()
    fmt = None
    if len(tokens) >= 2 and tokens[-2].is_word("FORMAT"):
        if tokens[-1].kind not in (sql.Kind.WORD, sql.Kind.QUOTED_IDENTIFIER):
            return None
        fmt = tokens[-1].text.strip('`"')
        tokens = tokens[:-2]
    test = False
    if tokens and tokens[-1].is_word("SYNC", "ASYNC", "TEST"):
        test = tokens[-1].is_word("TEST")
        tokens.pop()
    if len(tokens) < 3 or not tokens[0].is_word("QUERY_ID"):
        return None
    rest = tokens[1:]
    if rest[0].text == "=" and len(rest) == 2:
        literals = rest[1:]
    elif rest[0].is_word("IN") and rest[1].text == "(" and rest[-1].text == ")":
        literals = [t for t in rest[2:-1] if t.text != ","]
    else:
        return None
    ids: set[str] = set()
    for token in literals:
        if token.kind is not sql.Kind.STRING or not token.text.startswith("'"):
            return None
        ids.add(token.text[1:-1].replace("\\'", "'").replace("''", "'"))
    return KillRequest(ids, test, fmt)


def _until_killed(chunks: Iterator[bytes], entry: RunningQuery) -> Iterator[bytes]:
    for chunk in chunks:
        if entry.cancelled.is_set():
            raise ClickHouseError(
                394, f"Query {entry.query_id} was cancelled", "QUERY_WAS_CANCELLED"
            )
        yield chunk


def _cancelled_as_394(entry: RunningQuery, run: Callable[..., Outcome], *args: object) -> Outcome:
    """Runs ``run``; a query killed by its owner fails with 394 whatever chDB reported."""
    try:
        outcome = run(*args)
    except ClickHouseError:
        if entry.cancelled.is_set():
            raise ClickHouseError(
                394, f"Query {entry.query_id} was cancelled", "QUERY_WAS_CANCELLED"
            ) from None
        raise
    if entry.cancelled.is_set():
        raise ClickHouseError(394, f"Query {entry.query_id} was cancelled", "QUERY_WAS_CANCELLED")
    return outcome


def _check_database(user: User, grants: policy.Grants, name: str) -> None:
    """A database the user may make current (USE, ``database=``, a session's database)."""
    if name in policy.UNUSABLE_DATABASES:
        raise policy.access_denied(
            user.name,
            f"Database {name} cannot be the current database; name its tables as {name}.x",
        )
    if not grants.may_use(name):
        raise policy.access_denied(user.name, f"Database {name} is not granted")
