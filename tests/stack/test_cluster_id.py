"""Kafka cluster ids: never one the storage tool reads as an option, and old bad ones repaired."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from services.stack.cluster_id import (
    RESERVED,
    formatted_cluster_id,
    new_cluster_id,
    problem,
    settle_cluster_id,
)
from services.stack.kafka import format_storage

pytestmark = pytest.mark.unit

#: The id that failed a fresh stack (its storage format read it as an option).
BAD_STORED = "-n-xgl03QyCf1hlmdQsNDg"
GOOD_TAIL = bytes(range(1, 16))


def _draws(*firsts: bytes):
    """A random source that hands out the given 16-byte draws in order."""
    queue = list(firsts)

    def random_bytes(n: int) -> bytes:
        assert n == 16
        return queue.pop(0)

    return random_bytes


@pytest.mark.parametrize("first_byte", range(256))
def test_no_first_byte_gives_an_id_beginning_with_a_dash(first_byte: int):
    draw = bytes([first_byte]) + GOOD_TAIL
    fallback = bytes([0x10]) + GOOD_TAIL
    cluster_id = new_cluster_id(_draws(draw, fallback))

    assert not cluster_id.startswith("-")
    assert problem(cluster_id) is None
    assert len(cluster_id) == 22
    # base64url's first character is the byte's top six bits: index 62 is '-' (0xF8..0xFB).
    if 0xF8 <= first_byte <= 0xFB:
        assert base64.urlsafe_b64decode(cluster_id + "==")[0] == 0x10, "drawn again"
    else:
        assert base64.urlsafe_b64decode(cluster_id + "==")[0] == first_byte, "first draw kept"


def test_exactly_four_first_bytes_would_begin_with_a_dash():
    dashed = [b for b in range(256) if base64.urlsafe_b64encode(bytes([b]) + GOOD_TAIL)[:1] == b"-"]
    assert dashed == [0xF8, 0xF9, 0xFA, 0xFB]


def test_the_reserved_ids_are_refused():
    for reserved in RESERVED:
        # The version bits are set on every draw, so a reserved id can only come from the
        # checks, never from the draw itself: problem() must still refuse them.
        assert problem(base64.urlsafe_b64encode(reserved).decode().rstrip("=")) is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (BAD_STORED, "begins with '-'"),
        ("short", "22 base64url"),
        ("AAAAAAAAAAAAAAAAAAAAA=", "22 base64url"),
        ("AAAAAAAAAAAAAAAAAAAAAB", "canonical"),
        ("AAAAAAAAAAAAAAAAAAAAAA", "reserved"),
    ],
)
def test_problem_names_what_is_wrong(text: str, why: str):
    assert why in (problem(text) or "")


def test_a_bad_stored_id_is_replaced_and_said(tmp_path: Path):
    id_file, log_dir = tmp_path / "cluster.id", tmp_path / "data"
    id_file.write_text(BAD_STORED + "\n")
    said: list[str] = []

    cluster_id = settle_cluster_id(id_file, log_dir, said.append)

    assert problem(cluster_id) is None
    assert id_file.read_text() == cluster_id
    assert len(said) == 1 and BAD_STORED in said[0] and "begins with '-'" in said[0], said
    assert settle_cluster_id(id_file, log_dir, said.append) == cluster_id, "kept from then on"
    assert len(said) == 1


def test_a_good_stored_id_is_kept_silently(tmp_path: Path):
    id_file = tmp_path / "cluster.id"
    id_file.write_text("MkU3OEVBNTcwNTJENDM2Qg\n")
    said: list[str] = []
    assert settle_cluster_id(id_file, tmp_path / "data", said.append) == "MkU3OEVBNTcwNTJENDM2Qg"
    assert said == []


def test_a_formatted_log_dir_wins_over_the_file(tmp_path: Path):
    id_file, log_dir = tmp_path / "cluster.id", tmp_path / "data"
    log_dir.mkdir()
    (log_dir / "meta.properties").write_text(
        "#\nnode.id=1\ndirectory.id=abc\nversion=1\ncluster.id=MkU3OEVBNTcwNTJENDM2Qg\n"
    )
    id_file.write_text("SomethingElseEntirely1")
    assert formatted_cluster_id(log_dir) == "MkU3OEVBNTcwNTJENDM2Qg"
    assert settle_cluster_id(id_file, log_dir, print) == "MkU3OEVBNTcwNTJENDM2Qg"
    assert id_file.read_text() == "MkU3OEVBNTcwNTJENDM2Qg"


def test_a_missing_file_gets_a_new_usable_id(tmp_path: Path):
    id_file = tmp_path / "kafka" / "cluster.id"
    cluster_id = settle_cluster_id(id_file, tmp_path / "data", print)
    assert problem(cluster_id) is None and id_file.read_text() == cluster_id


def test_format_refuses_a_bad_id_before_running_the_tool(tmp_path: Path):
    with pytest.raises(RuntimeError, match="begins with '-'"):
        format_storage(tmp_path / "no-classpath", BAD_STORED, tmp_path / "server.properties")
