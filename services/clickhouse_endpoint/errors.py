"""ClickHouse-style errors: numeric codes, symbolic names and the HTTP statuses ClickHouse uses.

Clients (clickhouse-connect, curl scripts, dashboards) key off three things when a query
fails: the ``X-ClickHouse-Exception-Code`` header, the HTTP status, and a body that starts
with ``Code: N. DB::Exception: ...``. chDB already produces that text for engine errors, so
most of the work here is parsing it back into a code and rendering our own errors the same way.
"""

from __future__ import annotations

import re

# Only the codes this endpoint raises itself or maps to a non-500 status; chDB messages carry
# their own names. Numbers checked against chDB's errorCodeToName() in the unit tests.
ERROR_NAMES: dict[int, str] = {
    1: "UNSUPPORTED_METHOD",
    6: "CANNOT_PARSE_TEXT",
    8: "THERE_IS_NO_COLUMN",
    15: "DUPLICATE_COLUMN",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    36: "BAD_ARGUMENTS",
    37: "UNKNOWN_ELEMENT_IN_AST",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    44: "ILLEGAL_COLUMN",
    46: "UNKNOWN_FUNCTION",
    47: "UNKNOWN_IDENTIFIER",
    48: "NOT_IMPLEMENTED",
    49: "LOGICAL_ERROR",
    50: "UNKNOWN_TYPE",
    53: "TYPE_MISMATCH",
    56: "UNKNOWN_STORAGE",
    60: "UNKNOWN_TABLE",
    62: "SYNTAX_ERROR",
    63: "UNKNOWN_AGGREGATE_FUNCTION",
    72: "CANNOT_PARSE_NUMBER",
    73: "UNKNOWN_FORMAT",
    76: "CANNOT_OPEN_FILE",
    78: "UNKNOWN_TYPE_OF_QUERY",
    81: "UNKNOWN_DATABASE",
    89: "UNKNOWN_COMPRESSION_METHOD",
    115: "UNKNOWN_SETTING",
    117: "INCORRECT_DATA",
    123: "UNKNOWN_TYPE_OF_AST_NODE",
    152: "UNKNOWN_DIRECTION_OF_SORTING",
    159: "TIMEOUT_EXCEEDED",
    164: "READONLY",
    167: "TOO_DEEP_AST",
    168: "TOO_BIG_AST",
    192: "UNKNOWN_USER",
    193: "WRONG_PASSWORD",
    201: "QUOTA_EXCEEDED",
    194: "REQUIRED_PASSWORD",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    223: "UNEXPECTED_AST_STRUCTURE",
    229: "QUERY_IS_TOO_LARGE",
    271: "CANNOT_DECOMPRESS",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    336: "UNKNOWN_DATABASE_ENGINE",
    372: "SESSION_NOT_FOUND",
    373: "SESSION_IS_LOCKED",
    376: "CANNOT_PARSE_UUID",
    381: "HTTP_LENGTH_REQUIRED",
    427: "CANNOT_COMPILE_REGEXP",
    439: "CANNOT_SCHEDULE_TASK",
    441: "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    456: "UNKNOWN_QUERY_PARAMETER",
    457: "BAD_QUERY_PARAMETER",
    497: "ACCESS_DENIED",
    511: "UNKNOWN_ROLE",
    512: "SET_NON_GRANTED_ROLE",
    516: "AUTHENTICATION_FAILED",
    675: "CANNOT_PARSE_IPV4",
    676: "CANNOT_PARSE_IPV6",
    779: "UNSUPPORTED_MEDIA_TYPE",
    1001: "STD_EXCEPTION",
}

_NAME_TO_CODE = {name: code for code, name in ERROR_NAMES.items()}

# Mirrors src/Server/HTTP/exceptionCodeToHTTPStatus.cpp in ClickHouse, so that scripts which
# branch on the status see the same thing here as against a real server.
_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        (
            "UNKNOWN_USER",
            "WRONG_PASSWORD",
            "AUTHENTICATION_FAILED",
            "SET_NON_GRANTED_ROLE",
            "ACCESS_DENIED",
        ),
        403,
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    # Our choice, not ClickHouse's (it answers 500): the failed-login throttle says "come back
    # later" with 429 and Retry-After, which HTTP clients and proxies understand.
    "QUOTA_EXCEEDED": 429,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

_CODE_RE = re.compile(r"Code:\s*(\d+)\.")
_TRAILING_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*(?:\(version [^)]*\))?\s*\.?\s*$")
_VERSION_RE = re.compile(r"\(version [^)]*\)\s*\.?\s*$")


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")


def http_status_for(code: int) -> int:
    return _STATUS_BY_NAME.get(error_name(code), 500)


class ClickHouseError(Exception):
    """An error reported to the client the way ClickHouse reports it.

    ``message`` is either a complete ClickHouse text (``Code: 60. DB::Exception: ...``) taken
    from chDB, or a bare sentence that ``render`` wraps in that shape.
    """

    def __init__(self, code: int, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name or error_name(code)

    @property
    def http_status(self) -> int:
        status = _STATUS_BY_NAME.get(self.name)
        return status if status is not None else http_status_for(self.code)

    def render(self, version: str) -> str:
        """The response body: one line, ending like ClickHouse's ``(NAME) (version X)``."""
        text = self.message.strip()
        if not text.startswith("Code:"):
            sentence = text.rstrip(".")
            text = f"Code: {self.code}. DB::Exception: {sentence}. ({self.name})"
        if not _VERSION_RE.search(text):
            text = f"{text} (version {version})"
        return text + "\n"

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        """Recover the ClickHouse code from a chDB exception's text (``Code: N. ...``).

        The first ``Code:`` wins because chDB nests re-thrown messages as
        ``Code: 164. DB::Exception: Code: 164. ...``; the outer one is what ClickHouse reports.
        """
        if isinstance(exc, ClickHouseError):
            return exc
        text = str(exc).strip()
        for prefix in ("Streaming query failed: ", "Failed to create connection: "):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        match = _CODE_RE.search(text)
        if match is None:
            return cls(1001, f"{type(exc).__name__}: {text}", "STD_EXCEPTION")
        code = int(match.group(1))
        text = text[match.start() :]
        name_match = _TRAILING_NAME_RE.search(text)
        name = name_match.group(1) if name_match else error_name(code)
        return cls(code, text, name)


def readonly_error(detail: str = "Cannot execute query in readonly mode") -> ClickHouseError:
    return ClickHouseError(164, detail, "READONLY")


def code_for_name(name: str) -> int | None:
    return _NAME_TO_CODE.get(name)
