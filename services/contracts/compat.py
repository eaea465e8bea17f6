"""Local Avro schema compatibility checks (the rules of Avro schema resolution).

``check_can_read(reader, writer)`` lists why data written with ``writer`` could not be read with
``reader`` (empty list = compatible).  On top of it:

* BACKWARD   (new schema reads data of the previous one): ``check_backward(new, old)``
* FORWARD    (old schema reads data of the new one):      ``check_forward(new, old)``
* *_TRANSITIVE: the same against every earlier version.

The subjects of casestream are BACKWARD_TRANSITIVE (consumers decode with the newest schema and
must read every event ever written).  This module lets tests and tooling check a schema change
before it reaches the registry, and produces readable messages that the registry API does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
#: writer type -> reader types it can be promoted to (Avro spec, "Schema Resolution").
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


class _Schema:
    """A schema with its named types indexed by full name."""

    def __init__(self, schema: Mapping[str, Any] | str | list) -> None:
        if isinstance(schema, str):
            schema = json.loads(schema)
        self.names: dict[str, dict[str, Any]] = {}
        self.root = self._index(schema, "")

    def _full(self, name: str, namespace: str) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def _index(self, node: Any, namespace: str) -> Any:
        if isinstance(node, str):
            return node if node in PRIMITIVES else self._full(node, namespace)
        if isinstance(node, list):
            return [self._index(b, namespace) for b in node]
        kind = node.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = self._full(node["name"], node.get("namespace", namespace))
            ns = full.rpartition(".")[0]
            copy = dict(node)
            copy["name"] = full
            copy["aliases"] = [self._full(a, ns) for a in node.get("aliases", ())]
            self.names[full] = copy
            if kind in ("record", "error"):
                copy["fields"] = [
                    {**f, "type": self._index(f["type"], ns)} for f in node.get("fields", ())
                ]
            return full
        if kind == "array":
            return {"type": "array", "items": self._index(node["items"], namespace)}
        if kind == "map":
            return {"type": "map", "values": self._index(node["values"], namespace)}
        if isinstance(kind, (dict, list)):
            return self._index(kind, namespace)
        if kind in PRIMITIVES:
            return kind  # logical types resolve as their underlying type
        return self._full(kind, namespace)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, str) and node not in PRIMITIVES:
            try:
                return self.names[node]
            except KeyError:
                raise ValueError(f"undefined named type {node!r}") from None
        return node


def _kind(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    return node["type"]


def _is_named(node: Any) -> bool:
    return isinstance(node, dict) and "name" in node


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _describe(node: Any) -> str:
    if isinstance(node, dict) and "name" in node:
        return f"{node['type']} {node['name']}"
    if isinstance(node, list):
        return "union"
    return _kind(node)


class _Checker:
    def __init__(self, reader: _Schema, writer: _Schema) -> None:
        self.r = reader
        self.w = writer
        self.seen: set[tuple[str, str]] = set()

    def names_match(self, rnode: dict, wnode: dict) -> bool:
        # Same unqualified name, or the writer's full name is one of the reader's aliases.
        return _short(rnode["name"]) == _short(wnode["name"]) or wnode["name"] in rnode.get(
            "aliases", ()
        )

    def match(self, rnode: Any, wnode: Any, path: str) -> list[str]:
        rnode, wnode = self.r.resolve(rnode), self.w.resolve(wnode)
        rk, wk = _kind(rnode), _kind(wnode)

        if wk == "union":
            # Every branch the writer may have used must be readable.
            problems: list[str] = []
            for branch in wnode:
                resolved = self.w.resolve(branch)
                label = _describe(resolved).rpartition(" ")[2]
                problems += self.match(
                    rnode, branch, f"{path}[{label}]" if len(wnode) > 1 else path
                )
            return problems
        if rk == "union":
            # The reader picks the first branch of the writer's type (named types by name),
            # else the first branch the writer's type promotes to.
            candidates = [self.r.resolve(b) for b in rnode]
            for b in candidates:
                if _kind(b) == wk and (not _is_named(b) or self.names_match(b, wnode)):
                    return self.match(b, wnode, path)
            if any(_kind(b) in PROMOTIONS.get(wk, ()) for b in candidates):
                return []
            return [f"{path}: writer type {_describe(wnode)} is not in the reader's union"]

        if rk != wk:
            if wk in PROMOTIONS and rk in PROMOTIONS[wk]:
                return []
            return [
                f"{path}: reader type {_describe(rnode)} cannot read writer type {_describe(wnode)}"
            ]
        if rk in PRIMITIVES:
            return []
        if rk in ("record", "error", "enum", "fixed") and not self.names_match(rnode, wnode):
            return [
                f"{path}: reader {rk} {rnode['name']} does not match writer {rk} {wnode['name']}"
            ]
        if rk == "fixed":
            if rnode["size"] != wnode["size"]:
                return [
                    f"{path}: fixed size {wnode['size']} cannot be read as size {rnode['size']}"
                ]
            return []
        if rk == "enum":
            missing = [s for s in wnode["symbols"] if s not in rnode["symbols"]]
            if missing and "default" not in rnode:
                return [
                    f"{path}: writer enum symbols {missing} are not in reader enum {rnode['name']}, "
                    f"which has no default"
                ]
            return []
        if rk == "array":
            return self.match(rnode["items"], wnode["items"], f"{path}[]")
        if rk == "map":
            return self.match(rnode["values"], wnode["values"], f"{path}{{}}")
        if rk in ("record", "error"):
            key = (rnode["name"], wnode["name"])
            if key in self.seen:
                return []
            self.seen.add(key)
            problems = []
            writer_fields = {f["name"]: f for f in wnode["fields"]}
            for rf in rnode["fields"]:
                names = [rf["name"], *rf.get("aliases", ())]
                wf = next((writer_fields[n] for n in names if n in writer_fields), None)
                fpath = f"{path}.{rf['name']}" if path else rf["name"]
                if wf is None:
                    if "default" not in rf:
                        problems.append(
                            f"{fpath}: field is missing from the writer schema and has no default "
                            f"in the reader schema"
                        )
                    continue
                problems += self.match(rf["type"], wf["type"], fpath)
            return problems
        return [f"{path}: unsupported schema type {rk!r}"]  # pragma: no cover


def check_can_read(reader: Any, writer: Any) -> list[str]:
    """Messages explaining why ``reader`` cannot read data written with ``writer`` ([] = it can).

    Schemas may be JSON text or dicts.  Logical types are compared by their underlying type,
    as Avro schema resolution does.
    """
    r, w = _Schema(reader), _Schema(writer)
    return _Checker(r, w).match(r.root, w.root, "")


def check_backward(new: Any, old: Any) -> list[str]:
    """BACKWARD: can consumers using ``new`` read data written with ``old``?"""
    return check_can_read(new, old)


def check_forward(new: Any, old: Any) -> list[str]:
    """FORWARD: can consumers still using ``old`` read data written with ``new``?"""
    return check_can_read(old, new)


def check_backward_transitive(new: Any, previous: Iterable[Any]) -> list[str]:
    """BACKWARD_TRANSITIVE: ``new`` must read data of every previous version (oldest first)."""
    problems = []
    for version, old in enumerate(previous, start=1):
        problems += [f"version {version}: {m}" for m in check_backward(new, old)]
    return problems


def check_full_transitive(new: Any, previous: Iterable[Any]) -> list[str]:
    """FULL_TRANSITIVE: backward and forward against every previous version."""
    problems = []
    for version, old in enumerate(previous, start=1):
        problems += [f"version {version} (backward): {m}" for m in check_backward(new, old)]
        problems += [f"version {version} (forward): {m}" for m in check_forward(new, old)]
    return problems
