"""The status page: one auto-refreshing HTML page with the figures of `casestream health`.

``casestream ops serve --port 8090`` runs a small threaded HTTP server (standard library):

| path | answer |
| --- | --- |
| ``/`` | the page (services/ops/static/status.html: plain HTML, inline CSS/JS, SVG charts; no build step) with the latest report embedded, so it renders at once |
| ``/api/status`` | JSON: the latest report (services/ops/health.py `report`) and a short history of lag, throughput, DLQ and latency samples for the charts |
| ``/healthz`` | ``ok`` |

A background thread collects the report every ``interval`` seconds, so a page reload or many
viewers never hammer Kafka or ClickHouse; the page polls ``/api/status`` every 5 seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.settings import Settings

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "status.html"
DATA_PLACEHOLDER = "/*INITIAL_DATA*/null"
HISTORY = 720  # samples kept for the charts (an hour at the default 5 s interval)


def sample(rep: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of one report that the page charts over time."""
    figs = rep.get("figures", {})
    groups = (figs.get("lag") or {}).get("groups", [])
    return {
        "t": rep.get("checked_at"),
        "status": rep.get("status"),
        "lag": sum(g.get("total_lag", 0) for g in groups if "total_lag" in g),
        "processed_per_second": (figs.get("throughput") or {}).get("processed_per_second"),
        "produced_per_second": (figs.get("throughput") or {}).get("produced_per_second"),
        "dlq_total": (figs.get("dlq") or {}).get("total"),
        "p99_seconds": (figs.get("latency") or {}).get("p99_seconds"),
    }


class StatusCollector:
    """Keeps the latest report and a history of samples, refreshed by a daemon thread."""

    def __init__(self, settings: Settings, interval: float = 5.0, report_fn=None) -> None:
        from services.ops.health import report

        self.settings = settings
        self.interval = interval
        self._report_fn = report_fn or (lambda: report(settings))
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> dict[str, Any]:
        try:
            rep = self._report_fn()
        except Exception as exc:  # noqa: BLE001 - the page shows the error instead
            log.exception("health report failed")
            rep = {
                "status": "fail",
                "checked_at": time.time(),
                "figures": {},
                "checks": [{"name": "report", "status": "fail", "summary": str(exc)}],
            }
        with self._lock:
            self._latest = rep
            self._history.append(sample(rep))
        return rep

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latest = self._latest
            history = list(self._history)
        if latest is None:
            latest = self.refresh()
            history = [sample(latest)]
        return {
            "report": latest,
            "history": history,
            "interval": self.interval,
            "served_at": time.time(),
        }

    def start(self) -> StatusCollector:
        def loop() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                self.refresh()
                self._stop.wait(max(0.5, self.interval - (time.monotonic() - started)))

        self._thread = threading.Thread(target=loop, name="status-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def render_page(data: dict[str, Any] | None) -> bytes:
    """The page with `data` embedded (``</`` escaped so it cannot close the script)."""
    payload = json.dumps(data, default=str, ensure_ascii=False).replace("</", "<\\/")
    return PAGE.read_text(encoding="utf-8").replace(DATA_PLACEHOLDER, payload, 1).encode()


def make_handler(collector: StatusCollector):
    class Handler(BaseHTTPRequestHandler):
        server_version = "casestream-status/1"

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html", "/status"):
                self._send(200, render_page(collector.snapshot()), "text/html; charset=utf-8")
            elif path == "/api/status":
                body = json.dumps(collector.snapshot(), default=str, ensure_ascii=False)
                self._send(200, body.encode(), "application/json")
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("status page: " + format, *args)

    return Handler


def make_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8090,
    interval: float = 5.0,
    collector: StatusCollector | None = None,
) -> tuple[ThreadingHTTPServer, StatusCollector]:
    collector = collector or StatusCollector(settings, interval)
    server = ThreadingHTTPServer((host, port), make_handler(collector))
    server.daemon_threads = True
    return server, collector


def serve(
    settings: Settings, host: str = "127.0.0.1", port: int = 8090, interval: float = 5.0
) -> None:
    """Serve until interrupted."""
    server, collector = make_server(settings, host, port, interval)
    collector.start()
    print(
        f"status page on http://{host}:{server.server_address[1]}/ "
        f"(JSON at /api/status, refreshed every {interval:g}s)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        server.server_close()
