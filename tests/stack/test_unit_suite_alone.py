"""`./run tests -m unit` needs Python alone: no Java, no Maven, no jars.

A contributor without Java must be able to run the fast suite. `java` and `mvn` are shadowed by
stubs that record being called and fail, and the jar cache points at an empty directory: the
set-up and the collection of every unit test must touch neither. (The conftest refuses a unit
test that asks for a server fixture, so a unit test cannot start the stack behind this.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _stub(bin_dir: Path, name: str, calls: Path) -> None:
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 127\n')
    path.chmod(0o755)


@pytest.mark.slow
def test_unit_selection_sets_up_and_collects_without_java_maven_or_jars(tmp_path: Path) -> None:
    bin_dir, cache = tmp_path / "bin", tmp_path / "cache"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("java", "mvn"):
        _stub(bin_dir, name, calls)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CASESTREAM_CACHE": str(cache),
    }
    done = subprocess.run(
        ["./run", "tests", "-m", "unit", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Kafka and Apicurio jars" not in done.stderr
    assert not calls.exists(), calls.read_text()
    assert not cache.exists() or not any(cache.iterdir())
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert len(collected) > 500, done.stdout[-2000:]
