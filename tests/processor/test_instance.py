"""A worker instance's identity: one process per state directory."""

from __future__ import annotations

import os

import pytest

from services.processor import instance
from services.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def _settings(monkeypatch, home, name: str = "0") -> Settings:
    monkeypatch.setenv("CASESTREAM_HOME", str(home))
    monkeypatch.setenv("CASESTREAM_WORKER_INSTANCE", name)
    return Settings.from_env()


def test_a_second_process_on_one_state_directory_is_refused_naming_the_first(tmp_path, monkeypatch):
    settings = _settings(monkeypatch, tmp_path)
    where = instance.state_dir(settings, "app")
    held = instance.hold(settings, "app")
    try:
        # flock is per open file: a second open, even in this process, is another holder
        with pytest.raises(SettingsError) as refused:
            instance.hold(settings, "app")
        message = str(refused.value)
        assert "CASESTREAM_WORKER_INSTANCE='0'" in message and "'app'" in message
        assert f"pid {os.getpid()}" in message and str(where) in message
    finally:
        held.close()
    instance.hold(settings, "app").close()  # released with its file


def test_another_instance_name_is_another_state_directory(tmp_path, monkeypatch):
    first = _settings(monkeypatch, tmp_path, "w1")
    second = _settings(monkeypatch, tmp_path, "w2")
    held = instance.hold(first, "app")
    try:
        instance.hold(second, "app").close()
    finally:
        held.close()


def test_the_worker_command_refuses_a_held_instance_before_connecting_anywhere(
    tmp_path, monkeypatch
):
    """Nothing listens on the settings' ports here: the refusal comes before any connection."""
    import subprocess
    import sys

    settings = _settings(monkeypatch, tmp_path, "w1")
    held = instance.hold(settings, settings.worker_app_id)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "worker", "run"],
            env={
                **os.environ,
                "CASESTREAM_HOME": str(tmp_path),
                "CASESTREAM_WORKER_INSTANCE": "w1",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        held.close()
    assert done.returncode != 0
    assert "CASESTREAM_WORKER_INSTANCE='w1'" in done.stderr and "already running" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
