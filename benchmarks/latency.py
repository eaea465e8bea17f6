"""latency: end-to-end p50/p99 at a steady 1,000 events/s, from `publish` to visible in ClickHouse.

A caught-up worker runs (the one the process scenario left, or a new one). Events of the generated
history, re-tagged so their ids are new, are published with the SDK (operator publisher) on a
fixed schedule: every 10 ms the events due by then (10 at 1,000 events/s), each one's send time
kept in a side map (wall clock just before `publish_many`). An event is visible when its row is
in `events`; ClickHouse stamps the row with `ingested_at` (DEFAULT now64 at insert, same machine
clock), so latency = ingested_at - send time, without polling granularity.

Baseline: the transport floor, a bare confluent-kafka producer (same configuration) and a bare
consumer in the same process at the same rate, latency = receive - send per message.
"""

from __future__ import annotations

import threading
import time
import uuid

from benchmarks.common import (
    BenchContext,
    Result,
    ensure_topics,
    fmt_num,
    kafka_config,
    peak_rss_mb,
    percentile,
    producer_config,
    reset_peak_rss,
    retag,
)

TARGET_P99 = 1.0
TICK = 0.01


def _schedule(total: int, rate: int):
    """(due time offset in s, how many events are due by then) every TICK."""
    per_tick = rate * TICK
    due = 0.0
    i = 0
    while due < total:
        i += 1
        due = min(total, per_tick * i)
        yield i * TICK, int(due)


def bare_roundtrip(ctx: BenchContext, rate: int, seconds: float) -> list[float]:
    """Produce pre-encoded events at `rate` and consume them in the same process."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    settings = ctx.settings
    topic = f"benchbare.latency.{ctx.stamp}"
    ensure_topics(settings, [topic])
    total = int(rate * seconds)
    sent: dict[bytes, float] = {}
    received: dict[bytes, float] = {}
    consumer = Consumer(
        kafka_config(
            settings,
            **{
                "group.id": f"casestream-bench-rt-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_END) for p in range(settings.topic_partitions)]
    )
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set() and len(received) < total:
            for msg in consumer.consume(num_messages=1000, timeout=0.1):
                if not msg.error():
                    received.setdefault(msg.key(), time.time())

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(2.0)  # let the consumer's assignment take effect before producing
    producer = Producer(producer_config(settings))
    value = b"\0" * 180  # about the size of an encoded event
    start = time.time() + 0.05
    done = 0
    for offset, due in _schedule(total, rate):
        delay = start + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        for i in range(done, due):
            key = f"{i}".encode()
            sent[key] = now
            producer.produce(topic, value, key)
        done = due
        producer.poll(0)
    producer.flush(60)
    deadline = time.time() + 60
    while len(received) < total and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(5)
    consumer.close()
    return [received[k] - sent[k] for k in sent if k in received]


def rekey_times(settings, case_prefix: str, topic: str) -> dict[str, float]:
    """event_id -> when the worker's ingest agent re-keyed it (facts topic message timestamp)."""
    import json

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from services.processor import envelope

    FACTS_TOPIC = topic  # noqa: N806 - the worker's own facts topic
    admin = AdminClient(kafka_config(settings))
    partitions = admin.list_topics(FACTS_TOPIC, timeout=30).topics[FACTS_TOPIC].partitions
    consumer = Consumer(
        kafka_config(
            settings,
            **{
                "group.id": f"casestream-bench-rk-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            },
        )
    )
    ends = {}
    for p in partitions:
        ends[p] = consumer.get_watermark_offsets(TopicPartition(FACTS_TOPIC, p), timeout=30)[1]
    consumer.assign([TopicPartition(FACTS_TOPIC, p, OFFSET_BEGINNING) for p in partitions])
    prefix = case_prefix.encode()
    found: dict[str, float] = {}
    done: set[int] = {p for p, end in ends.items() if end == 0}
    deadline = time.time() + 300
    try:
        while len(done) < len(ends) and time.time() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                if msg.error():
                    continue
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
                if envelope.is_envelope(msg.value()):  # a batch's facts of one partition
                    at = msg.timestamp()[1] / 1000.0
                    for fact in envelope.decode(msg.value()):
                        if fact.case_id.startswith(case_prefix):
                            found.setdefault(fact.event_id, at)
                elif (msg.key() or b"").startswith(prefix):  # one fact (older workers)
                    event_id = json.loads(msg.value())[0]
                    found.setdefault(event_id, msg.timestamp()[1] / 1000.0)
    finally:
        consumer.close()
    return found


def run(ctx: BenchContext) -> list[Result]:
    from services.agency.publisher import Publisher

    settings = ctx.settings
    rate = ctx.sizes.latency_rate
    seconds = ctx.sizes.latency_seconds
    worker = ctx.ensure_live_worker()
    client = ctx.client()

    ctx.log(
        f"latency: bare Kafka round trip at {rate:,}/s for {ctx.sizes.bare_latency_seconds:.0f}s"
    )
    bare = bare_roundtrip(ctx, rate, ctx.sizes.bare_latency_seconds)
    bare_p50, bare_p99 = percentile(bare, 50), percentile(bare, 99)

    total = int(rate * seconds)
    source = ctx.dataset.events
    tag = f"lat{ctx.stamp}"
    events = [retag(source[i % len(source)], f"{tag}{i // len(source)}") for i in range(total)]
    pub = Publisher(None, settings, outbox_path=ctx.work / f"outbox-latency-{ctx.stamp}.sqlite")
    # Subjects registered and topics ensured before the clock starts: once per publisher and
    # agency, not the steady state (paid on the clock, it held the schedule 18 s behind).
    pub.prepare({e["agency_id"] for e in events})

    ctx.log(f"latency: SDK -> worker -> ClickHouse at {rate:,} events/s for {seconds:.0f}s")
    reset_peak_rss()
    sent: dict[str, float] = {}
    start = time.time() + 0.05
    done = 0
    late = 0.0
    for offset, due in _schedule(total, rate):
        delay = start + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            late = max(late, -delay)
        if due <= done:
            continue
        now = time.time()
        chunk = events[done:due]
        pub.publish_many(chunk)
        for e in chunk:
            sent[e["event_id"]] = now
        done = due
    publish_seconds = time.time() - start
    pending = pub.flush(timeout=60)
    pub.close()
    publisher_rss = peak_rss_mb()

    pattern = f"{tag}%"
    deadline = time.time() + 180
    visible = 0
    while time.time() < deadline:
        visible = client.command(
            f"SELECT uniqExact(event_id) FROM {worker.database}.events "
            "WHERE case_id LIKE {p:String}",
            parameters={"p": pattern},
        )
        if visible >= total:
            break
        time.sleep(1.0)
    rows = client.query(
        f"SELECT toString(event_id), toUnixTimestamp64Milli(min(ingested_at)) "
        f"FROM {worker.database}.events WHERE case_id LIKE {{p:String}} GROUP BY event_id",
        parameters={"p": pattern},
    ).result_rows
    latencies = [int(ms) / 1000.0 - sent[eid] for eid, ms in rows if eid in sent]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    # Where the time goes: publish -> re-keyed by ingest (facts topic timestamp) -> visible.
    from services.ops.topics import facts_topic

    rekeyed = rekey_times(settings, tag, facts_topic(worker.app_id))
    visible_at = {eid: int(ms) / 1000.0 for eid, ms in rows}
    to_ingest = [rekeyed[e] - sent[e] for e in rekeyed if e in sent]
    to_visible = [visible_at[e] - rekeyed[e] for e in rekeyed if e in visible_at]
    ratio = (p99 / bare_p99) if p99 is not None and bare_p99 else None
    return [
        Result(
            scenario="end-to-end latency",
            result=f"p50 {fmt_num(p50, 's', 2)}, p99 {fmt_num(p99, 's', 2)}",
            baseline=f"bare Kafka round trip p50 {fmt_num(bare_p50, 's', 3)}, "
            f"p99 {fmt_num(bare_p99, 's', 3)}",
            ratio=ratio,
            ratio_label="× bare p99",
            target=f"p99 < {TARGET_P99:.0f} s at {rate:,} events/s",
            met=p99 is not None and p99 < TARGET_P99 and visible >= total,
            numbers={
                "events": total,
                "visible": int(visible),
                "achieved_rate": round(total / publish_seconds),
                "max_schedule_slip_s": round(late, 3),
                "p90_s": round(percentile(latencies, 90) or 0, 3),
                "max_s": round(max(latencies), 3) if latencies else None,
                "min_s": round(min(latencies), 3) if latencies else None,
                "publish_to_rekeyed_p50_s": round(percentile(to_ingest, 50) or 0, 3),
                "publish_to_rekeyed_p99_s": round(percentile(to_ingest, 99) or 0, 3),
                "rekeyed_to_visible_p50_s": round(percentile(to_visible, 50) or 0, 3),
                "rekeyed_to_visible_p99_s": round(percentile(to_visible, 99) or 0, 3),
                "bare_messages": len(bare),
                "still_pending": pending,
            },
            memory={
                "publisher process": round(publisher_rss or 0),
                "worker": round(worker.peak_rss_mb() or 0),
            },
            command=ctx.repro("latency"),
        )
    ]
