"""Kafka cluster ids: made the way Kafka makes them, and checked before the storage tool sees them.

A cluster id is 16 random bytes written as base64url without padding (22 characters). One id in
64 begins with ``-`` (first byte 0xF8–0xFB), and ``kafka-storage format -t -n…`` then reads it
as an option and fails ("argument --cluster-id/-t: expected one argument"): that failed fresh
stacks, and with them CI, a few runs in a hundred. Kafka's own ``Uuid.randomUuid`` draws again
when the id begins with ``-`` or is one of its reserved ids (all zeros; ``0…01``, the metadata
topic's id); :func:`new_cluster_id` does the same.

The single node keeps its id in ``cluster.id`` so restarts reuse their data; an id stored by an
older version may be one of the bad ones, so :func:`settle_cluster_id` checks it, and replaces it
(saying so) when the log dir was never formatted with it. Once formatted, the log dir's
``meta.properties`` is the truth and wins over the file.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

#: Ids Kafka never hands out (``Uuid.ZERO_UUID`` and ``Uuid.METADATA_TOPIC_ID``).
RESERVED: frozenset[bytes] = frozenset({bytes(16), bytes(15) + b"\x01"})

_BASE64URL = re.compile(r"[A-Za-z0-9_-]{22}")


def encode(raw: bytes) -> str:
    """16 bytes as Kafka writes a ``Uuid``: base64url, padding dropped."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def problem(cluster_id: str) -> str | None:
    """Why ``cluster_id`` cannot be used for a new cluster, or None when it can."""
    if not _BASE64URL.fullmatch(cluster_id):
        return "it is not 22 base64url characters (16 bytes)"
    if cluster_id.startswith("-"):
        return "it begins with '-', which kafka-storage reads as an option"
    try:
        raw = base64.urlsafe_b64decode(cluster_id + "==")
    except (binascii.Error, ValueError):
        return "it is not valid base64url"
    if encode(raw) != cluster_id:
        return "it is not the canonical encoding of 16 bytes"
    if raw in RESERVED:
        return "it is one of Kafka's reserved ids"
    return None


def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A random version-4 id that Kafka's tools accept: drawn again until :func:`problem` is None."""
    while True:
        raw = uuid.UUID(bytes=random_bytes(16), version=4).bytes
        candidate = encode(raw)
        if problem(candidate) is None:
            return candidate


def formatted_cluster_id(log_dir: Path) -> str | None:
    """The cluster id a formatted KRaft log dir belongs to (its ``meta.properties``), or None."""
    try:
        text = (log_dir / "meta.properties").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id" and value.strip():
            return value.strip()
    return None


def settle_cluster_id(id_file: Path, log_dir: Path, log: Callable[[str], None] = print) -> str:
    """The id to format ``log_dir`` with, stored in ``id_file``; a bad stored id is replaced.

    Order: the formatted log dir's own id (its data belongs to it), else a usable stored id,
    else a new one. A stored id that is unusable was never formatted (the storage tool refused
    it), so replacing it loses nothing; the replacement is logged with the reason.
    """
    formatted = formatted_cluster_id(log_dir)
    stored = id_file.read_text().strip() if id_file.exists() else None
    if formatted is not None:
        if stored != formatted:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(formatted)
        return formatted
    if stored is not None:
        reason = problem(stored)
        if reason is None:
            return stored
        fresh = new_cluster_id()
        log(
            f"kafka: replacing the cluster id {stored!r} stored in {id_file}: {reason}; "
            f"no log dir was formatted with it, so no data is lost (new id {fresh})"
        )
    else:
        fresh = new_cluster_id()
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(fresh)
    return fresh
