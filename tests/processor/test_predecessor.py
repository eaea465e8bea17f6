"""Member ids noted in a worker's state directory, for the next process on it."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from services.processor import predecessor
from services.processor.intake import Intake
from services.settings import Settings

pytestmark = pytest.mark.unit


def test_each_half_notes_its_own_member_and_a_new_note_replaces_the_old(tmp_path):
    predecessor.note(tmp_path, "intake", "app-intake", "rdkafka-1")
    predecessor.note(tmp_path, "derive", "app", "faust-1")
    predecessor.note(tmp_path, "derive", "app", "faust-2")  # a later join
    assert predecessor.noted(tmp_path) == {
        "derive": ("app", "faust-2"),
        "intake": ("app-intake", "rdkafka-1"),
    }
    assert not [p for p in (tmp_path / predecessor.MEMBERS_DIR).iterdir() if p.name[0] == "."]


def test_an_unreadable_note_is_skipped_not_fatal(tmp_path):
    predecessor.note(tmp_path, "intake", "app-intake", "rdkafka-1")
    (tmp_path / predecessor.MEMBERS_DIR / "derive.json").write_text("{not json")
    assert predecessor.noted(tmp_path) == {"intake": ("app-intake", "rdkafka-1")}


def test_nothing_noted_asks_the_broker_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("CASESTREAM_KAFKA_BOOTSTRAP", "256.0.0.1:1")  # would fail if asked
    assert predecessor.remove_noted(Settings.from_env(), tmp_path) == {}


def test_an_unreachable_broker_delays_the_start_a_bounded_time_and_the_notes_go(
    tmp_path, monkeypatch
):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed when the block ends: nothing listens there
    monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("CASESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    predecessor.note(tmp_path, "derive", "app", "faust-1")
    started = time.monotonic()
    outcome = predecessor.remove_noted(Settings.from_env(), tmp_path)
    assert time.monotonic() - started < predecessor.REMOVE_SECONDS + 2
    assert outcome["derive"].startswith("not removed"), outcome
    assert predecessor.noted(tmp_path) == {}


class _Consumer:
    def __init__(self, member: str) -> None:
        self.member = member

    def memberid(self) -> str:
        return self.member


def test_the_intake_tells_its_member_id_once_per_join():
    intake = Intake(None, None, None, None, facts="f", facts_partitions=1)
    told: list[str] = []
    intake.on_member = told.append
    consumer = _Consumer("rdkafka-1")
    intake._assigned(consumer, [])
    intake._assigned(consumer, [])  # a rebalance, same member
    consumer.member = "rdkafka-2"  # joined again as a new member
    intake._assigned(consumer, [])
    assert told == ["rdkafka-1", "rdkafka-2"]


def test_a_failing_note_does_not_break_the_assignment():
    intake = Intake(None, None, None, None, facts="f", facts_partitions=1)

    def full_disk(_member: str) -> None:
        raise OSError(28, "No space left on device")

    intake.on_member = full_disk

    class _TP:
        topic, partition = "agency.x", 0

    intake._assigned(_Consumer("rdkafka-1"), [_TP()])
    assert intake.owned() == {("agency.x", 0)}


class _Client:
    """A broker's group coordinator answering LeaveGroup with the given error codes in turn."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.sent = codes, 0

    async def coordinator_lookup(self, _kind, _group) -> int:
        return 1

    async def send(self, _node, _request):
        self.sent += 1

        class _Response:
            error_code = self.codes.pop(0)

        return _Response()


@pytest.mark.parametrize(
    ("codes", "outcome", "sent"),
    [
        ([0], "removed", 1),
        ([25], "already gone", 1),
        ([16, 14, 0], "removed", 3),  # not the coordinator / still loading: asked again
        ([30], "not removed (Kafka error code 30: GroupAuthorizationFailedError)", 1),
    ],
)
def test_a_leave_is_asked_again_only_while_the_broker_says_retry(codes, outcome, sent):
    client = _Client(codes)
    assert asyncio.run(predecessor._leave(client, "app", "faust-1")) == outcome
    assert client.sent == sent


def _instance_dir(app_dir, name: str, holder: str, notes: bool = True):
    where = app_dir / name
    where.mkdir(parents=True)
    (where / "instance.lock").write_text(holder)
    if notes:
        predecessor.note(where, "derive", "app", f"faust-{name}")
    return where


def test_a_dead_sibling_with_notes_is_found_and_no_other(tmp_path):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid runs nothing now
    me = _instance_dir(tmp_path, "0", str(os.getpid()))
    dead = _instance_dir(tmp_path, "1", str(gone.pid))
    _instance_dir(tmp_path, "2", str(os.getpid()))  # alive
    _instance_dir(tmp_path, "3", str(gone.pid), notes=False)  # nothing to remove
    _instance_dir(tmp_path, "4", "not a pid")  # holder unknown: left alone
    assert predecessor.dead_siblings(me) == [dead]


def test_an_exited_but_unreaped_sibling_counts_as_dead(tmp_path):
    import subprocess

    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        me = _instance_dir(tmp_path, "0", str(os.getpid()))
        dead = _instance_dir(tmp_path, "1", str(zombie.pid))
        assert predecessor.dead_siblings(me) == [dead]
    finally:
        zombie.wait()
