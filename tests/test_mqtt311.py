"""A broker that speaks MQTT 3.1.1 only: kiosk and bridge fall back from v5 by themselves,
and nothing changes for the shop: events drain, acks arrive, nothing is stored twice.

The broker is amqtt (a Python broker without v5) behind a small gate that answers a v5
CONNECT the way a 3.1.1 broker does ("unacceptable protocol version") before amqtt,
which would rather choke on v5 fields, ever sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.sync import Sync
from tests.support import free_port, wait_for_port
from tests.test_sync import (
    Bridge,
    assert_stored_exactly_once,
    kiosk_mqtt,
    open_store,
    queue_events,
    wait_until,
)

#: CONNACK, 2 bytes: no session, return code 1 (unacceptable protocol version).
REFUSE_V5 = bytes([0x20, 0x02, 0x00, 0x01])


def _protocol_level(first: bytes) -> int | None:
    """The protocol level byte of a CONNECT packet (4 = 3.1.1, 5 = v5), if readable."""
    if not first or first[0] >> 4 != 1:
        return None
    i = 1
    while i < len(first) and first[i] & 0x80:  # remaining length, a varint
        i += 1
    i += 1 + 2 + 4  # its last byte, the protocol name's length and "MQTT"
    return first[i] if i < len(first) else None


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def _gate(listener: socket.socket, upstream: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        first = client.recv(4096)
        if _protocol_level(first) == 5:
            client.sendall(REFUSE_V5)
            client.close()
            continue
        broker = socket.create_connection(("127.0.0.1", upstream))
        broker.sendall(first)
        for a, b in ((client, broker), (broker, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


@pytest.fixture(scope="module")
def broker311() -> Iterator[str]:
    """Shared by the module's tests: amqtt's shutdown waits out a 5 s timeout."""
    from amqtt.broker import Broker

    port = free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    loop = asyncio.new_event_loop()
    broker = Broker(config, loop=loop)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(broker.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20), "amqtt did not start"
    listener = socket.create_server(("127.0.0.1", 0))
    gate_port = listener.getsockname()[1]
    threading.Thread(target=_gate, args=(listener, port), daemon=True).start()
    wait_for_port("127.0.0.1", gate_port)
    yield f"mqtt://127.0.0.1:{gate_port}"
    listener.close()

    async def stop() -> None:
        await broker.shutdown()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.parametrize("group", [None, "bridges"])
def test_kiosk_and_bridge_fall_back_to_mqtt_311(
    tmp_path: Path, broker311: str, group: str | None
) -> None:
    """With a shared group too: 3.1.1 has none, so that worker takes every message."""
    bridge = Bridge(tmp_path / "bridge", broker311, **({"shared_group": group} if group else {}))
    runtime = bridge.start()
    store = open_store(tmp_path / "kiosk")
    ids = queue_events(store, 300)
    sync = Sync(kiosk_mqtt(broker311), store, version="test")
    sync.start()
    try:
        wait_until(lambda: store.outbox_size() == 0, what="the outbox to drain over 3.1.1")
        assert sync.protocol == 4  # paho's MQTTv311
        assert not runtime.link.v5
        assert not any(t.startswith("$share/") for t in runtime.link.subscriptions())
        assert_stored_exactly_once(bridge.config.db.url, ids)
    finally:
        sync.stop()
        store.close()
        bridge.close()
