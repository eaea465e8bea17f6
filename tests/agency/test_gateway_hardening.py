"""Attacks on the HTTP gateway: text JSON cannot hold, floods, slow bodies, tokens in URLs,
metrics without credentials.

The app tests run the real app (FastAPI TestClient; an in-memory schema registry, no Kafka:
what is accepted is checked in the outbox, the gateway's durable store). The transport tests
run the real `casestream gateway` command under uvicorn on 127.0.0.1 and talk to it over raw
sockets; the test stops the server and reads its log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from services.agency import gateway as gateway_module
from services.agency import json_text
from services.agency.gateway import GatewayConfig, create_app
from services.agency.http_guard import redact_target
from services.agency.rate_limit import RateLimiter, retry_after
from services.agency.tokens import TokenStore
from services.contracts.examples import example_event
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.settings import Settings
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
AGENCY = "20-INSP"


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity (what a strict client does)."""

    def refuse(name: str):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _good() -> dict:
    return example_event("case_opened", agency_id=AGENCY) | {"event_id": str(uuid.uuid4())}


def _offline_app(tmp_path: Path, **config) -> tuple[TestClient, TokenStore, str]:
    settings = replace(
        Settings.from_env(),
        home=tmp_path,
        kafka_bootstrap="127.0.0.1:9",
        registry_url="http://127.0.0.1:9/apis/ccompat/v7",
    )
    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create(AGENCY)
    cfg = GatewayConfig(
        outbox_dir=tmp_path / "outbox",
        max_event_age_days=0,
        shutdown_flush_seconds=0.2,
        **config,
    )
    return create_app(settings, store, config=cfg), store, token


@pytest.fixture
def app_client(tmp_path):
    registry = InMemorySchemaRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_module, "make_client", lambda *_a, **_k: registry)
        app, store, token = _offline_app(tmp_path)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, token


def _stored(client: TestClient, event_ids: list[str]) -> set[str]:
    ch = client.app.state.gateway.channel(AGENCY)
    with ch.lock:
        return ch.publisher.outbox.known(event_ids)


def _post_text(client: TestClient, token: str, text: str | bytes):
    body = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return client.post(
        "/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


# =========================================================================== JSON text


@pytest.mark.unit
@pytest.mark.parametrize(
    "bad, field, value",
    [
        ('{"event_id": "\\ud800"}', "event_id", "\\ud800"),
        ('{"case_id": "x\\udfff", "event_type": 3}', "case_id", "x\\udfff"),
        ('{"payload": {"\\ud800": 1}}', "payload.\\ud800", None),
        ('{"sequence": NaN}', "sequence", "NaN"),
        ('{"payload": {"damage_vnd": Infinity}}', "payload.damage_vnd", "Infinity"),
        ('{"payload": {"damage_vnd": -Infinity}}', "payload.damage_vnd", "-Infinity"),
        ('{"sequence": 1e999}', "sequence", "1e999"),
        ('{"agency_id": "20-INSP", "agency_id": "20-POLICE"}', "agency_id", None),
        ('{"payload": {"x": [1, {"y": NaN}]}}', "payload.x[1].y", "NaN"),
    ],
)
def test_text_json_cannot_hold_rejects_its_event_and_the_valid_one_is_stored(
    app_client, bad, field, value
):
    """A lone surrogate in a rejected value gave a 500 and a dropped connection after the
    valid event of the batch was stored; NaN made the answer invalid JSON."""
    client, token = app_client
    good = _good()
    response = _post_text(client, token, f'{{"events": [{json.dumps(good)}, {bad}]}}')
    assert response.status_code == 200, response.text[:500]
    body = strict_json(response.content.decode("utf-8"))  # valid UTF-8, strict JSON
    ok, rejected = body["results"]
    assert ok == {"index": 0, "event_id": good["event_id"], "status": "accepted"}
    assert rejected["status"] == "rejected"
    assert (rejected["error"]["field"], rejected["error"]["value"]) == (field, value)
    assert rejected["error"]["reason"]
    assert _stored(client, [good["event_id"]]) == {good["event_id"]}


@pytest.mark.unit
def test_surrogate_or_nan_in_an_otherwise_valid_event_is_not_stored(app_client):
    client, token = app_client
    surrogate, nan = _good(), _good()
    surrogate["payload"]["field"] = "PLACEHOLDER"
    text = json.dumps({"events": [surrogate]}).replace('"PLACEHOLDER"', '"land\\ud83d"')
    nan["sequence"] = 12345
    text2 = json.dumps({"events": [nan]}).replace("12345", "NaN")
    for body, event in ((text, surrogate), (text2, nan)):
        response = _post_text(client, token, body)
        assert response.status_code == 200, response.text[:300]
        (result,) = strict_json(response.text)["results"]
        assert result["status"] == "rejected", result
        assert _stored(client, [event["event_id"]]) == set()


@pytest.mark.unit
def test_request_level_errors_stay_strict_json(app_client):
    client, token = app_client
    cases = [
        ('{"events": [], "events": []}', 400, "appears more than once"),
        ('{"\\ud800": []}', 422, "unknown field"),
        ('{"events": NaN}', 422, "got number"),
        ("NaN", 422, "got number"),
        (b'{"events": ["\xed\xa0\x80"]}', 400, "UTF-8"),  # a surrogate encoded in UTF-8
    ]
    for body, status, needle in cases:
        response = _post_text(client, token, body)
        assert response.status_code == status, (body, response.text[:300])
        error = strict_json(response.content.decode("utf-8"))["error"]
        assert needle in error["message"], (body, error)


@pytest.mark.unit
def test_strict_json_parse_marks_what_json_cannot_hold():
    value, suspect = json_text.loads('{"a": [1.5, "x"], "b": {"c": null}}')
    assert value == {"a": [1.5, "x"], "b": {"c": None}} and not suspect
    assert json_text.first_problem(value) is None
    for text, path in [
        ('{"a": [1, NaN]}', "a[1]"),
        ('{"a": {"b": 1e400}}', "a.b"),
        ('{"a": "\\udbff"}', "a"),
        ('{"a": 1, "a": 2}', "a"),
        ("-Infinity", "<event>"),
    ]:
        value, suspect = json_text.loads(text)
        problem = json_text.first_problem(value)
        assert suspect and problem is not None and problem[0] == path, (text, problem)
    # a correctly paired surrogate escape is a character, not a problem
    value, _ = json_text.loads('{"a": "\\ud83d\\ude00"}')
    assert value == {"a": "\U0001f600"} and json_text.first_problem(value) is None


TEXT = st.text(st.characters(categories=["Cs", "L", "N", "P"]), max_size=8)  # Cs: surrogates


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=20,
    )
)
def test_rendered_answers_are_always_strict_utf8_json(value):
    """Whatever a handler puts in an answer (NaN, infinities, lone surrogates), the bytes are
    UTF-8 and strict JSON."""
    strict_json(json_text.dumps(value).decode("utf-8"))


# =========================================================================== rate limits


@pytest.mark.unit
def test_token_bucket_refills_and_names_the_wait():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # another key has its own bucket
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a", 10) == float("inf")  # can never fit
    assert RateLimiter(rate=0, burst=0).acquire("a", 1e9) == 0.0  # off
    assert retry_after(0.01) == "1" and retry_after(2.2) == "3"


@pytest.mark.unit
def test_request_flood_of_one_agency_gets_429_with_retry_after(tmp_path):
    app, store, token = _offline_app(tmp_path, rate_requests_per_second=0.01, rate_requests_burst=3)
    other, _ = store.create("20-POLICE")
    with TestClient(app) as client:
        statuses = []
        for _ in range(5):
            r = client.post("/v1/events", json={"events": []}, headers=_auth(token))
            statuses.append(r.status_code)
        assert statuses == [200, 200, 200, 429, 429]
        assert int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        assert error["code"] == "rate_limited" and "20-INSP" in error["message"]
        assert error["retry_after"] == int(r.headers["retry-after"])
        # the other agency is not throttled by 20-INSP's flood
        r = client.post("/v1/events", json={"events": []}, headers=_auth(other))
        assert r.status_code == 200


@pytest.mark.unit
def test_limiter_keys_chosen_by_clients_do_not_grow_without_bound():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2.0, clock=lambda: now[0], max_keys=100)
    for i in range(10_000):  # an address spray
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= 100

    limiter = RateLimiter(rate=1.0, burst=2.0, clock=lambda: now[0], max_keys=100)
    for i in range(99):
        limiter.acquire(f"k{i}")
    limiter.acquire("a", 2)  # drained
    now[0] += 1.0  # the k buckets are full again, "a" holds 1 token
    limiter.acquire("new")  # the 101st key: a prune forgets the full buckets only
    assert sorted(limiter._buckets) == ["a", "new"]
    assert limiter.acquire("a", 2) > 0  # "a" was not forgotten (no reset by a spray)


@pytest.mark.unit
def test_token_guessing_gets_429_and_valid_tokens_still_pass(tmp_path):
    app, _, token = _offline_app(
        tmp_path, rate_auth_failures_per_second=0.01, rate_auth_failures_burst=3
    )
    with TestClient(app) as client:
        statuses = []
        for i in range(5):
            guess = f"csgw_0123456789_{i:043d}"
            r = client.post("/v1/events", json={"events": []}, headers=_auth(guess))
            statuses.append(r.status_code)
        assert statuses == [401, 401, 401, 429, 429]
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "too_many_failed_authentications"
        assert client.post("/v1/events", json={"events": []}).status_code == 429  # no token
        # the same address with a valid token is not throttled (a shared proxy address)
        r = client.post("/v1/events", json={"events": []}, headers=_auth(token))
        assert r.status_code == 200, r.text


@pytest.mark.unit
def test_event_quota_gets_429_and_stores_nothing(tmp_path):
    registry = InMemorySchemaRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_module, "make_client", lambda *_a, **_k: registry)
        app, _, token = _offline_app(
            tmp_path, max_events=3, rate_events_per_second=0.01, rate_events_burst=3
        )
        with TestClient(app) as client:
            first = [_good() for _ in range(3)]
            r = client.post("/v1/events", json={"events": first}, headers=_auth(token))
            assert r.status_code == 200 and r.json()["accepted"] == 3
            second = [_good()]
            r = client.post("/v1/events", json={"events": second}, headers=_auth(token))
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert "event quota" in r.json()["error"]["message"]
            assert _stored(client, [second[0]["event_id"]]) == set()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# =========================================================================== URLs, metrics


@pytest.mark.unit
@pytest.mark.parametrize(
    "query",
    ["token={t}", "access_token={t}", "api_key={t}", "Access-Token=x", "wait=true&x={t}", "{t}"],
)
def test_token_in_the_url_is_refused(tmp_path, query):
    app, _, token = _offline_app(tmp_path)
    with TestClient(app) as client:
        url = "/v1/events?" + query.format(t=token)
        r = client.post(url, json={"events": []}, headers=_auth(token))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "credentials_in_url"
        assert "Authorization: Bearer" in r.json()["error"]["message"]
        assert token not in r.text
        assert client.get("/healthz?" + query.format(t=token)).status_code == 400


@pytest.mark.unit
def test_access_log_lines_are_redacted():
    assert redact_target("/v1/events?wait=true&timeout=5") == "/v1/events?wait=true&timeout=5"
    assert redact_target("/v1/events?token=csgw_a_b") == "/v1/events?token=REDACTED"
    assert redact_target("/x?wait=csgw_abc") == "/x?wait=REDACTED"
    assert redact_target("/csgw_abc_def") == "/REDACTED"
    assert redact_target("/v1/events?hunter2") == "/v1/events?REDACTED=REDACTED"
    assert redact_target("/v1/events?csgw_abc_def") == "/v1/events?REDACTED=REDACTED"
    assert redact_target("/v1/events?password=x") == "/v1/events?password=REDACTED"


@pytest.mark.unit
def test_metrics_need_the_admin_token_on_the_public_address(tmp_path):
    app, _, token = _offline_app(tmp_path)
    with TestClient(app) as client:
        r = client.get("/metrics")
        assert r.status_code == 404 and "admin address" in r.json()["error"]["message"]
        assert "casestream_gateway" not in r.text
    admin = "admin-" + uuid.uuid4().hex
    app, _, token = _offline_app(tmp_path / "2", metrics_token=admin)
    with TestClient(app) as client:
        for headers in ({}, _auth(token), _auth(admin + "x"), {"Authorization": admin}):
            r = client.get("/metrics", headers=headers)
            assert r.status_code == 401 and "casestream_gateway" not in r.text, headers
        r = client.get("/metrics", headers=_auth(admin))
        assert r.status_code == 200 and "casestream_gateway_auth_failures" in r.text


# =========================================================================== real server


@pytest.fixture
def server(tmp_path):
    """`casestream gateway` under uvicorn on 127.0.0.1 (no Kafka behind it): yields the public
    and admin ports and the token; the log is read after the test stopped the server."""
    from tests.conftest import free_ports

    port, admin_port = free_ports(2)
    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create(AGENCY)
    env = {
        **os.environ,
        "CASESTREAM_HOME": str(tmp_path),
        "CASESTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "CASESTREAM_REGISTRY_URL": "http://127.0.0.1:9/apis/ccompat/v7",
        "CASESTREAM_GATEWAY_OUTBOX_DIR": str(tmp_path / "outbox"),
        "CASESTREAM_GATEWAY_BODY_TIMEOUT_SECONDS": "2",
    }
    log = tmp_path / "gateway.log"
    code = "from services.agency.gateway_command import gateway; gateway()"
    args = ["--port", str(port), "--tokens-file", str(store.path)]
    args += ["--metrics-addr", f"127.0.0.1:{admin_port}", "--log-level", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=out, stderr=out
        )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return proc.poll() is not None

    try:
        wait_for(up, timeout=60, what="the gateway to listen")
        assert proc.poll() is None, log.read_text()
        info = {"port": port, "admin_port": admin_port, "token": token, "log": log}

        def stop() -> str:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=45)
            return log.read_text()

        info["stop"] = stop
        yield info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until_closed(sock: socket.socket, limit: float = 60.0) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within ``limit``."""
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        return data, False


@pytest.mark.integration
def test_half_sent_body_is_cut_with_408_and_the_connection_closed(server):
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {server['token']}\r\nContent-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server["port"])) as sock:
        sock.sendall(head.encode() + b'{"events": [')
        data, closed = _read_until_closed(sock)
    held = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert closed, "the server kept the connection open"
    assert b"body_timeout" in data and b"connection: close" in data.lower()
    assert held < 60  # cut by the server (2 s configured), not by the test's limit

    # trickling a byte now and then does not extend the deadline
    with socket.create_connection(("127.0.0.1", server["port"])) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.5)
        answer = b""
        for _ in range(20):
            try:
                sock.sendall(b" ")
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]

    # a body the app does not read (no token: 401) is not waited for either
    no_token = head.replace(f"Authorization: Bearer {server['token']}\r\n", "")
    with socket.create_connection(("127.0.0.1", server["port"])) as sock:
        sock.sendall(no_token.encode() + b'{"ev')
        data, closed = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 401") and closed, data[:200]


@pytest.mark.integration
def test_half_sent_headers_are_cut_with_408_and_the_connection_closed(server):
    """Slowloris before any request exists: half a request line, or a second request's headers
    trickled on a kept-alive connection."""
    with socket.create_connection(("127.0.0.1", server["port"])) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        data, closed = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and b"header_timeout" in data, data[:200]
    assert closed, "the server kept the connection open"

    with socket.create_connection(("127.0.0.1", server["port"])) as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(30)
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        data, closed = _read_until_closed(sock)
    assert b"HTTP/1.1 408" in data and closed, data[-300:]


@pytest.mark.integration
def test_tokens_in_urls_are_refused_and_never_reach_the_log(server):
    base = f"http://127.0.0.1:{server['port']}"
    token = server["token"]
    secret = token.split("_", 2)[2]
    for url in (
        f"{base}/v1/events?access_token={token}",
        f"{base}/v1/events?wait=true&token={token}",
        f"{base}/healthz?{token}",
    ):
        r = httpx.post(url, json={"events": []}, timeout=30)
        assert r.status_code in (400, 405), r.text  # /healthz is GET: 400 before routing
        assert r.status_code == 400 and r.json()["error"]["code"] == "credentials_in_url"
    r = httpx.post(
        f"{base}/v1/events?wait=true&timeout=1",
        json={"events": []},
        headers=_auth(token),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    text = server["stop"]()
    assert "POST /v1/events?wait=true&timeout=1" in text  # the access log is on
    assert "access_token=REDACTED" in text
    assert token not in text and secret not in text


@pytest.mark.integration
def test_metrics_only_on_the_admin_address(server):
    r = httpx.get(f"http://127.0.0.1:{server['port']}/metrics", timeout=30)
    assert r.status_code == 404 and "casestream_gateway" not in r.text
    admin = httpx.get(f"http://127.0.0.1:{server['admin_port']}/metrics", timeout=30)
    assert admin.status_code == 200
    assert "casestream_gateway_auth_failures" in admin.text


# =========================================================================== real Kafka


@pytest.mark.integration
def test_mixed_batch_with_text_json_cannot_hold_reaches_kafka_as_answered(stack, tmp_path):
    """Through the session's real Kafka and registry: the valid events of a batch that also
    holds a lone surrogate, NaN, 1e999 and a duplicate key are delivered once each, the others
    never; the answer is strict JSON."""
    from tests.agency.test_gateway import consume

    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create(AGENCY)
    config = GatewayConfig(outbox_dir=tmp_path / "outbox")
    good = [_good() for _ in range(3)]
    for event in good:
        event["occurred_at"] = "2025-06-01T09:30:00+07:00"
    bad = [_good() for _ in range(4)]
    texts = [json.dumps(e) for e in bad]
    texts[0] = texts[0].replace(f'"{bad[0]["case_id"]}"', '"\\ud800"')
    texts[1] = texts[1].replace('"payload": {', '"sequence": NaN, "payload": {')
    texts[2] = texts[2].replace('"payload": {', '"sequence": 1e999, "payload": {')
    texts[3] = texts[3].replace("{", '{"agency_id": "20-POLICE", ', 1)
    parts = [json.dumps(good[0]), texts[0], texts[1], json.dumps(good[1])]
    parts += [texts[2], texts[3], json.dumps(good[2])]
    body = '{"events": [' + ", ".join(parts) + "]}"
    with TestClient(create_app(stack, store, config=config), raise_server_exceptions=False) as c:
        r = c.post(
            "/v1/events?wait=true&timeout=60",
            content=body.encode(),
            headers={**_auth(token), "Content-Type": "application/json"},
        )
    assert r.status_code == 200, r.text[:500]
    answer = strict_json(r.content.decode("utf-8"))
    statuses = [x["status"] for x in answer["results"]]
    assert statuses == ["accepted", "rejected", "rejected", "accepted"] + ["rejected"] * 2 + [
        "accepted"
    ]
    assert answer["delivered"] == 3
    good_ids = {e["event_id"] for e in good}
    ids = [*good_ids, *(e["event_id"] for e in bad)]
    found = consume(stack, AGENCY, ids, expect=good_ids)
    assert {eid: len(copies) for eid, copies in found.items()} == dict.fromkeys(good_ids, 1)
