"""Rebuild: the topics replayed into fresh tables give the live tables row for row."""

from __future__ import annotations

import threading

import pytest

from services.agency.publisher import Publisher
from services.ops import rebuild as rebuild_module
from services.ops.consumer_lag import wait_caught_up
from services.ops.rebuild import rebuild, table_digests
from tests.helpers import case_sent_to_police, make_event, new_tag, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cases(tag: str, n: int, month: int) -> list[dict]:
    events = []
    for i in range(n):
        case = f"{tag}:20-INSP/2017/{i:04d}"
        events += case_sent_to_police(
            case,
            f"2017-{month:02d}-03T08:00:00+07:00",
            f"2017-{month:02d}-05T08:00:00+07:00",
            f"2017-{month:02d}-{6 + i % 20:02d}T08:00:00+07:00",
            transfer_id=f"{case}/T",
        )
    return events


def _forged(tag: str, n: int) -> list[dict]:
    """A court resolving cases it was never sent: authority violations the rebuild must list too."""
    return [
        make_event(
            "case_resolved",
            "20-COURT",
            f"{tag}:20-INSP/2017/{i:04d}",
            "2017-01-28T08:00:00+07:00",
            {"outcome": "convicted"},
        )
        for i in range(n)
    ]


def test_rebuild_reproduces_the_live_tables_without_disturbing_them(stack, worker, ch):
    tag = new_tag()
    with Publisher(None, stack) as operator:
        operator.publish_many(_cases(tag, 200, month=1) + _forged(tag, 10))
    wait_caught_up(stack, timeout=300)
    live_before = table_digests(ch, stack.clickhouse_database)

    # While the rebuild runs, the live side keeps serving and processing.
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=rebuild(stack, switch=False, log=lambda m: None))
    )
    thread.start()
    late = _cases(f"{tag}-live", 20, month=2)
    with Publisher(None, stack) as operator:
        operator.publish_many(late)
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM cases WHERE case_id LIKE {p:String}",
                parameters={"p": f"{tag}-live:%"},
            )
            == 20
        ),
        timeout=180,
        what="live processing during the rebuild",
    )
    thread.join(timeout=900)
    assert not thread.is_alive()

    result = outcome["result"]
    assert result.equal, (result.live, result.rebuilt)
    assert result.rebuilt["integrity_violations"][0] >= 10  # the forged resolutions, listed
    assert result.rebuilt["events"][0] >= live_before["events"][0] + len(late)
    assert not result.switched


def test_rebuild_switch_exchanges_the_tables(stack, worker, ch):
    wait_caught_up(stack, timeout=300)
    before = table_digests(ch, stack.clickhouse_database)
    result = rebuild(stack, switch=True, log=lambda m: None)
    assert result.equal and result.switched
    assert table_digests(ch, stack.clickhouse_database) == before
    # The previous tables are kept in the rebuild database after the exchange.
    assert table_digests(ch, result.database) == before

    # The live worker now writes into the rebuilt tables.
    tag = new_tag()
    with Publisher(None, stack) as operator:
        operator.publish_many(_cases(tag, 5, month=3))
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM transfers WHERE case_id LIKE {p:String}",
                parameters={"p": f"{tag}:%"},
            )
            == 5
        ),
        timeout=120,
        what="new events in the switched tables",
    )


def test_events_published_after_the_first_pass_are_replayed_before_the_comparison(
    stack, worker, ch, monkeypatch
):
    """The replay reads up to the end offsets of its start; what is published after that (new
    cases, and new events of cases already derived) is read by the catch-up before the tables
    are compared, and the cases it touches are derived again from all their facts."""
    tag = new_tag()
    with Publisher(None, stack) as operator:
        operator.publish_many(_cases(tag, 5, month=4))
    wait_caught_up(stack, timeout=300)
    late = _cases(f"{tag}-late", 5, month=5) + _forged(tag, 5)

    class PublishedDuringTheReplay(rebuild_module.Replay):
        def run(self):
            stats = super().run()
            with Publisher(None, stack) as operator:
                operator.publish_many(late)
            return stats

    monkeypatch.setattr(rebuild_module, "Replay", PublishedDuringTheReplay)
    result = rebuild(stack, switch=False, processes=1, log=lambda m: None)
    assert result.equal, result.differences
    assert result.replay.caught_up >= len(late)
    violations = ch.command(
        f"SELECT count() FROM {result.database}.integrity_violations "
        "WHERE case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    )
    assert violations == 5  # events of cases the first pass had derived
