"""When the worker's two processes compete for the CPU, the intake goes first.

The intake (its own process, intake_process.py) is the head of the pipeline: derive can only
derive what the intake re-keyed. When both want the CPU (a catch-up, a replay after an outage,
two cores shared with the broker and ClickHouse), derive running at a lower priority lets the
intake run at its pace, and derive, left behind, finds more envelopes waiting and takes them as
one larger batch: its per-batch costs (the ClickHouse parts, each touched case's state row and
changelog record) are paid fewer times. Measured with the process benchmark, interleaved 3×
on one stack (docs/benchmarks.md, rows ¹⁰): 0.44, 0.48, 0.42 of the decode ceiling with 18–22
writes before, 0.46, 0.48, 0.48 with 11–13 writes after. With idle CPU, as at 1,000 events/s,
niceness changes nothing: nobody waits for a core.

A process without privileges can raise its niceness, never lower it. The worker's in-place
restart (an exec) keeps the raised one, and the intake it then starts would inherit it; so the
niceness the worker was started with is kept in the environment, which the exec passes on, and
the intake process returns to it when allowed (as root, or with a nice limit); otherwise both
run at the raised one, as if neither were favoured.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("casestream.worker")

#: How much lower derive's priority is than the intake's (niceness steps; the scheduler gives a
#: process ~1.25× less CPU per step when both want it).
DERIVE_NICENESS = 5
_STARTED_AT = "CASESTREAM_WORKER_STARTED_NICENESS"


def started_niceness() -> int:
    """The niceness the worker was started with (before any in-place restart)."""
    kept = os.environ.get(_STARTED_AT)
    if kept is None or not kept.lstrip("-").isdigit():
        kept = os.environ[_STARTED_AT] = str(os.getpriority(os.PRIO_PROCESS, 0))
    return int(kept)


def yield_to_intake(started: int) -> None:
    """Lower the calling process (derive) to `started` + DERIVE_NICENESS."""
    wanted = started + DERIVE_NICENESS
    if os.getpriority(os.PRIO_PROCESS, 0) >= wanted:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, wanted)
    except OSError as exc:  # not expected: raising one's own niceness is always allowed
        log.warning("derive keeps the intake's priority (%s)", exc)


def intake_priority(started: int) -> None:
    """Return the calling process (the intake) to the niceness the worker started with."""
    if os.getpriority(os.PRIO_PROCESS, 0) > started:
        with contextlib.suppress(OSError):  # unprivileged: stays at the worker's
            os.setpriority(os.PRIO_PROCESS, 0, started)
