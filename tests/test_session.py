"""The MQTT session's reads: packets read in large pieces arrive whole and in order, large and
small, back to back (broker/runtime/paho.py; reconnecting: tests/test_broker_restart.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from broker.runtime.mqtt import BrokerAddress, Message, Session
from tests.services import wait_for


@contextmanager
def reader_and_writer(broker_url: str, name: str, on_message: Callable[[Message], None]) -> Iterator[
        tuple[Session, Session]]:
    """Two started sessions on the test broker, stopped afterwards: one reading, one writing."""
    address = BrokerAddress.parse(broker_url)
    reader = Session(address, f"{name}-reader", on_message, persistent=False)
    writer = Session(address, f"{name}-writer", lambda m: None, persistent=False)
    reader.start()
    writer.start()
    try:
        yield reader, writer
    finally:
        reader.stop()
        writer.stop()


def test_packets_read_in_large_pieces_arrive_whole_and_in_order(broker_url):
    got: list[Message] = []
    done, subscribed = threading.Event(), threading.Event()

    def on_message(msg: Message) -> None:
        if msg.topic == "session-test/warmup":  # one more may land after the first: not counted
            subscribed.set()
            return
        got.append(msg)
        if len(got) == 3001:
            done.set()

    with reader_and_writer(broker_url, "session-test", on_message) as (reader, writer):
        reader.subscribe("session-test/#", qos=1)
        wait_for(lambda: writer.publish_wait("session-test/warmup", b"x") and subscribed.wait(0.2), 10,
                 what="the subscription")
        # small packets back to back, one far larger than a read (200 KB), then small ones again
        payloads = [str(i).encode() for i in range(1500)] + [bytes(range(256)) * 800]
        payloads += [b"y" * (i % 300) for i in range(1500)]
        for i, payload in enumerate(payloads):
            writer.publish(f"session-test/{i}", payload, qos=1)
        assert done.wait(30), f"{len(got)} of {len(payloads)} arrived"
        assert [m.topic for m in got] == [f"session-test/{i}" for i in range(len(payloads))]
        assert [m.payload for m in got] == payloads


def test_more_publishes_in_flight_than_mqtt_has_message_ids_are_all_delivered(broker_url):
    # paho numbers a session's unacknowledged publishes with 16-bit ids and kept them by id: past
    # 65,535 at once, a new publish overwrote an old one, which never left (34,377 of 100,000 lost)
    n = 70_000
    got: set[bytes] = set()
    lock = threading.Lock()

    def on_message(msg: Message) -> None:
        with lock:
            got.add(msg.payload)

    with reader_and_writer(broker_url, "session-test-many", on_message) as (reader, writer):
        reader.subscribe("session-many/#", qos=1)
        wait_for(lambda: writer.publish("session-many/warmup", b"w", qos=1).wait(1.0) and b"w" in got, 10,
                 what="the reader subscribed")
        deliveries = [writer.publish("session-many/x", str(i).encode(), qos=1) for i in range(n)]
        wait_for(lambda: all(d.done for d in deliveries[-100:]), 120, every_s=0.5, what="the broker took them all")
        assert all(d.ok for d in deliveries)
        wait_for(lambda: len(got) == n + 1, 60, every_s=0.5, what=f"all {n} publishes at the reader")
