"""paho's client, reading its socket in large pieces (used only by :class:`broker.runtime.mqtt.Session`)."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt


class BufferedClient(mqtt.Client):
    """paho's client, reading its socket in large pieces.

    paho asks the socket for each packet's first byte, then each byte of its length, then the
    rest: three system calls or more for every packet. Under load those reads were a quarter of
    the coordinator's network thread (py-spy, docs/benchmarks.md). Here a read takes whatever is
    there (up to 64 KiB) and hands it out as paho asks; ``loop_read`` goes on while bytes wait
    here, since ``select()`` on the socket no longer sees them. Reconnecting starts empty.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fm_buf = b""
        self._fm_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._fm_buf, self._fm_pos
        if pos >= len(buf):
            buf = super()._sock_recv(max(bufsize, 65536))  # BlockingIOError when nothing is there, as before
            if not buf:
                return buf  # the connection closed
            pos = 0
        end = min(pos + bufsize, len(buf))
        self._fm_buf, self._fm_pos = buf, end
        return buf[pos:end]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._fm_pos < len(self._fm_buf) and self._sock:
            rc = super().loop_read(max_packets)
        return rc

    def _sock_close(self) -> None:
        self._fm_buf, self._fm_pos = b"", 0
        super()._sock_close()
