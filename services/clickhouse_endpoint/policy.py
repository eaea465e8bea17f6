"""What a query may reach and see: the endpoint's query policy, as pure rules over tokens.

chDB is ClickHouse without its access control: every connection is ``default`` with every
grant, its ``file()`` function and table functions read any path the process can, and
``output_format_schema`` writes one. So the endpoint applies ClickHouse's documented rules
itself, before chDB sees a statement:

* nothing reaches the file system, network or processes: I/O table functions and functions,
  table/database engines, ``INTO OUTFILE``/``FROM INFILE``, ``BACKUP``/``RESTORE``, dictionary
  sources, settings naming files/schemas/URLs and formats that read schema files are refused
  for every user (no user has file access: there is no ``user_files_path`` grant);
* a read-only user changes only an allow-list of settings (ClickHouse's ``readonly=1`` allows
  none; the few kept only shape results or lower limits), and never raises a limit;
* a user with database grants reaches only those databases and a few ``system`` tables that
  clients need; ``system.processes``/``system.errors`` show a user its own entries only.

The checks work on the lexer's tokens (no extra round trip to chDB), which keeps the endpoint
within its 2x-of-in-process budget. They are deliberately conservative: a word followed by
``(`` counts as a call wherever it appears, so a refused name cannot hide in a subquery,
lambda or ``INSERT INTO FUNCTION``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import sql
from .errors import ClickHouseError

# Table functions that only compute or read data already in the engine. Every other table
# function chDB knows (file, url, s3, hdfs, remote, mysql, postgresql, executable, python,
# filesystem, iceberg*, deltaLake*, ...) is refused.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "primes",
        "generateRandom",
        "generateSeries",
        "generate_series",
        "values",
        "SQLStandardValues",
        "null",
        "view",
        "viewIfPermitted",
        "viewExplain",
        "input",
        "format",
        "loop",
        "merge",
    )
)

# Known I/O table functions, refused even if the engine's list could not be read.
IO_TABLE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "file",
        "fileCluster",
        "url",
        "urlCluster",
        "s3",
        "s3Cluster",
        "gcs",
        "cosn",
        "oss",
        "hdfs",
        "hdfsCluster",
        "azureBlobStorage",
        "azureBlobStorageCluster",
        "remote",
        "remoteSecure",
        "cluster",
        "clusterAllReplicas",
        "mysql",
        "postgresql",
        "mongodb",
        "redis",
        "sqlite",
        "odbc",
        "jdbc",
        "executable",
        "python",
        "eval",
        "filesystem",
        "arrowstream",
        "dictionary",
        "fuzzJSON",
        "fuzzQuery",
        "iceberg",
        "icebergLocal",
        "icebergS3",
        "deltaLake",
        "deltaLakeLocal",
        "hudi",
        "paimon",
        "paimonLocal",
        "bigquery",
        "ytsaurus",
        "prometheusQuery",
        "prometheusQueryRange",
        "mergeTreeIndex",
        "mergeTreeProjection",
        "mergeTreeAnalyzeIndexes",
        "mergeTreeAnalyzeIndexesUUID",
        "mergeTreeCodecBlockCounts",
        "mergeTreeTextIndex",
    )
)

# Ordinary functions that read files, load models, reach dictionaries (whose sources may be
# files, URLs or commands), introspect the binary or reveal server configuration.
DENIED_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "file",
        "catboostEvaluate",
        "evalMLMethod",
        "addressToLine",
        "addressToLineWithInlines",
        "addressToSymbol",
        "demangle",
        "getServerSetting",
        "getMacro",
        "filesystemAvailable",
        "filesystemCapacity",
        "filesystemUnreserved",
        "disk",
        "joinGet",
        "joinGetOrNull",
        "hasColumnInTable",
        "currentRequestURL",
    )
)
_DICTIONARY_FUNCTION = re.compile(r"^dict(get|has|isin)", re.IGNORECASE)

# Formats that read a schema file (format_schema) or template files.
DENIED_FORMATS = frozenset(
    {
        "protobuf",
        "protobufsingle",
        "protobuflist",
        "capnproto",
        "template",
        "templateignorespaces",
    }
)

# Table and database engines that keep data in the engine's own directory.
ALLOWED_ENGINES = frozenset(
    name.lower()
    for name in (
        "Memory",
        "Log",
        "TinyLog",
        "StripeLog",
        "Null",
        "Set",
        "Join",
        "Buffer",
        "Merge",
        "View",
        "MaterializedView",
        "GenerateRandom",
        "Atomic",
        "Ordinary",
        "Lazy",
    )
)

# Settings no user may change: they name files, schemas or URLs, or open introspection.
DENIED_SETTINGS = frozenset(
    {
        "format_schema",
        "format_schema_source",
        "output_format_schema",
        "format_template_resultset",
        "format_template_row",
        "format_avro_schema_registry_url",
        "input_format_record_errors_file_path",
        "into_outfile_create_parent_directories",
        "url_base",
        "s3_base",
        "allow_introspection_functions",
        "s3_allow_server_credentials_in_user_queries",
        "user_files_path",
        "readonly_user_files_path",
    }
)
_DENIED_SETTING_PATTERN = re.compile(
    r"(^schema_inference_)|(_path$)|(_path_)|(_file$)|(_dir$)|(_url$)|(_directory$)"
)

# Settings a read-only user may change (per request, by SET or in a SETTINGS clause): they
# shape results or lower limits. ClickHouse's readonly=1 allows none; these are kept because
# analysts' existing flows use them and none reaches outside the engine.
READONLY_SETTINGS = frozenset(
    {
        "max_block_size",
        "max_threads",
        "max_execution_time",
        "max_result_rows",
        "max_result_bytes",
        "max_rows_to_read",
        "max_bytes_to_read",
        "result_overflow_mode",
        "read_overflow_mode",
        "timeout_overflow_mode",
        "max_memory_usage",
        "limit",
        "offset",
        "extremes",
        "join_use_nulls",
        "session_timezone",
        "date_time_input_format",
        "date_time_output_format",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "cast_string_to_dynamic_use_inference",
        "log_comment",
        "output_format_json_quote_64bit_integers",
        "output_format_json_quote_denormals",
        "output_format_arrow_string_as_string",
        "output_format_native_encode_types_in_binary_format",
        "output_format_decimal_trailing_zeros",
        "output_format_csv_crlf_end_of_line",
        "output_format_pretty_max_rows",
        "output_format_pretty_color",
        "format_csv_delimiter",
    }
)

# system tables a user with database grants may read as they are (no other users' data).
SAFE_SYSTEM_TABLES = frozenset(
    {
        "settings",
        "functions",
        "table_functions",
        "formats",
        "data_type_families",
        "time_zones",
        "one",
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "build_options",
        "collations",
        "contributors",
        "licenses",
        "keywords",
        "aggregate_function_combinators",
        "table_engines",
        "database_engines",
        "merge_tree_settings",
        "codecs",
        "errors",
        "processes",
    }
)
# system tables shown filtered to the user's databases.
FILTERED_SYSTEM_TABLES = frozenset(
    {"tables", "columns", "databases", "parts", "data_skipping_indices", "projections"}
)
# system tables holding other users' query texts: refused to everyone (processes and errors
# are replaced by the endpoint's own per-user views instead).
QUERY_TEXT_TABLES = frozenset(
    {
        "query_log",
        "query_thread_log",
        "query_views_log",
        "user_query_log",
        "user_processes",
        "session_query_ids",
        "query_cache",
        "stack_trace",
        "asynchronous_inserts",
        "text_log",
        "trace_log",
        "processors_profile_log",
        "statements",
        "users",
        "grants",
        "named_collections",
        "server_settings",
        "disks",
        "remote_data_paths",
        "user_directories",
    }
)

# SHOW statements over the access-control and storage tables chDB would answer for everyone.
REFUSED_SHOW = frozenset(
    {
        "USERS",
        "USER",
        "ROLES",
        "ROLE",
        "GRANTS",
        "ACCESS",
        "QUOTAS",
        "QUOTA",
        "PROFILES",
        "PROFILE",
        "POLICY",
        "POLICIES",
        "ROW",
        "CURRENT",
        "ENABLED",
        "PRIVILEGES",
        "FILESYSTEM",
        "CLUSTER",
        "CLUSTERS",
        "MERGES",
        "DISKS",
        "QUERY",
    }
)


@dataclass(frozen=True)
class Limits:
    """Per-user resource limits; a user may lower them for a query, never raise them.

    0 means unlimited, as in ClickHouse.
    """

    max_execution_time: float = 0
    max_memory_usage: int = 0
    max_result_rows: int = 0
    max_result_bytes: int = 0

    def settings(self) -> dict[str, str]:
        values = {
            "max_execution_time": self.max_execution_time,
            "max_memory_usage": self.max_memory_usage,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
        }
        return {name: _number_text(value) for name, value in values.items() if value}

    def cap(self, name: str) -> float | None:
        value = getattr(self, name, None) if name in LIMIT_SETTINGS else None
        return float(value) if value else None


LIMIT_SETTINGS = ("max_execution_time", "max_memory_usage", "max_result_rows", "max_result_bytes")


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _memory_share(fraction: float, ceiling: int) -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return ceiling
    return max(256 << 20, min(ceiling, int(total * fraction)))


def default_limits(readonly: bool) -> Limits:
    """Sane defaults: an analyst's query stops after 60 s or a quarter of RAM (at most 4 GiB).

    ``SELECT groupArray(number) FROM numbers(2e8)`` took 3.9 GB unbounded. Read-only users
    also get result-size caps (10 M rows, 1 GiB) so one query cannot exhaust the endpoint's
    memory while its reply is built. The platform's own writer gets longer, larger limits
    (rollup rebuilds run for minutes).
    """
    if readonly:
        return Limits(
            max_execution_time=60,
            max_memory_usage=_memory_share(0.25, 4 << 30),
            max_result_rows=10_000_000,
            max_result_bytes=1 << 30,
        )
    return Limits(max_execution_time=3600, max_memory_usage=_memory_share(0.5, 16 << 30))


@dataclass(frozen=True)
class Grants:
    """What one user may reach. ``databases`` None means every database."""

    databases: frozenset[str] | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def default_database(self) -> str | None:
        if self.databases is None:
            return None
        named = sorted(d for d in self.databases if d != "system")
        return named[0] if named else None

    def may_use(self, database: str) -> bool:
        return self.databases is None or database in self.databases


def grants_from_spec(readonly: bool, spec: Mapping[str, object] | None, where: str) -> Grants:
    """Grants for a user from its users-file entry (``databases``, ``limits``), with defaults.

    ``{"databases": ["casestream"], "limits": {"max_execution_time": 30}}``
    """
    spec = spec or {}
    databases = spec.get("databases")
    if databases is not None and (
        not isinstance(databases, list) or not all(isinstance(d, str) and d for d in databases)
    ):
        raise ValueError(f"{where}: 'databases' must be a list of database names")
    base = default_limits(readonly)
    overrides = spec.get("limits") or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{where}: 'limits' must be an object")
    values: dict[str, float] = {name: getattr(base, name) for name in LIMIT_SETTINGS}
    for name, value in overrides.items():
        if name not in LIMIT_SETTINGS:
            raise ValueError(
                f"{where}: unknown limit {name!r} (known: {', '.join(LIMIT_SETTINGS)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where}: limit {name!r} must be a number >= 0, got {value!r}")
        values[name] = value
    limits = Limits(
        max_execution_time=float(values["max_execution_time"]),
        max_memory_usage=int(values["max_memory_usage"]),
        max_result_rows=int(values["max_result_rows"]),
        max_result_bytes=int(values["max_result_bytes"]),
    )
    return Grants(frozenset(databases) if databases is not None else None, limits)


# -- refusals ---------------------------------------------------------------------------------


def access_denied(user: str, what: str) -> ClickHouseError:
    return ClickHouseError(497, f"{user}: Not enough privileges. {what}", "ACCESS_DENIED")


def readonly_setting_error(name: str) -> ClickHouseError:
    return ClickHouseError(164, f"Cannot modify '{name}' setting in readonly mode", "READONLY")


def setting_denied(name: str) -> bool:
    lowered = name.lower()
    return lowered in DENIED_SETTINGS or bool(_DENIED_SETTING_PATTERN.search(lowered))


def readonly_setting_allowed(name: str) -> bool:
    """May a read-only user change this setting at all (whatever the value)?"""
    return name != "readonly" and name in READONLY_SETTINGS and not setting_denied(name)


def check_setting(user: str, readonly: bool, limits: Limits, name: str, value: str) -> None:
    """Refuse a setting change the user may not make (URL parameter, SET or SETTINGS clause)."""
    if setting_denied(name):
        raise access_denied(user, f"Setting '{name}' reaches files or the network on this endpoint")
    if readonly and not readonly_setting_allowed(name):
        raise readonly_setting_error(name)
    cap = limits.cap(name)
    if cap is not None:
        try:
            requested = float(value.strip().strip("'"))
        except ValueError:
            raise ClickHouseError(
                452,
                f"Setting {name} must be a number, got '{value}'",
                "SETTING_CONSTRAINT_VIOLATION",
            ) from None
        if requested <= 0 or requested > cap:
            raise ClickHouseError(
                452,
                f"Setting {name} shouldn't be greater than {_number_text(cap)} "
                f"(got '{value}'; 0 would mean unlimited)",
                "SETTING_CONSTRAINT_VIOLATION",
            )


def check_format(user: str, name: str | None) -> None:
    bare = (name or "").strip('`"')
    if bare.lower() in DENIED_FORMATS:
        raise access_denied(user, f"Format {bare} reads schema or template files on the server")


def _identifier(token: sql.Token) -> str | None:
    if token.kind is sql.Kind.WORD:
        return token.text
    if token.kind is sql.Kind.QUOTED_IDENTIFIER:
        quote = token.text[0]
        return token.text[1:-1].replace(quote * 2, quote).replace("\\" + quote, quote)
    return None


def _literal(token: sql.Token) -> str | None:
    if token.kind is sql.Kind.STRING and token.text.startswith("'"):
        return token.text[1:-1].replace("''", "'").replace("\\'", "'")
    return None


@dataclass
class Scan:
    """What a statement touches, collected in one pass over its tokens."""

    settings: list[tuple[str, str]] = field(default_factory=list)
    # (database, table) pairs named with a qualifier.
    qualified: list[tuple[str, str, sql.Token, sql.Token]] = field(default_factory=list)
    # Names following FROM/IN in a SHOW statement (databases, or a table for SHOW COLUMNS).
    show_names: list[str] = field(default_factory=list)


def scan_statement(
    user: str,
    tokens: list[sql.Token],
    text: str,
    table_functions: Iterable[str] = (),
    restricted: bool = False,
) -> Scan:
    """Refuse what reaches outside the engine; collect settings and qualified names.

    ``table_functions`` is the engine's own list (lowercased); any of them not allowed is
    refused, so a table function added by a new chDB release is closed by default.
    """
    refused_calls = IO_TABLE_FUNCTIONS | (set(table_functions) - ALLOWED_TABLE_FUNCTIONS)
    if restricted:
        # merge() and loop() name a database as a plain argument (merge(db, re), loop(db, t)).
        refused_calls = refused_calls | {"merge", "loop"}
    scan = Scan()
    n = len(tokens)
    words = [t.upper if t.kind is sql.Kind.WORD else "" for t in tokens]
    first = words[0] if words else ""
    if first in ("BACKUP", "RESTORE"):
        raise access_denied(user, f"{first} writes or reads files outside the engine")
    head = words[:5]
    if first == "KILL":
        raise access_denied(
            user, "KILL is supported only as KILL QUERY WHERE query_id = '...' on one's own queries"
        )
    if first in ("CREATE", "ATTACH", "REPLACE") and "DICTIONARY" in head:
        raise access_denied(user, "Dictionaries read from files, URLs or commands")
    if first in ("CREATE", "ALTER", "DROP") and "COLLECTION" in head:
        raise access_denied(user, "Named collections hold credentials for external sources")
    for i, token in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < n else None
        word = words[i]
        if word == "OUTFILE" and i > 0 and words[i - 1] == "INTO":
            raise access_denied(user, "INTO OUTFILE writes files on the server")
        if word == "INFILE" and i > 0 and words[i - 1] == "FROM":
            raise access_denied(user, "FROM INFILE reads files on the server")
        if word == "FROM" and first == "ATTACH" and nxt is not None and _literal(nxt) is not None:
            raise access_denied(user, "ATTACH ... FROM a path reads files on the server")
        if word == "FETCH" and first == "ALTER":
            raise access_denied(user, "FETCH PARTITION reaches other servers")
        if word == "FORMAT" and nxt is not None:
            check_format(user, _identifier(nxt))
        if word == "ENGINE" and nxt is not None:
            engine_token = tokens[i + 2] if nxt.text == "=" and i + 2 < n else nxt
            engine = (_identifier(engine_token) or "").lower()
            if engine and not (engine.endswith("mergetree") or engine in ALLOWED_ENGINES):
                raise access_denied(
                    user,
                    f"Engine {_identifier(engine_token)} reaches files, processes or the network",
                )
        if word == "SETTINGS":
            scan.settings.extend(_settings_clause(tokens, i + 1, text))
        name = _identifier(token)
        if name is None or nxt is None:
            continue
        if nxt.kind is sql.Kind.PUNCT and nxt.text == "(":
            lowered = name.lower()
            if (
                lowered in refused_calls
                or lowered in DENIED_FUNCTIONS
                or _DICTIONARY_FUNCTION.match(lowered)
            ):
                raise access_denied(
                    user, f"Function {name}() reaches files, processes or the network"
                )
            if lowered in ("formatrow", "formatrownonewline") and i + 2 < n:
                check_format(user, _literal(tokens[i + 2]))
            if lowered == "format" and i + 2 < n:
                check_format(user, _identifier(tokens[i + 2]))
        elif (
            nxt.kind is sql.Kind.PUNCT
            and nxt.text == "."
            and i + 2 < n
            and (table := _identifier(tokens[i + 2])) is not None
            and (i == 0 or tokens[i - 1].text != ".")
        ):
            scan.qualified.append((name, table, token, tokens[i + 2]))
    if first == "SHOW":
        for i, word in enumerate(words[:-1]):
            if word in ("FROM", "IN") and (shown := _identifier(tokens[i + 1])) is not None:
                scan.show_names.append(shown)
    return scan


# Databases no one may make current (USE, ``database=``): unqualified names there would reach
# system tables past the per-user views and refusals, which only see ``system.x``.
UNUSABLE_DATABASES = frozenset({"system", "information_schema", "INFORMATION_SCHEMA"})

_IDENTIFIER_PARAMETER = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*Identifier\s*\}")


def substitute_identifier_parameters(text: str, binds: Mapping[str, str]) -> str:
    """The text with ``{name:Identifier}`` placeholders replaced by their quoted values.

    Done by the endpoint (as chDB would) so that the policy sees the names a query really
    reaches: ``SELECT * FROM {db:Identifier}.t`` with ``param_db=secret`` names ``secret``.
    Placeholders inside literals are left alone (the lexer decides what is a literal).
    """
    if "Identifier" not in text:
        return text
    joined = text
    pieces: list[str] = []
    position = 0
    literal_spans = [
        (t.start, t.end)
        for t in sql.tokenize(joined)
        if t.kind in (sql.Kind.STRING, sql.Kind.COMMENT, sql.Kind.QUOTED_IDENTIFIER)
    ]
    for match in _IDENTIFIER_PARAMETER.finditer(joined):
        if any(start <= match.start() < end for start, end in literal_spans):
            continue
        name = match.group(1)
        if name not in binds:
            continue
        pieces.append(joined[position : match.start()])
        pieces.append(_quote_compound(binds[name]))
        position = match.end()
    pieces.append(joined[position:])
    return "".join(pieces)


def _quote_compound(value: str) -> str:
    """An Identifier parameter may be ``db.table``; each part is quoted on its own."""
    return ".".join(sql.quote_identifier(part) for part in value.split("."))


def _settings_clause(tokens: list[sql.Token], start: int, text: str) -> list[tuple[str, str]]:
    """``name = value, ...`` pairs following a SETTINGS keyword."""
    pairs: list[tuple[str, str]] = []
    i = start
    n = len(tokens)
    while i + 2 < n and tokens[i + 1].text == "=":
        name = _identifier(tokens[i])
        if name is None:
            break
        depth = 0
        j = i + 2
        value_start = tokens[j].start
        value_end = tokens[j].end
        while j < n:
            t = tokens[j]
            if t.kind is sql.Kind.PUNCT and t.text in "([{":
                depth += 1
            elif t.kind is sql.Kind.PUNCT and t.text in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (t.text == "," or t.is_word("FORMAT") or t.text == ";"):
                break
            value_end = t.end
            j += 1
        pairs.append((name, text[value_start:value_end]))
        if j < n and tokens[j].text == ",":
            i = j + 1
        else:
            break
    return pairs


def grants_from_users_file(path: str | None) -> dict[str, Grants]:
    """Each user's grants from the users file the endpoint authenticates with (None: defaults).

    The file is already validated by ``auth.UserDirectory``; here only the policy keys are read.
    """
    import json
    from pathlib import Path

    if path is None:
        return {}
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    grants: dict[str, Grants] = {}
    for name, spec in (document.get("users") or {}).items():
        if isinstance(spec, dict):
            readonly = bool(spec.get("readonly", False))
            grants[name] = grants_from_spec(readonly, spec, f"users file {path}: user {name!r}")
    return grants
