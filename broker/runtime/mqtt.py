"""The one place paho-mqtt lives: a persistent MQTT 5 session every fogmesh daemon reuses.

Why a wrapper: paho's network thread dies silently when a callback raises
while ``is_connected()`` keeps saying True, so every ``_on_*`` here catches and
logs; messages become immutable :class:`Message` values at once; TCP_NODELAY is
set on every socket (88 ms -> 0.75 ms per QoS 1 round trip on loopback); and
reconnection re-subscribes in one place.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker.runtime import diagnose
from broker.runtime.delivery import Delivery
from broker.runtime.errors import BrokerUnavailable, ConfigError
from broker.runtime.logs import kv
from broker.runtime.paho import BufferedClient
from schemas import DecodeError, decode

log = logging.getLogger("fogmesh.mqtt")
# Unacknowledged publishes handed to paho at most (the rest wait here): its 16-bit ids let the 65,536th
# overwrite a waiting one, never sent (100,000 QoS 1 publishes in a row lost 34,377).
IN_FLIGHT_MAX = 60_000
T = TypeVar("T")


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in: ``mqtt://host:port`` or ``mqtts://host:port``."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, url: str, **extra: Any) -> BrokerAddress:
        if "://" not in url and not re.fullmatch(r"[\w.-]+(:\d+)?", url):
            raise ConfigError(f"broker URL {url!r} is not a URL: write mqtt://host:port, or mqtts://host:port for TLS")
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"broker URL {url!r}: {exc}") from exc
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            tls=tls,
            username=parts.username or extra.pop("username", None),
            password=parts.password or extra.pop("password", None),
            **extra,
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Message:
    """An MQTT message as fogmesh sees it, detached from paho."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    mid: int = 0
    response_topic: str | None = None
    correlation: bytes | None = None
    expiry_s: int | None = None
    received_at: float = field(default_factory=time.time)

    def decoded(self, into: type[T], logger: logging.Logger, event: str, level: int = logging.WARNING,
                **context: Any) -> T | None:
        """The payload as ``into``; else None, after logging ``event`` with the reason code: one
        bad message is logged and dropped, it never stops a daemon."""
        try:
            return decode(self.payload, into)
        except DecodeError as exc:
            logger.log(level, kv(event, **context, code=exc.code, detail=exc.message))
            return None


class Publisher(Protocol):
    """What a daemon's logic needs of its MQTT session: :class:`Session`, or the in-memory
    :class:`broker.runtime.memory.MemorySession` that unit tests hand it instead."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                correlation: bytes | None = None, expiry_s: int | None = None,
                response_topic: str | None = None) -> Delivery: ...

    def ack(self, message: Message) -> None: ...


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """Never let an exception escape a paho callback (it would stop the network thread)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception(kv("callback_failed", callback=fn.__name__))

    return wrapper


class Session:
    """A persistent MQTT 5 session (clean start off, session expiry set) with a Last Will.

    ``on_message`` runs on paho's network thread: keep it short (hand off to a queue).
    With ``manual_ack`` the PUBACK of a QoS 1 message is sent only by :meth:`ack`,
    so a daemon can make a message durable before the broker forgets it.
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        on_message: Callable[[Message], None],
        *,
        will: tuple[str, bytes] | None = None,
        persistent: bool = True,
        session_expiry_s: int = 3600,
        keepalive_s: int = 10,
        manual_ack: bool = False,
        on_connect: Callable[[bool], None] | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self._on_message_cb = on_message
        self._on_connect_cb = on_connect
        self._persistent = persistent
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._subscriptions: dict[str, int] = {}
        self._connected = threading.Event()
        self._refused: Any = None  # the reason of a CONNACK that refused us
        self._lock = threading.Lock()
        self.reconnects = 0
        self._ever_connected = False
        self._pending: dict[int, Delivery] = {}  # mid -> its delivery, until the broker answers
        self._early: dict[int, int] = {}  # acknowledged before publish() had registered the mid
        self._held: deque[tuple[str, bytes, int, bool, Properties | None, Delivery]] = deque()  # past IN_FLIGHT_MAX
        self._on_delivered: Callable[[], None] | None = None
        self._client = BufferedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        client = self._client
        client.max_queued_messages_set(0)  # never drop our own outgoing QoS 1 while offline
        # No limit on our unacknowledged publishes: with one set, paho walks all of them at every
        # PUBACK (13% of the coordinator's network thread under load), and fogmesh's brokers set
        # none either (mosquitto's max_inflight_messages 0); paho never honoured the broker's
        # Receive Maximum anyway.
        client.max_inflight_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        if address.username:
            client.username_pw_set(address.username, address.password)
        self._tls: ssl.SSLContext | None = None
        if address.tls:
            ctx = ssl.create_default_context(cafile=address.ca_file)
            if address.cert_file:
                ctx.load_cert_chain(address.cert_file, address.key_file)
            client.tls_set_context(ctx)
            self._tls = ctx
        if will:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_publish = self._on_publish

    # -------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network thread; raise BrokerUnavailable, saying why, if not connected.

        Nothing listening, an untrusted certificate, a refused user and ``mqtt://`` sent to a
        TLS port are each reported at once, with what to do about them."""
        problem = diagnose.unreachable(self.address.host, self.address.port, self._tls)
        if problem:
            raise BrokerUnavailable(problem)
        props = Properties(PacketTypes.CONNECT)
        if self._persistent:
            props.SessionExpiryInterval = self._session_expiry_s
        try:
            self._client.connect_async(
                self.address.host,
                self.address.port,
                keepalive=self._keepalive_s,
                clean_start=not self._persistent,
                properties=props,
            )
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot connect to {self.address.url}: {exc}") from exc
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        asked_tls = False
        while not self._connected.wait(0.05):
            problem = None
            if self._refused is not None:
                problem = diagnose.refusal(self.address.url, self.address.username, self._refused)
            elif not asked_tls and not self.address.tls and time.monotonic() > deadline - timeout_s + 1.5:
                asked_tls = True  # a TLS listener just closes a plaintext CONNECT: find out why we hear nothing
                if diagnose.speaks_tls(self.address.host, self.address.port):
                    problem = (f"{self.address.host}:{self.address.port} speaks TLS: use "
                               f"mqtts://{self.address.host}:{self.address.port} (and ca_file)")
            elif time.monotonic() >= deadline:
                problem = (f"no connection to the MQTT broker at {self.address.url} within {timeout_s:.0f} s "
                           "(it accepted the TCP connection but never answered MQTT's CONNECT)")
            if problem:
                self._client.loop_stop()
                raise BrokerUnavailable(problem)

    def stop(self) -> None:
        """Disconnect cleanly (the Last Will is not sent) and stop the network thread."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -------------------------------------------------------------- operations

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic] = qos
        if self.connected:
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        """Stop a subscription, here and after reconnects (a persistent session would keep it)."""
        with self._lock:
            self._subscriptions.pop(topic, None)
        if self.connected:
            self._client.unsubscribe(topic)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
        response_topic: str | None = None,
    ) -> Delivery:
        """Publish now, or queue it while the session is down (sent on reconnect, never dropped).

        Never raises for a lost connection: the returned :class:`Delivery` tells when the
        broker has the message."""
        props = None
        if correlation is not None or expiry_s is not None or response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
        delivery = Delivery(0)
        with self._lock:
            if self._held or len(self._pending) >= IN_FLIGHT_MAX:
                self._held.append((topic, payload, qos, retain, props, delivery))
                return delivery
        self._send(topic, payload, qos, retain, props, delivery)
        return delivery

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None,
              delivery: Delivery) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        delivery.mid = info.mid
        with self._lock:
            if info.mid in self._early:
                delivery._set(self._early.pop(info.mid))
            else:
                self._pending[info.mid] = delivery

    def _release(self) -> None:  # held publishes to paho, in order, while room is left under IN_FLIGHT_MAX
        while True:
            with self._lock:
                if not self._held or len(self._pending) >= IN_FLIGHT_MAX:
                    return
                item = self._held.popleft()
            self._send(*item)

    def set_on_delivered(self, hook: Callable[[], None] | None) -> None:
        """Call ``hook`` (on paho's thread: keep it short) whenever the broker acknowledges a publish."""
        self._on_delivered = hook

    def publish_wait(self, topic: str, payload: bytes, retain: bool = False, timeout_s: float = 5.0) -> bool:
        """Publish at QoS 1 and wait for the broker's PUBACK; False if it did not come in time."""
        return self.publish(topic, payload, qos=1, retain=retain).wait(timeout_s)

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message received with ``manual_ack``."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -------------------------------------------------------------- paho callbacks

    @_guarded
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if hasattr(sock, "setsockopt"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @_guarded
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error(kv("mqtt_refused", broker=self.address.url, client=self.client_id, reason=str(reason)))
            self._refused = reason
            return
        with self._lock:
            subs = list(self._subscriptions.items())
        for topic, qos in subs:
            client.subscribe(topic, qos)
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        log.info(kv("mqtt_connected", broker=self.address.url, client=self.client_id,
                    session_present=flags.session_present))
        self._connected.set()
        if self._on_connect_cb:
            self._on_connect_cb(bool(flags.session_present))

    @_guarded
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning(kv("mqtt_lost", broker=self.address.url, client=self.client_id, reason=str(reason)))

    @_guarded
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        code = int(getattr(reason, "value", 0) or 0)
        with self._lock:
            delivery = self._pending.pop(mid, None)
            if delivery is None:
                # paho can hand the PUBACK to this thread before publish() returned the mid
                self._early[mid] = code
        if delivery is not None:
            delivery._set(code)
        if self._held:
            self._release()
        if code >= 0x80:
            log.error(kv("mqtt_publish_refused", client=self.client_id, mid=mid, reason=str(reason),
                         detail="the broker refused a publish; check this user's ACL"))
        if self._on_delivered:
            self._on_delivered()

    @_guarded
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self._on_message_cb(
            Message(
                topic=msg.topic,
                payload=bytes(msg.payload),
                qos=msg.qos,
                retain=bool(msg.retain),
                mid=msg.mid,
                response_topic=getattr(props, "ResponseTopic", None),
                correlation=getattr(props, "CorrelationData", None),
                expiry_s=getattr(props, "MessageExpiryInterval", None),
            )
        )
