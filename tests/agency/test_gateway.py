"""The HTTP gateway: tokens (unit), request handling (unit, no servers) and publishing through the
real Kafka + registry of the session's stack (integration)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from services.agency.gateway import GatewayConfig, create_app
from services.agency.gateway_command import tokens as tokens_cli
from services.agency.tokens import (
    TOKENS_FILE_ENV,
    TokenStore,
    TokenStoreError,
    default_tokens_path,
    hash_token,
    token_id_of,
)
from services.settings import Settings
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
METRICS_TOKEN = "admin-" + uuid.uuid4().hex


def _event(event_type: str, agency_id: str, case_id: str | None = None, **payload) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "case_id": case_id or f"{agency_id}/2024/{uuid.uuid4().hex[:10]}",
        "agency_id": agency_id,
        "occurred_at": "2024-03-05T09:30:00+07:00",
        "payload": payload,
    }


def _opened(agency_id: str = "20-INSP", case_id: str | None = None) -> dict:
    return _event(
        "case_opened",
        agency_id,
        case_id,
        origin="inspection",
        field="land",
        subject_kind="official",
        prominent=False,
    )


def _transferred(agency_id: str = "20-INSP", case_id: str | None = None, to="20-POLICE") -> dict:
    return _event(
        "case_transferred",
        agency_id,
        case_id,
        transfer_id=f"T-{uuid.uuid4().hex[:8]}",
        to_agency_id=to,
        reason="signs_of_crime",
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# =========================================================================== tokens (unit)


@pytest.mark.unit
def test_token_is_stored_hashed_and_resolves_to_its_agency(tmp_path):
    store = TokenStore(tmp_path / "gateway" / "tokens.json")
    token, record = store.create("20-INSP", label="case system")

    assert token.startswith("csgw_") and token_id_of(token) == record.id
    assert record.sha256 == hash_token(token) and len(record.sha256) == 64
    text = store.path.read_text()
    secret = token.split("_", 2)[2]  # the secret is URL-safe base64 and may itself hold "_"
    assert len(secret) == 43
    assert token not in text and secret not in text
    assert json.loads(text)["tokens"][0]["sha256"] == hash_token(token)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600

    assert store.agency_for(token) == "20-INSP"
    assert store.agency_for(token + "x") is None
    assert store.agency_for("") is None and store.agency_for(None) is None
    other, _ = store.create("20-POLICE")
    assert store.agency_for(other) == "20-POLICE"
    assert store.agencies() == ["20-INSP", "20-POLICE"]
    # a second store on the same file (the gateway while the CLI writes) sees the same tokens
    assert TokenStore(store.path).agency_for(token) == "20-INSP"


@pytest.mark.unit
def test_revoke_by_id_or_token_and_reload_by_a_running_reader(tmp_path):
    path = tmp_path / "tokens.json"
    writer, reader = TokenStore(path), TokenStore(path)
    first, rec1 = writer.create("20-INSP")
    second, _ = writer.create("20-INSP")
    assert reader.agency_for(first) == "20-INSP"

    revoked = writer.revoke(rec1.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert reader.agency_for(first) is None  # picked up without restart
    assert reader.agency_for(second) == "20-INSP"
    assert writer.revoke(rec1.id).revoked_at == revoked.revoked_at  # idempotent

    writer.revoke(second)  # the token itself works too
    assert reader.agency_for(second) is None
    assert reader.agencies() == []
    assert [r.active for r in reader.records()] == [False, False]
    assert reader.records(include_revoked=False) == []

    with pytest.raises(KeyError):
        writer.revoke("0123456789")
    with pytest.raises(TokenStoreError):
        writer.revoke("not-an-id")


@pytest.mark.unit
def test_token_store_rejects_unknown_agencies_and_broken_files(tmp_path, monkeypatch):
    store = TokenStore(tmp_path / "tokens.json")
    with pytest.raises(TokenStoreError, match="unknown agency"):
        store.create("20-NOPE")
    with pytest.raises(TokenStoreError, match="malformed"):
        store.create("INSP")
    assert store.records() == [] and not store.path.exists()

    store.path.write_text("{not json")
    with pytest.raises(TokenStoreError, match="not valid JSON"):
        store.agency_for("csgw_0123456789_" + "a" * 43)

    monkeypatch.setenv(TOKENS_FILE_ENV, str(tmp_path / "prod" / "tokens.json"))
    assert default_tokens_path() == tmp_path / "prod" / "tokens.json"
    monkeypatch.delenv(TOKENS_FILE_ENV)
    settings = replace(Settings.from_env(), home=tmp_path / "home")
    assert default_tokens_path(settings) == tmp_path / "home" / "gateway" / "tokens.json"


@pytest.mark.unit
def test_tokens_cli_create_list_revoke(tmp_path):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2 always keeps stderr apart
    path = tmp_path / "tokens.json"
    created = runner.invoke(tokens_cli, ["--file", str(path), "create", "20-INSP", "--label", "x"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token_id_of(token) is not None  # stdout holds the token and nothing else
    assert TokenStore(path).agency_for(token) == "20-INSP"

    listed = runner.invoke(tokens_cli, ["--file", str(path), "list", "--json"])
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["agency_id"], r["label"]) for r in rows] == [
        (token_id_of(token), "20-INSP", "x")
    ]
    assert token not in listed.output

    revoked = runner.invoke(tokens_cli, ["--file", str(path), "revoke", token_id_of(token)])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert TokenStore(path).agency_for(token) is None
    assert (
        json.loads(runner.invoke(tokens_cli, ["--file", str(path), "list", "--json"]).stdout) == []
    )

    bad = runner.invoke(tokens_cli, ["--file", str(path), "create", "99-NOPE"])
    assert bad.exit_code != 0 and "unknown agency" in bad.stderr


# =========================================================================== requests (unit)


@pytest.fixture
def offline(tmp_path):
    """An app whose Kafka is never contacted: only requests refused before publishing."""
    settings = replace(Settings.from_env(), home=tmp_path, kafka_bootstrap="127.0.0.1:9")
    store = TokenStore(tmp_path / "tokens.json")
    token, _ = store.create("20-INSP")
    config = GatewayConfig(max_body_bytes=4096, max_events=5, outbox_dir=tmp_path / "outbox")
    with TestClient(create_app(settings, store, config=config)) as client:
        yield client, store, token


@pytest.mark.unit
def test_missing_unknown_and_revoked_tokens_get_401(offline):
    client, store, token = offline
    body = {"events": [_opened()]}
    r = client.post("/v1/events", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/v1/events", json=body, headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 401
    r = client.post("/v1/events", json=body, headers=_bearer("csgw_0123456789_" + "a" * 43))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert "unknown or revoked" in r.json()["error"]["message"]

    store.revoke(token_id_of(token))
    r = client.post("/v1/events", json=body, headers=_bearer(token))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert token not in r.text


@pytest.mark.unit
def test_request_limits_and_malformed_bodies(offline):
    client, _, token = offline
    auth = _bearer(token)
    json_auth = {**auth, "Content-Type": "application/json"}

    big = client.post("/v1/events", content=b" " * 5000, headers=json_auth)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "body_too_large" and "4096 bytes" in big.text

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b" " * 1000

    streamed = client.post("/v1/events", content=chunks(), headers=json_auth)
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"

    many = client.post("/v1/events", json={"events": [{}] * 6}, headers=auth)
    assert many.status_code == 413
    assert many.json()["error"] == {
        "code": "too_many_events",
        "message": "batch has 6 events; at most 5 per request (split the batch)",
        "limit": 5,
        "events": 6,
    }

    bad = client.post("/v1/events", content=b'{"events": [\n  {"a": 1,}\n]}', headers=json_auth)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["code"] == "malformed_json" and (error["line"], error["column"]) == (2, 11)
    assert "line 2 column 11" in error["message"]

    not_utf8 = client.post("/v1/events", content=b'{"events": ["\xff"]}', headers=json_auth)
    assert not_utf8.status_code == 400 and "UTF-8" in not_utf8.json()["error"]["message"]

    text = client.post(
        "/v1/events", content=b'{"events": []}', headers={**auth, "Content-Type": "text/plain"}
    )
    assert text.status_code == 415 and "application/json" in text.json()["error"]["message"]
    none = client.post("/v1/events", content=b'{"events": []}', headers=auth)
    assert none.status_code == 415

    for body, needle in [([], "got array"), ({"evts": []}, "'evts'"), ({"events": 3}, "number")]:
        r = client.post("/v1/events", json=body, headers=auth)
        assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text


@pytest.mark.unit
def test_events_older_than_the_horizon_and_implausible_amounts_are_refused_at_the_edge(offline):
    client, _, token = offline
    back_dated = {**_opened(), "occurred_at": "1970-01-01T00:00:01Z"}
    six_years = (datetime.now(UTC) - timedelta(days=6 * 365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = {**_opened(), "event_id": str(uuid.uuid4()), "occurred_at": six_years}
    huge = _opened()
    huge["event_id"] = str(uuid.uuid4())
    huge["payload"] = {**huge["payload"], "damage_vnd": 10**15 + 1}
    r = client.post("/v1/events", json={"events": [back_dated, old, huge]}, headers=_bearer(token))
    assert r.status_code == 200
    first, second, third = r.json()["results"]
    for result, event in ((first, back_dated), (second, old)):
        assert result["status"] == "rejected"
        assert result["error"]["field"] == "occurred_at"
        assert result["error"]["value"] == event["occurred_at"]
        assert result["error"]["reason"].startswith("is more than 1827 days old")
        assert "casestream publish FILE" in result["error"]["reason"]
    assert third["error"]["field"] == "payload.damage_vnd"
    assert third["error"]["value"] == 10**15 + 1
    assert "not a plausible amount" in third["error"]["reason"]


@pytest.mark.unit
def test_invalid_events_are_rejected_one_by_one_without_kafka(offline):
    client, _, token = offline
    wrong_agency = _opened("20-POLICE")
    no_offset = {**_opened(), "occurred_at": "2024-03-05T09:30:00"}
    r = client.post(
        "/v1/events", json={"events": [wrong_agency, no_offset, "x", {}]}, headers=_bearer(token)
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (0, 0, 4)
    first, second, third, fourth = body["results"]
    assert first["index"] == 0 and first["event_id"] == wrong_agency["event_id"]
    assert first["error"]["field"] == "agency_id" and first["error"]["value"] == "20-POLICE"
    assert "20-INSP" in first["error"]["reason"]
    assert second["error"]["field"] == "occurred_at"
    assert second["error"]["value"] == "2024-03-05T09:30:00"
    assert third["error"] == {
        "field": "<event>",
        "value": "x",
        "reason": "event must be a JSON object",
    }
    assert fourth["error"]["field"] == "event_id" and fourth["event_id"] is None


@pytest.mark.unit
def test_openapi_describes_the_endpoint(offline):
    client, _, _ = offline
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/v1/events"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/EventBatch"}
    assert body["examples"]["transfer"]["value"]["events"][0]["event_type"] == "case_transferred"
    schemas = doc["components"]["schemas"]
    assert schemas["EventBatch"]["properties"]["events"]["items"] == {
        "$ref": "#/components/schemas/EventIn"
    }
    event = schemas["EventIn"]
    assert "case_transferred" in event["properties"]["event_type"]["enum"]
    assert "to_agency_id" in event["properties"]["payload"]["description"]
    assert event["examples"][0]["payload"]["to_agency_id"] == "20-POLICE"
    assert set(post["responses"]) >= {"200", "400", "401", "413", "415", "422"}
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchResult"
    }
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert {"/healthz", "/metrics"} <= set(doc["paths"])
    assert client.get("/docs").status_code == 200


# =========================================================================== with the stack


def consume(settings: Settings, agency_id: str, event_ids, expect=None, timeout: float = 60):
    """Every copy of the given events in the agency topic: {event_id: [(key, decoded)]}.

    Reads every partition to its end once the ``expect`` ids (default: all) have been seen.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from services.contracts.codec import decode
    from services.contracts.registry import SchemaCache, make_client

    wanted = set(event_ids)
    expected = wanted if expect is None else set(expect)
    topic = f"agency.{agency_id}.events"
    lookup = SchemaCache(make_client(settings.registry_url))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-gateway-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    found: dict[str, list] = defaultdict(list)
    try:
        partitions = wait_for(
            lambda: consumer.list_topics(topic, timeout=5).topics[topic].partitions,
            timeout=timeout,
            what=f"topic {topic}",
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if set(found) >= expected and at_end >= set(partitions):
                        break
                continue
            at_end.discard(msg.partition())
            try:
                event = decode(msg.value(), lookup)
            except Exception:  # noqa: BLE001 - not ours: ours are found below or the test fails
                # Other tests write deliberately broken messages to the same agency topic (the
                # dead-letter tests: junk whose "schema id" is a text, or another subject's
                # non-record schema), whichever order the tests ran in.
                continue
            if event["event_id"] in wanted:
                found[event["event_id"]].append((msg.key().decode(), event))
    finally:
        consumer.close()
    return dict(found)


@pytest.fixture(scope="module")
def gateway_tokens(tmp_path_factory):
    store = TokenStore(tmp_path_factory.mktemp("gateway") / "tokens.json")
    return store, store.create("20-INSP")[0], store.create("20-POLICE")[0]


@pytest.fixture(scope="module")
def client(stack, gateway_tokens, tmp_path_factory):
    config = GatewayConfig(
        outbox_dir=tmp_path_factory.mktemp("gateway-outbox"), metrics_token=METRICS_TOKEN
    )
    with TestClient(create_app(stack, gateway_tokens[0], config=config)) as c:
        yield c


@pytest.mark.integration
def test_valid_batch_is_accepted_and_lands_in_kafka(stack, client, gateway_tokens):
    _, insp, _ = gateway_tokens
    case_id = f"20-INSP/2024/{uuid.uuid4().hex[:8]}"
    events = [_opened(case_id=case_id), _transferred(case_id=case_id)]
    events[0]["event_id"] = events[0]["event_id"].upper()  # normalized to lower case

    r = client.post(
        "/v1/events?wait=true&timeout=30", json={"events": events}, headers=_bearer(insp)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [e["event_id"].lower() for e in events]
    assert body["results"] == [
        {"index": i, "event_id": ids[i], "status": "accepted", "delivered": True} for i in range(2)
    ]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, 0)
    assert (body["delivered"], body["pending"]) == (2, 0)

    found = consume(stack, "20-INSP", ids)
    assert {eid: len(copies) for eid, copies in found.items()} == {ids[0]: 1, ids[1]: 1}
    key, transferred = found[ids[1]][0]
    assert key == case_id
    assert transferred["event_type"] == "case_transferred"
    assert transferred["agency_id"] == "20-INSP"
    assert transferred["payload"]["to_agency_id"] == "20-POLICE"
    assert found[ids[0]][0][1]["utc_offset_minutes"] == 420


@pytest.mark.integration
def test_default_answer_is_after_the_outbox_and_delivery_follows(stack, client, gateway_tokens):
    _, insp, _ = gateway_tokens
    event = _opened()
    r = client.post("/v1/events", json={"events": [event]}, headers=_bearer(insp))
    assert r.status_code == 200
    assert r.json()["results"] == [
        {"index": 0, "event_id": event["event_id"], "status": "accepted"}
    ]
    assert "delivered" not in r.json()
    found = consume(stack, "20-INSP", [event["event_id"]])
    assert len(found[event["event_id"]]) == 1
    gateway = client.app.state.gateway
    wait_for(lambda: gateway.health()["outbox_pending"]["20-INSP"] == 0, what="outbox drained")


@pytest.mark.integration
def test_token_of_another_agency_cannot_publish_its_events(stack, client, gateway_tokens):
    _, insp, police = gateway_tokens
    foreign = _opened("20-INSP")
    own = _event("transfer_received", "20-POLICE", transfer_id="T-20-INSP-1")
    r = client.post(
        "/v1/events?wait=true", json={"events": [foreign, own]}, headers=_bearer(police)
    )
    assert r.status_code == 200
    rejected, accepted = r.json()["results"]
    assert rejected["status"] == "rejected" and rejected["event_id"] == foreign["event_id"]
    assert rejected["error"]["field"] == "agency_id"
    assert rejected["error"]["value"] == "20-INSP"
    assert "20-POLICE" in rejected["error"]["reason"]
    assert accepted["status"] == "accepted" and accepted["delivered"] is True

    unknown = client.post("/v1/events", json={"events": [foreign]}, headers=_bearer("csgw_nope"))
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_token"

    assert consume(stack, "20-INSP", [foreign["event_id"]], expect=[]) == {}


@pytest.mark.integration
def test_duplicate_event_id_is_reported_and_delivered_once(stack, client, gateway_tokens):
    _, insp, _ = gateway_tokens
    first, second = _opened(), _opened()
    url = "/v1/events?wait=true"
    r1 = client.post(url, json={"events": [first]}, headers=_bearer(insp))
    assert r1.json()["results"][0]["status"] == "accepted"

    changed = {**first, "sequence": 7}  # same event_id: the first version wins
    r2 = client.post(url, json={"events": [changed, second, second]}, headers=_bearer(insp))
    body = r2.json()
    assert [r["status"] for r in body["results"]] == ["duplicate", "accepted", "duplicate"]
    assert [r["delivered"] for r in body["results"]] == [True, True, True]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 2, 0)

    found = consume(stack, "20-INSP", [first["event_id"], second["event_id"]])
    assert {eid: len(copies) for eid, copies in found.items()} == {
        first["event_id"]: 1,
        second["event_id"]: 1,
    }
    assert found[first["event_id"]][0][1]["sequence"] is None


@pytest.mark.integration
def test_mixed_batch_accepts_the_good_events(stack, client, gateway_tokens):
    _, insp, _ = gateway_tokens
    good1, good2 = _opened(), _transferred()
    bad_receiver = _transferred(to="20-NOPE")
    bad_field = _opened()
    bad_field["payload"]["field"] = "fishing"
    batch = [good1, bad_receiver, good2, bad_field]
    r = client.post("/v1/events?wait=true", json={"events": batch}, headers=_bearer(insp))
    body = r.json()
    assert [x["status"] for x in body["results"]] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert (body["accepted"], body["rejected"], body["delivered"]) == (2, 2, 2)
    receiver_error = body["results"][1]["error"]
    assert receiver_error["field"] == "payload.to_agency_id"
    assert receiver_error["value"] == "20-NOPE"
    assert "unknown agency" in receiver_error["reason"]
    field_error = body["results"][3]["error"]
    assert (field_error["field"], field_error["value"]) == ("payload.field", "fishing")
    assert "must be one of" in field_error["reason"]

    ids = [e["event_id"] for e in batch]
    good = {good1["event_id"], good2["event_id"]}
    found = consume(stack, "20-INSP", ids, expect=good)
    assert set(found) == good


@pytest.mark.integration
def test_healthz_and_metrics(client, gateway_tokens):
    _, insp, _ = gateway_tokens
    # One accepted and one refused event of its own: the figures below must not depend on
    # which tests of this module ran before.
    mixed = {"events": [_opened(), _opened("20-POLICE")]}
    posted = client.post("/v1/events?wait=true", json=mixed, headers=_bearer(insp))
    assert [r["status"] for r in posted.json()["results"]] == ["accepted", "rejected"]
    health = client.get("/healthz?strict=true")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert health.json()["kafka"]["reachable"] is True
    assert health.json()["registry"]["reachable"] is True

    assert client.get("/metrics").status_code == 401  # per-agency counts are not public
    metrics = client.get("/metrics", headers=_bearer(METRICS_TOKEN))
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'casestream_gateway_events_total{agency_id="20-INSP",status="accepted"}' in text
    assert (
        'casestream_gateway_events_rejected_total{agency_id="20-INSP",field="agency_id",'
        'reason="agency_mismatch"}' in text
    )
    assert 'casestream_gateway_request_duration_seconds_bucket{le="0.1",method="POST",' in text
    assert 'route="/v1/events",status="200"' in text
    assert 'casestream_gateway_outbox_pending{agency_id="20-INSP"}' in text


@pytest.mark.integration
def test_events_accepted_while_kafka_is_down_are_sent_after_restart(
    stack, gateway_tokens, tmp_path
):
    store, insp, _ = gateway_tokens
    config = GatewayConfig(outbox_dir=tmp_path / "outbox", shutdown_flush_seconds=0.5)
    down = replace(stack, kafka_bootstrap="127.0.0.1:9")  # nothing listens there
    event = _opened()
    with TestClient(create_app(down, store, config=config)) as c:
        r = c.post(
            "/v1/events?wait=true&timeout=1", json={"events": [event]}, headers=_bearer(insp)
        )
        assert r.status_code == 200
        assert r.json()["results"][0]["status"] == "accepted"
        assert (r.json()["delivered"], r.json()["pending"]) == (0, 1)
        health = c.get("/healthz").json()
        assert health["status"] == "degraded" and health["kafka"]["reachable"] is False
        assert c.get("/healthz?strict=true").status_code == 503

    with TestClient(create_app(stack, store, config=config)):  # resumes the outbox on start
        found = consume(stack, "20-INSP", [event["event_id"]])
        assert len(found[event["event_id"]]) == 1


@pytest.mark.integration
def test_cli_command_serves_the_gateway_with_uvicorn(stack, gateway_tokens, tmp_path):
    from tests.conftest import free_ports

    store, insp, _ = gateway_tokens
    (port,) = free_ports(1)
    env = {**os.environ, "CASESTREAM_GATEWAY_OUTBOX_DIR": str(tmp_path / "outbox")}
    log = tmp_path / "gateway.log"
    code = "from services.agency.gateway_command import gateway; gateway()"
    args = ["--port", str(port), "--tokens-file", str(store.path), "--log-level", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # exited: fail below with the log

        wait_for(up, timeout=60, what="the gateway to answer")
        assert proc.poll() is None, log.read_text()
        event = _opened()
        r = httpx.post(
            f"{base}/v1/events?wait=true",
            json={"events": [event]},
            headers=_bearer(insp),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["delivered"] is True
        assert httpx.get(f"{base}/openapi.json").json()["paths"]["/v1/events"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            # uvicorn re-raises the SIGTERM it handled once shut down cleanly
            assert proc.wait(timeout=45) in (0, -signal.SIGTERM), log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "Application shutdown complete" in text
    assert "POST /v1/events?wait=true" in text
    assert insp not in text and insp.split("_", 2)[2] not in text  # the whole secret part
