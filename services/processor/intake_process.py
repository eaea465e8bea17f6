"""The intake (intake.py) in a process of its own, beside the derive half of the worker.

Why a process and not a thread: the intake (Avro decode, validation, re-keying) and derive
(case state, rows, the ClickHouse write) are each about half of the worker's CPU (py-spy, 2 M
events: intake thread ~50 % of the samples), and as two threads of one interpreter they take
turns on the GIL, so the worker never used more than ~0.8 of a core while the second core sat
partly idle (the scale benchmark: machine 69 % busy with one worker). Two processes let them
overlap; they already talk only through Kafka (the facts topic), so nothing is shared but three
things the worker's process needs to know, sent over a pipe:

* the intake's Prometheus figures (events accepted and dead-lettered, batch sizes and times),
  sent after each batch and served by the worker's /metrics as before;
* the agency partitions it is assigned and whether it waits for the registry or the broker,
  sent every `STATUS_SECONDS` for the thread watchdog (worker.py), which judges stalls;
* its end: if the intake process exits, the worker restarts in place (crash semantics, nothing
  uncommitted is lost); if the worker's process goes (killed, stopped, or re-executing itself),
  the intake process goes too (the kernel's parent-death signal, and a failed send once the
  pipe's other end is gone). The intake ignores SIGTERM and SIGINT: a stop signalled to the
  whole process group (`casestream worker stop`, systemd) must end the worker, not first the
  intake, whose exit the worker would take for a crash and restart for. An ordinary exit of
  the worker's interpreter ends the intake first (`atexit`), for the same reason.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from services.processor import collector, instance, predecessor
from services.processor.intake import Intake, intake_group
from services.processor.priority import intake_priority
from services.settings import Settings

log = logging.getLogger("casestream.intake")

STATUS_SECONDS = 1.0
#: Sent by the worker on a stop: leave the consumer group and exit (SIGTERM/SIGINT stay ignored).
LEAVE_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class IntakeProcess:
    """The worker's handle on its intake process: what the watchdog and /metrics read."""

    def __init__(
        self,
        settings: Settings,
        app_id: str,
        metrics: Any,
        on_exit: Callable[[str], None],
        niceness: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._on_exit = on_exit
        self._owned: set[tuple[str, int]] = set()
        self._ending = False
        self.waiting = False
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_main,
            args=(
                settings,
                app_id,
                send,
                logging.getLogger().getEffectiveLevel(),
                os.getpid(),
                niceness,
            ),
            name="casestream-intake",
            # At an ordinary interpreter exit (faust stopping on its own) multiprocessing ends a
            # daemon child; a non-daemon one it would join, i.e. wait for forever.
            daemon=True,
        )
        self._process.start()
        atexit.register(self.end)  # before multiprocessing's own exit handler (LIFO)
        send.close()  # only the child writes: its end closes when it exits
        self._receive = receive
        threading.Thread(target=self._listen, name="casestream-intake-pipe", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def owned(self) -> set[tuple[str, int]]:
        """The agency-topic partitions the intake process is assigned (as last reported)."""
        return set(self._owned)

    def end(self) -> None:
        """Kill the intake process and wait for it (before the worker re-executes itself: the
        new image starts its own intake, and two would only read the same batches twice)."""
        self._ending = True
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)

    def leave(self, timeout: float) -> bool:
        """Ask the intake process to leave its consumer group and exit, and wait for it up to
        ``timeout`` seconds (then the worker goes anyway and the kernel ends the intake with it).
        True if it left in time. Its exit is then expected: no restart for it."""
        self._ending = True
        if self._process.is_alive() and self._process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, LEAVE_SIGNAL)
        self._process.join(timeout)
        return not self._process.is_alive()

    def _listen(self) -> None:
        while True:
            try:
                message = self._receive.recv()
            except (EOFError, OSError):
                break
            self._owned, self.waiting = apply(message, self._metrics, (self._owned, self.waiting))
        if self._ending:  # `end` joins it: two joins race, and the loser sees it alive
            return
        self._process.join(5)
        self._on_exit(f"the intake process exited (exit code {self._process.exitcode})")


Status = tuple[set[tuple[str, int]], bool]  # the partitions owned, waiting


def apply(message: tuple[str, Any], metrics: Any, status: Status) -> Status:
    """One message of the intake process, taken in: metrics counted, the new status returned."""
    kind, body = message
    if kind == "status":
        return body
    if kind == "batch" and metrics is not None:
        accepted, rejected, size, seconds = body
        for agency, count in accepted.items():
            metrics.accepted(agency, count)
        for (topic, reason), count in rejected.items():
            metrics.rejected(topic, reason, count)
        metrics.batch("ingest", size, seconds)
    return status


class _Relay:
    """The child's side of the pipe: Intake's metrics in, per-batch and status messages out."""

    def __init__(self, send: Connection) -> None:
        self._send = send
        self._lock = threading.Lock()  # the intake's thread and the status thread both send
        self._accepted: dict[str, int] = {}
        self._rejected: dict[tuple[str, str], int] = {}

    def accepted(self, agency_id: str) -> None:
        self._accepted[agency_id] = self._accepted.get(agency_id, 0) + 1

    def rejected(self, topic: str, reason: str) -> None:
        key = (topic, reason)
        self._rejected[key] = self._rejected.get(key, 0) + 1

    def batch(self, agent: str, size: int, seconds: float) -> None:
        accepted, rejected = self._accepted, self._rejected
        self._accepted, self._rejected = {}, {}
        self.send("batch", (accepted, rejected, size, seconds))

    def send(self, kind: str, body: Any) -> None:
        """Send, or leave: a closed pipe means the worker's process is gone."""
        try:
            with self._lock:
                self._send.send((kind, body))
        except OSError:
            os._exit(0)


def _main(
    settings: Settings,
    app_id: str,
    send: Connection,
    level: int,
    parent: int,
    niceness: int | None = None,
) -> None:
    """The intake process: run the intake until the worker's process goes."""
    _die_with_parent()
    if niceness is not None:
        intake_priority(niceness)  # the worker's own, not derive's lowered one (priority.py)
    logging.basicConfig(
        level=level, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    # A stop reaches the worker, whose end ends this process (see the module's docstring).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:  # the worker went while this process started
        os._exit(0)
    relay = _Relay(send)
    intake = Intake.from_settings(settings, app_id, relay)
    # Runs on this (the intake's) thread between two of its steps; the loop then ends and
    # `Intake.run` closes the consumer, which leaves the group.
    signal.signal(LEAVE_SIGNAL, lambda _signum, _frame: intake.stop.set())
    directory = instance.state_dir(settings, app_id)
    group = intake_group(app_id)
    intake.on_member = lambda member: predecessor.note(directory, "intake", group, member)
    collector.run_on_a_clock()  # no cycle collection on allocation counts (collector.py)

    def report_status() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            relay.send("status", (intake.owned(), intake.waiting))
            time.sleep(STATUS_SECONDS)

    threading.Thread(target=report_status, name="casestream-intake-status", daemon=True).start()
    try:
        intake.run()
    except BaseException:
        log.exception("the intake failed")
        logging.shutdown()
        os._exit(1)
    os._exit(0)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker's process dies (no orphans reading
    agency topics); elsewhere the status thread's parent check does it within a second."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
