"""Just enough SQL lexing to route a request before chDB sees it.

The endpoint must decide a few things on its own: where an INSERT statement ends and its
inline data begins (the data can be gigabytes of compressed Native blocks, so it is never
handed to chDB as SQL text), whether a read-only user is trying to write, whether a request
smuggles in a second statement, and which output format the client asked for.

None of this needs a real parser, but it does need a real *lexer*: keywords hidden inside
string literals, quoted identifiers, heredocs or comments must never count. The lexer works on
``str``; callers holding bytes decode them as latin-1 so that character offsets are byte
offsets (every keyword we look for is ASCII, and UTF-8 continuation bytes are never ASCII).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    WORD = "word"
    NUMBER = "number"
    STRING = "string"
    QUOTED_IDENTIFIER = "quoted_identifier"
    PUNCT = "punct"
    WHITESPACE = "whitespace"
    COMMENT = "comment"
    # A string, identifier or comment that reaches the end of the text without closing.
    UNTERMINATED = "unterminated"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper()

    def is_word(self, *words: str) -> bool:
        return self.kind is Kind.WORD and self.text.upper() in words


_WHITESPACE = " \t\n\r\f\v"
_HEREDOC_RE = re.compile(r"\$([A-Za-z0-9_]*)\$")


def _is_word_start(ch: str) -> bool:
    return ch.isalpha() or ch == "_" or ord(ch) >= 0x80


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ord(ch) >= 0x80


def _scan_quoted(text: str, pos: int, quote: str) -> int:
    """End offset of a quoted token starting at ``pos``, or -1 if it never closes.

    ClickHouse accepts both backslash escapes and doubled quotes inside literals.
    """
    i = pos + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return -1


def _scan_block_comment(text: str, pos: int) -> int:
    """ClickHouse block comments nest, so ``/* /* */ */`` is one comment."""
    depth = 0
    i = pos
    n = len(text)
    while i < n - 1:
        pair = text[i : i + 2]
        if pair == "/*":
            depth += 1
            i += 2
        elif pair == "*/":
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def tokenize(text: str) -> Iterator[Token]:
    pos = 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        start = pos
        if ch in _WHITESPACE:
            while pos < n and text[pos] in _WHITESPACE:
                pos += 1
            yield Token(Kind.WHITESPACE, text[start:pos], start, pos)
        elif text.startswith("--", pos) or (ch == "#" and text[pos + 1 : pos + 2] in (" ", "!")):
            end = text.find("\n", pos)
            pos = n if end == -1 else end
            yield Token(Kind.COMMENT, text[start:pos], start, pos)
        elif text.startswith("/*", pos):
            end = _scan_block_comment(text, pos)
            if end == -1:
                yield Token(Kind.UNTERMINATED, text[start:], start, n)
                return
            pos = end
            yield Token(Kind.COMMENT, text[start:pos], start, pos)
        elif ch in "'\"`":
            end = _scan_quoted(text, pos, ch)
            if end == -1:
                yield Token(Kind.UNTERMINATED, text[start:], start, n)
                return
            pos = end
            kind = Kind.STRING if ch == "'" else Kind.QUOTED_IDENTIFIER
            yield Token(kind, text[start:pos], start, pos)
        elif ch == "$" and (match := _HEREDOC_RE.match(text, pos)):
            closing = text.find(match.group(0), match.end())
            if closing == -1:
                yield Token(Kind.UNTERMINATED, text[start:], start, n)
                return
            pos = closing + len(match.group(0))
            yield Token(Kind.STRING, text[start:pos], start, pos)
        elif _is_word_start(ch):
            while pos < n and _is_word_char(text[pos]):
                pos += 1
            yield Token(Kind.WORD, text[start:pos], start, pos)
        elif ch.isdigit():
            while pos < n and (_is_word_char(text[pos]) or text[pos] == "."):
                pos += 1
            yield Token(Kind.NUMBER, text[start:pos], start, pos)
        else:
            pos += 1
            yield Token(Kind.PUNCT, ch, start, pos)


def significant_tokens(text: str) -> list[Token]:
    return [t for t in tokenize(text) if t.kind not in (Kind.WHITESPACE, Kind.COMMENT)]


def strip_comments(text: str) -> str:
    """The text with every comment replaced by a space (literals are left untouched)."""
    parts = []
    for token in tokenize(text):
        parts.append(" " if token.kind is Kind.COMMENT else token.text)
    return "".join(parts).strip()


def split_statements(text: str) -> list[str]:
    """Top-level statements, with comment-only or empty pieces dropped.

    A trailing ``;`` therefore yields one statement, as it does in ClickHouse.
    """
    statements: list[str] = []
    start = 0
    has_content = False
    for token in tokenize(text):
        if token.kind is Kind.PUNCT and token.text == ";":
            if has_content:
                statements.append(text[start : token.start].strip())
            start = token.end
            has_content = False
        elif token.kind not in (Kind.WHITESPACE, Kind.COMMENT):
            has_content = True
    if has_content:
        statements.append(text[start:].strip())
    return statements


# First keywords of statements that produce a result set (and so get X-ClickHouse-Format).
ROW_RETURNING_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "(", "FROM"}
)
# Keywords chDB can stream block by block (it refuses send_query for SHOW/DESCRIBE/...).
STREAMABLE_KEYWORDS = frozenset({"SELECT", "WITH", "(", "FROM"})
# Statements a read-only user may run as-is (SET and USE get their own treatment).
READ_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "(", "FROM"}
)


@dataclass(frozen=True)
class Statement:
    """One SQL statement (trailing semicolons removed) plus what routing needs to know."""

    text: str
    keywords: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.keywords[0] if self.keywords else ""

    @property
    def returns_rows(self) -> bool:
        return self.kind in ROW_RETURNING_KEYWORDS

    @property
    def streamable(self) -> bool:
        return self.kind in STREAMABLE_KEYWORDS

    @property
    def is_read(self) -> bool:
        return self.kind in READ_KEYWORDS

    @property
    def kills_host(self) -> bool:
        """``SYSTEM SHUTDOWN``/``SYSTEM KILL`` would terminate the process that embeds chDB."""
        return (
            self.kind == "SYSTEM"
            and len(self.keywords) > 1
            and self.keywords[1] in ("SHUTDOWN", "KILL")
        )


def parse_statement(text: str) -> Statement:
    tokens = significant_tokens(text)
    keywords = tuple(t.upper if t.kind is Kind.WORD else t.text for t in tokens[:4])
    # Drop trailing semicolons so chDB does not see an empty second statement.
    end = len(text)
    while tokens and tokens[-1].kind is Kind.PUNCT and tokens[-1].text == ";":
        end = tokens[-1].start
        tokens.pop()
    return Statement(text[:end].strip(), keywords)


def _top_level(tokens: list[Token]) -> Iterator[tuple[int, Token]]:
    """Yield (index, token) for tokens outside any parentheses or brackets."""
    depth = 0
    for index, token in enumerate(tokens):
        if token.kind is Kind.PUNCT and token.text in "([{":
            depth += 1
        elif token.kind is Kind.PUNCT and token.text in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            yield index, token


def _format_clause(statement: str) -> tuple[Token, Token] | None:
    """The (FORMAT, name) tokens of a query's output format clause, if it has one.

    Only a top-level ``FORMAT`` followed by a name and then nothing or ``SETTINGS`` counts,
    so a column called ``format`` (``SELECT format FROM t``) is not mistaken for the clause.
    """
    tokens = significant_tokens(statement)
    while tokens and tokens[-1].kind is Kind.PUNCT and tokens[-1].text == ";":
        tokens.pop()
    found = None
    for index, token in _top_level(tokens):
        if not token.is_word("FORMAT") or index + 1 >= len(tokens):
            continue
        name = tokens[index + 1]
        if name.kind not in (Kind.WORD, Kind.QUOTED_IDENTIFIER):
            continue
        rest = tokens[index + 2 :]
        if not rest or rest[0].is_word("SETTINGS"):
            found = (token, name)
    return found


def output_format(statement: str) -> str | None:
    """The format named by the query's ``FORMAT`` clause, if it has one."""
    clause = _format_clause(statement)
    return clause[1].text.strip('`"') if clause else None


def without_format_clause(statement: str) -> str:
    """The query with its ``FORMAT name`` clause removed (e.g. to use it as a subquery)."""
    clause = _format_clause(statement)
    if clause is None:
        return statement
    keyword, name = clause
    return (statement[: keyword.start] + " " + statement[name.end :]).strip().rstrip(";").strip()


@dataclass(frozen=True)
class InsertSplit:
    """An INSERT whose data follows the statement in the request body.

    ``statement`` is the INSERT without its ``FORMAT``/``VALUES`` clause (what chDB's
    streaming insert wants), found in the text before ``statement_end``; characters from
    ``data_offset`` on are data in ``input_format``.
    """

    statement: str
    input_format: str
    data_offset: int
    statement_end: int


class _NeedMore:
    """Sentinel: the text read so far ends before the INSERT's data start is known."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore()

_INSERT_TARGET_PREFIX = frozenset({"INTO", "TABLE", "FUNCTION", "."})


def split_insert(text: str, eof: bool) -> InsertSplit | _NeedMore | None:
    """Find where an INSERT's inline data starts, following ClickHouse's parser rules.

    Returns ``None`` when the text is not an INSERT with inline data (a SELECT, an
    ``INSERT ... SELECT``, or garbage that chDB should reject), ``NEED_MORE`` when more of the
    body must be read to decide, else an ``InsertSplit``. For ``FORMAT x`` the data starts
    after spaces/tabs and at most one line break following the format name; for ``VALUES`` it
    starts right after the keyword.

    ClickHouse also parses a ``WITH ...`` clause in front of the INSERT (``WITH {v:Int32} AS
    value INSERT INTO t FORMAT TSV``); the INSERT is then the first top-level ``INSERT`` word,
    and a top-level ``SELECT`` before it means the statement is a plain query.
    """
    previous: Token | None = None
    depth = 0
    saw_insert = False
    in_with = False
    for token in tokenize(text):
        if token.kind is Kind.UNTERMINATED:
            return None if eof else NEED_MORE
        if token.kind in (Kind.WHITESPACE, Kind.COMMENT):
            continue
        if token.end >= len(text) and not eof:
            return NEED_MORE  # the last token may still grow ("INS" -> "INSERT")
        if not saw_insert:
            if not in_with and token.is_word("WITH"):
                in_with = True
                continue
            if in_with:
                if token.kind is Kind.PUNCT and token.text in "([{":
                    depth += 1
                elif token.kind is Kind.PUNCT and token.text in ")]}":
                    depth = max(0, depth - 1)
                elif depth == 0 and token.is_word("SELECT"):
                    return None
                if depth > 0 or not token.is_word("INSERT"):
                    continue
            elif not token.is_word("INSERT"):
                return None
            saw_insert = True
            previous = token
            continue
        if token.kind is Kind.PUNCT and token.text in "([{":
            depth += 1
        elif token.kind is Kind.PUNCT and token.text in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and token.kind is Kind.WORD:
            after_target_keyword = previous is not None and previous.upper in _INSERT_TARGET_PREFIX
            word = token.upper
            if word in ("SELECT", "WITH") and not after_target_keyword:
                return None
            if word == "VALUES" and not after_target_keyword:
                return InsertSplit(text[: token.start].strip(), "Values", token.end, token.start)
            if word == "FORMAT" and not after_target_keyword:
                return _split_after_format(text, token, eof)
        previous = token
    return None if eof else NEED_MORE


def _split_after_format(
    text: str, format_token: Token, eof: bool
) -> InsertSplit | _NeedMore | None:
    name: Token | None = None
    for token in tokenize(text[format_token.end :]):
        if token.kind is Kind.WHITESPACE:
            continue
        name = token
        break
    if name is None:
        return None if eof else NEED_MORE
    name_end = format_token.end + name.end
    if name.kind not in (Kind.WORD, Kind.QUOTED_IDENTIFIER):
        return None
    if name_end >= len(text) and not eof:
        return NEED_MORE
    pos = name_end
    n = len(text)
    while pos < n and text[pos] in " \t\f":
        pos += 1
    if pos >= n and not eof:
        return NEED_MORE
    if pos < n and text[pos] == "\r":
        pos += 1
        if pos >= n and not eof:
            return NEED_MORE
    if pos < n and text[pos] == "\n":
        pos += 1
    statement = text[: format_token.start].strip()
    return InsertSplit(statement, name.text.strip('`"'), pos, format_token.start)


@dataclass(frozen=True)
class Assignment:
    name: str
    value_sql: str


def parse_set(statement: str) -> list[Assignment] | None:
    """The ``name = value`` pairs of a ``SET`` statement, or None if it is not a plain SET."""
    tokens = significant_tokens(statement)
    while tokens and tokens[-1].kind is Kind.PUNCT and tokens[-1].text == ";":
        tokens.pop()
    if len(tokens) < 2 or not tokens[0].is_word("SET"):
        return None
    groups: list[list[Token]] = [[]]
    depth = 0
    for token in tokens[1:]:
        if token.kind is Kind.PUNCT and token.text in "([{":
            depth += 1
        elif token.kind is Kind.PUNCT and token.text in ")]}":
            depth -= 1
        if depth == 0 and token.kind is Kind.PUNCT and token.text == ",":
            groups.append([])
        else:
            groups[-1].append(token)
    assignments: list[Assignment] = []
    for group in groups:
        if len(group) < 3 or group[0].kind is not Kind.WORD or group[1].text != "=":
            return None
        value = statement[group[2].start : group[-1].end].strip()
        assignments.append(Assignment(group[0].text, value))
    return assignments


def parse_use(statement: str) -> str | None:
    """The database named by ``USE db`` (quotes removed), or None."""
    tokens = significant_tokens(statement)
    while tokens and tokens[-1].kind is Kind.PUNCT and tokens[-1].text == ";":
        tokens.pop()
    if len(tokens) == 3 and tokens[0].is_word("USE") and tokens[1].is_word("DATABASE"):
        tokens = [tokens[0], tokens[2]]
    if len(tokens) != 2 or not tokens[0].is_word("USE"):
        return None
    name = tokens[1]
    if name.kind is Kind.WORD:
        return name.text
    if name.kind is Kind.QUOTED_IDENTIFIER:
        return name.text[1:-1].replace(name.text[0] * 2, name.text[0])
    return None


def split_top_level(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside brackets and literals (``Tuple(a, b), String``)."""
    parts: list[str] = []
    depth = 0
    start = 0
    for token in tokenize(text):
        if token.kind is Kind.PUNCT and token.text in "([{":
            depth += 1
        elif token.kind is Kind.PUNCT and token.text in ")]}":
            depth -= 1
        elif depth == 0 and token.kind is Kind.PUNCT and token.text == separator:
            parts.append(text[start : token.start].strip())
            start = token.end
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def is_balanced(text: str) -> bool:
    """True if brackets balance, never close below zero, and there is no top-level ``;``.

    Used for text spliced inside parentheses, which must not be able to escape them.
    """
    depth = 0
    for token in tokenize(text):
        if token.kind is Kind.UNTERMINATED:
            return False
        if token.kind is Kind.PUNCT and token.text in "([{":
            depth += 1
        elif token.kind is Kind.PUNCT and token.text in ")]}":
            depth -= 1
            if depth < 0:
                return False
        elif token.kind is Kind.PUNCT and token.text == ";":
            return False
    return depth == 0


def quote_string(value: str) -> str:
    """A ClickHouse single-quoted string literal for ``value``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_plain_identifier(name: str) -> bool:
    return bool(_IDENTIFIER_RE.match(name))
