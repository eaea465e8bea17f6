"""The worker's table manager is faust's minus the start-up sleep, and stays so."""

from __future__ import annotations

import inspect
import textwrap

import pytest
from faust.tables import TableManager

from services.processor.table_manager import PromptTableManager

pytestmark = pytest.mark.unit


def _body(method) -> list[str]:
    lines = textwrap.dedent(inspect.getsource(method)).splitlines()
    return [
        line.strip()
        for line in lines[1:]
        if line.strip() and not line.strip().startswith(('"""', "#"))
    ]


def test_faust_still_sleeps_at_start_so_the_override_is_still_needed() -> None:
    assert "await self.sleep(1.0)" in _body(TableManager.on_start)


def test_the_override_does_what_faust_does_but_the_sleep() -> None:
    faust_steps = [step for step in _body(TableManager.on_start) if "sleep(1.0)" not in step]
    assert _body(PromptTableManager.on_start) == faust_steps
