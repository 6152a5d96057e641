"""Fuzzing the ingest on a real Mosquitto (issue 13): one kiosk publishes random
envelopes, junk payloads, deep and huge values, on its events and status topics, while
another kiosk publishes good events. The good kiosk's events keep being stored and acked
the whole time, the junk is quarantined or dropped, and memory stays bounded.

Hypothesis is derandomized (a fixed seed per test) and bounded by a number of examples
that fits in about 20 s here, so the test is neither flaky nor slow.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.messages import dumps, new_event_id
from o2o_protocol.timeutil import rfc3339
from tests.support import MosquittoBroker
from tests.test_bridge_ingest import Peer, events
from tests.test_ingest_limits import STORE, config_with, topic

#: Examples per run: 20-30 s on a shared two-core machine.
EXAMPLES = 80

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),  # any code point: NUL, lone surrogates, …
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)
timestamps = st.one_of(
    st.just("now"),
    st.sampled_from(
        ["2999-12-31T23:59:59Z", "1971-01-01T00:00:00Z", "1970-01-01T00:00:00+23:59", "x", ""]
    ),
    st.text(max_size=45),
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    ts = draw(timestamps)
    env: dict[str, Any] = {
        "id": draw(st.one_of(st.builds(new_event_id), st.text(max_size=70))),
        "seq": draw(
            st.one_of(st.integers(min_value=1, max_value=2**63 - 1), st.integers(), leaves)
        ),
        "type": draw(st.one_of(st.sampled_from(["checkin", "printer.fault", "x.y"]), st.text())),
        "ts": rfc3339(time.time()) if ts == "now" else ts,
        "store": draw(st.sampled_from([STORE, STORE, "s2", ""])),
        "kiosk": draw(st.sampled_from(["bad", "bad", "bad", "good", "k\n"])),
        "data": draw(st.one_of(st.dictionaries(st.text(max_size=12), values, max_size=8), values)),
    }
    if draw(st.booleans()) and draw(st.booleans()):
        env[draw(st.text(max_size=8))] = draw(values)  # an extra top-level field
    if draw(st.booleans()) and draw(st.booleans()):
        del env[draw(st.sampled_from(sorted(env)))]
    return env


def valid() -> dict[str, Any]:
    """The envelope fields of a real event of the bad kiosk: only its data is wrong."""
    return {
        "id": new_event_id(),
        "seq": 1,
        "type": "checkin",
        "ts": rfc3339(time.time()),
        "store": STORE,
        "kiosk": "bad",
    }


def deep(depth: int, kind: str) -> str:
    opener, closer = ('{"a":', "}") if kind == "object" else ("[", "]")
    return opener * depth + "1" + closer * depth


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    leaf = draw(st.sampled_from(["events"] * 5 + ["status"]))
    kind = draw(
        st.sampled_from(["junk", "envelope", "batch", "deep_data", "deep_raw", "huge", "status"])
    )
    if kind == "junk":
        return leaf, draw(st.binary(max_size=300))
    if kind == "envelope":
        return leaf, json.dumps(draw(envelopes())).encode()
    if kind == "batch":
        return leaf, json.dumps(draw(st.lists(envelopes(), max_size=6))).encode()
    if kind == "deep_data":  # a valid envelope, its data nested hundreds or thousands deep
        env = draw(envelopes()) | valid()
        env["data"] = {}
        head = json.dumps(env)[: -len("{}}")]
        depth = draw(st.integers(min_value=17, max_value=5000))
        return leaf, (head + deep(depth, draw(st.sampled_from(["object", "array"]))) + "}").encode()
    if kind == "deep_raw":
        return leaf, deep(draw(st.integers(min_value=100, max_value=100_000)), "array").encode()
    if kind == "huge":  # a valid envelope with a string of up to 3 MB
        env = draw(envelopes()) | valid()
        env["data"] = {"s": "x" * draw(st.integers(min_value=4000, max_value=3_000_000))}
        return leaf, json.dumps(env).encode()
    status = {"online": draw(st.booleans()), "printer": draw(values), "lockers": draw(values)}
    return "status", json.dumps(status).encode()


class GoodKiosk:
    """Publishes one good event every 50 ms and notes when each is acked."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.peer = Peer(broker, topic("good", "acks"))
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self._stop = threading.Event()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peer.client.on_message = lambda _c, _u, m: self._ack(m.payload)

    def _ack(self, payload: bytes) -> None:
        now = time.monotonic()
        for i in json.loads(payload)["ids"]:
            self.acked.setdefault(i, now)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._seq += 1
            [e] = events(1, kiosk="good", start_seq=self._seq)
            self.sent[e.id] = time.monotonic()
            self.peer.client.publish(topic("good"), dumps(e), qos=1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_all_acked(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while set(self.sent) - set(self.acked) and time.monotonic() < deadline:
            time.sleep(0.05)

    def longest_wait(self) -> float:
        return max(self.acked[i] - t for i, t in self.sent.items())


@pytest.fixture
def bad(mosquitto_broker: MosquittoBroker) -> Iterator[Peer]:
    peer = Peer(mosquitto_broker)
    yield peer
    peer.close()


def test_fuzzed_kiosk_never_stops_the_good_one(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository, bad: Peer
) -> None:
    bridge = BridgeRuntime(config_with(tmp_path, mosquitto_broker), repo)
    bridge.start()
    assert bridge.wait_ready(10)
    good = GoodKiosk(mosquitto_broker)
    junk: list[tuple[str, bytes]] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads())
    def make_junk(message: tuple[str, bytes]) -> None:
        junk.append(message)

    make_junk()  # before the clock starts: the waits are the bridge's, not the generator's
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    good.start()
    started = time.monotonic()

    try:
        passes = 0  # again while the good kiosk has sent too few to judge (a fast machine)
        while passes < 20 and (passes == 0 or len(good.sent) < 10):
            for leaf, payload in junk:
                bad.client.publish(topic("bad", leaf), payload, qos=1).wait_for_publish(10)
            passes += 1
        elapsed = time.monotonic() - started
        junk_done = time.monotonic()
        # A fast machine sends the junk in a few seconds: keep the good kiosk going until
        # it has sent enough to judge (a count, not a time, so any machine gets there).
        deadline = time.monotonic() + 30
        while len(good.sent) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        good.stop()
        good.wait_all_acked()
        # The bridge kept up: every good event stored and acked, none waited long.
        missing = set(good.sent) - set(good.acked)
        assert not missing, f"{len(missing)} of {len(good.sent)} good events never acked"
        assert len(good.sent) >= 100
        during = sum(1 for t in good.sent.values() if t < junk_done)
        assert during >= 10, f"only {during} good events were sent while the junk came"
        assert good.longest_wait() < 5.0, good.longest_wait()
        stored = {e.id for e in repo.events(kiosk="good", limit=None)}
        assert set(good.sent) <= stored
        health = bridge.health()
        assert health["status"] == "ok", health
        # Memory: bounded while it ran (3 MB payloads, 10 MB is far), and nothing kept.
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        assert peak - baseline < 120 * 2**20, f"peak {peak / 2**20:.0f} MiB"
        assert current - baseline < 20 * 2**20, f"kept {(current - baseline) / 2**20:.0f} MiB"
        # The junk went somewhere visible: quarantined (each row bounded) or dropped.
        rejected = repo.rejected_events(store=STORE, limit=None)
        assert rejected and all(len(r.raw) < 9000 for r in rejected)
        print(
            f"fuzz: {EXAMPLES} junk messages x {passes} in {elapsed:.1f}s,"
            f" {len(good.sent)} good events acked (longest wait {good.longest_wait():.2f}s),"
            f" {len(rejected)} quarantined,"
            f" peak {(peak - baseline) / 2**20:.0f} MiB"
        )
    finally:
        tracemalloc.stop()
        good.stop()
        good.peer.close()
        bridge.stop()
