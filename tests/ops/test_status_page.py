"""The status page (`casestream ops serve`) rendered by headless Chromium, with a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.agency.publisher import Publisher
from services.settings import Settings
from services.stack.process import free_ports
from tests.helpers import REPO, make_event, new_tag, wait_for

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """Path of chromium; installed with apt-get if missing, else the test is skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {exc}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium still missing after `apt-get install -y chromium`")
    return found


@pytest.fixture(scope="module")
def page_url(stack: Settings, worker) -> Iterator[str]:
    tag = new_tag()
    case = f"{tag}:22-INSP/2024/0001"
    with Publisher(None, stack) as operator:
        operator.publish(
            make_event(
                "case_opened",
                "22-INSP",
                case,
                "2024-04-01T08:00:00+07:00",
                {
                    "origin": "press",
                    "field": "land",
                    "subject_kind": "official",
                    "prominent": False,
                },
            )
        )
    client = stack.clickhouse_client()
    wait_for(
        lambda: (
            client.command(
                "SELECT count() FROM events WHERE case_id = {c:String}", parameters={"c": case}
            )
            == 1
        ),
        timeout=180,
        what="the event",
    )
    wait_for(
        lambda: client.command("SELECT count() FROM probes") > 0,
        timeout=120,
        what="a latency probe",
    )
    port = free_ports(1)[0]
    log = open(stack.home / "logs" / f"status-{tag}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "ops",
            "serve",
            "--port",
            str(port),
            "--interval",
            "2",
        ],
        cwd=REPO,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return urllib.request.urlopen(url + "/healthz", timeout=2).read() == b"ok\n"
        except OSError:
            return False

    try:
        wait_for(answers, timeout=60, what="the status server")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_json_endpoint_has_every_figure(page_url):
    data = json.loads(urllib.request.urlopen(page_url + "/api/status", timeout=30).read())
    report = data["report"]
    assert {c["name"] for c in report["checks"]} >= {
        "broker",
        "registry",
        "clickhouse",
        "lag",
        "throughput",
        "dlq",
        "freshness",
        "sequence_gaps",
        "latency",
        "rollups",
    }
    figures = report["figures"]
    assert all(figures["reachability"][k]["ok"] for k in ("broker", "registry", "clickhouse"))
    assert "22-INSP" in {a["agency_id"] for a in figures["freshness"]["agencies"]}
    assert figures["lag"]["groups"][0]["partitions"]
    assert data["history"] and data["history"][-1]["t"] == report["checked_at"]


def test_the_page_renders_in_headless_chromium(page_url, tmp_path: Path):
    browser = chromium()
    shot = tmp_path / "status.png"
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        proc = subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1280,1600",
                "--virtual-time-budget=5000",
                page_url + "/",
            ],
            capture_output=True,
            timeout=120,
        )
        assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
        assert shot.stat().st_size > 20_000  # a blank 1280x1600 PNG is a few kB
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        keep = os.environ.get("CASESTREAM_STATUS_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)

        dom = subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                "--virtual-time-budget=5000",
                page_url + "/",
            ],
            capture_output=True,
            timeout=120,
        ).stdout.decode()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    # The DOM after the script ran: every section filled in with the figures.
    assert "stream health" in dom
    for name in (
        "broker",
        "registry",
        "clickhouse",
        "lag",
        "throughput",
        "dlq",
        "freshness",
        "sequence_gaps",
        "latency",
        "rollups",
    ):
        assert f"<b>{name}</b>" in dom, name
    assert "22-INSP" in dom  # the agency freshness table
    assert "loading…" not in dom  # the banner shows the verdict
    assert any(word in dom for word in ("healthy", "unhealthy", "warning"))
    assert "<path" in dom  # an SVG chart was drawn
    assert "-facts-by-case" in dom or "partitions caught up" in dom
