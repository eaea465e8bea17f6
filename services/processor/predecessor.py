"""The consumer-group members a dead predecessor left behind, removed before a worker joins.

A worker that dies without leaving its groups (SIGKILL, out of memory, a power cut, or its own
in-place restart by a watchdog) stays a member of both until its session times out (10 s), and
neither group hands out a partition before then: a worker started again in its place read
nothing for ~9.5 s (restart benchmark after SIGKILL: ready 9.2-9.9 s; a fresh worker 1.6 s).

So each process notes its member id in each group in its state directory once it has joined
(`note`), and the next process on that directory asks the groups' coordinator to remove those
members (`remove_noted`: a LeaveGroup on their behalf) before it joins itself. That is safe
because it holds the directory's lock (instance.py), so the process that noted them is gone, and
member ids are new at every join, so a noted id never names a live member of another process. A
stop already leaves both groups (worker.py); an id that left already is answered
UNKNOWN_MEMBER_ID and ignored. The requests carry the worker's own credentials, whose ACLs
reach only its own groups: another application's group refuses them
(tests/reliability/test_kafka_tls.py).

The same for a sibling: several instances of one app id on one host (the systemd template's
`casestream-worker@{1..4}`) keep their state directories side by side, and each worker checks
every `SIBLING_CHECK_SECONDS` for a sibling whose process is gone and which left notes
(`dead_siblings`): a killed instance's partitions then move to the survivors within about a
second, not after its session, whether or not it is started again. Should the sibling be
started again in the moment between the check of its pid and the removal, and have joined
already (it takes a second or two), its new member is removed once: a rebalance, nothing lost.

Static membership (Kafka's `group.instance.id`) would give the same for a restart, and was
tried: instance.py says why it is not used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.processor.instance import holder

if TYPE_CHECKING:
    from services.settings import Settings

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"
SIBLING_CHECK_SECONDS = 1.0
REMOVE_SECONDS = 5.0  # then the worker starts anyway, and the groups wait out the session


def note(directory: Path, half: str, group: str, member_id: str) -> None:
    """Note this process's member id in ``group`` (``half``: "intake" or "derive", each noted
    by its own process). Atomic: a crash mid-write leaves the previous note or this one."""
    where = directory / MEMBERS_DIR
    where.mkdir(exist_ok=True)
    scratch = where / f".{half}.{os.getpid()}"
    scratch.write_text(json.dumps({"group": group, "member_id": member_id}))
    os.replace(scratch, where / f"{half}.json")


def noted(directory: Path) -> dict[str, tuple[str, str]]:
    """The notes left in the directory: half -> (group, member id); unreadable ones skipped."""
    where = directory / MEMBERS_DIR
    found: dict[str, tuple[str, str]] = {}
    if not where.is_dir():
        return found
    for path in sorted(where.glob("*.json")):
        try:
            body = json.loads(path.read_text())
            found[path.stem] = (str(body["group"]), str(body["member_id"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the member note %s (%r)", path, exc)
    return found


def dead_siblings(directory: Path) -> list[Path]:
    """The other state directories of this app id on this host that hold notes and whose
    process is gone (the pid in their lock file no longer runs). A directory whose holder is
    unknown, or alive, or another user's process, is left alone."""
    found = []
    for sibling in sorted(directory.parent.iterdir()):
        if sibling == directory or not any((sibling / MEMBERS_DIR).glob("*.json")):
            continue
        pid = holder(sibling)
        if pid is not None and not _running(pid):
            found.append(sibling)
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    try:  # exited but not yet reaped by its parent
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def remove_noted(settings: Settings, directory: Path) -> dict[str, str]:
    """Remove the members the previous process on ``directory`` noted, then the notes; what
    happened per half ("removed", "already gone", or why not). Never raises: a failure only
    means the groups wait out the old members' sessions, as without this."""
    members = noted(directory)
    if not members:
        return {}
    loop = asyncio.new_event_loop()  # a private loop: faust sets up the process's own later
    try:
        outcomes = loop.run_until_complete(
            asyncio.wait_for(_remove(settings, list(members.values())), REMOVE_SECONDS)
        )
    except Exception as exc:  # noqa: BLE001 - broker down, timeout: start anyway
        outcomes = [f"not removed ({exc!r})"] * len(members)
    finally:
        loop.close()
    for half in members:
        (directory / MEMBERS_DIR / f"{half}.json").unlink(missing_ok=True)
    return dict(zip(members, outcomes, strict=True))


def log_outcomes(outcomes: dict[str, str], message: str) -> None:
    """Log each half's outcome with ``message`` (a %-format of half and outcome): a warning
    when a member was removed (its process had died without leaving), else for information."""
    for half, outcome in outcomes.items():
        log.log(logging.WARNING if outcome == "removed" else logging.INFO, message, half, outcome)


async def _remove(settings: Settings, members: list[tuple[str, str]]) -> list[str]:
    from aiokafka import errors
    from aiokafka.client import AIOKafkaClient
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    client = AIOKafkaClient(
        bootstrap_servers=settings.kafka_bootstrap,
        **credentials_to_aiokafka_auth(settings.faust_broker_credentials()),
    )
    await client.bootstrap()
    outcomes = []
    try:
        for group, member_id in members:
            try:  # each group on its own: one refused (its ACL, say) leaves the others to do
                outcomes.append(await _leave(client, group, member_id))
            except errors.KafkaError as exc:
                outcomes.append(f"not removed ({exc!r})")
    finally:
        await client.close()
    return outcomes


async def _leave(client: Any, group: str, member_id: str) -> str:
    """A LeaveGroup for ``member_id`` sent to the group's coordinator, asked again while the
    broker answers with a retriable error (a cluster's first group: its coordinator is still
    loading or moving). `REMOVE_SECONDS` bounds the whole removal."""
    from aiokafka import errors
    from aiokafka.client import CoordinationType
    from aiokafka.protocol.group import LeaveGroupRequest

    while True:
        try:
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            code = (await client.send(node, LeaveGroupRequest(group, member_id))).error_code
        except errors.KafkaError as exc:
            if not exc.retriable:
                raise
            code = -1
        if code == 0:
            return "removed"
        if code == errors.UnknownMemberIdError.errno:  # it left or timed out already
            return "already gone"
        if code != -1 and not errors.for_code(code).retriable:
            return f"not removed (Kafka error code {code}: {errors.for_code(code).__name__})"
        await asyncio.sleep(0.2)
