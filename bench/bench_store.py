"""Store benchmark: the cost of one durable write as the kiosk's data grows.

Our journaled store against stock TinyDB (which rewrites its whole file on every write),
at 1,000, 10,000 and 100,000 stored events, in the same run. Both stores are filled to
size first, then timed for single writes of the kind a scan makes. Also: the pure
decision time per scan (verify + facts + decide, no camera, no disk write).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tinydb import TinyDB

from kiosk.decisions import Decision, Rules, decide
from kiosk.effects import CodeUsed
from kiosk.localdb import DB_FILE, KioskDB
from o2o_protocol.codes import CodeType, verify_code
from o2o_protocol.messages import EventType, new_event_id
from o2o_protocol.timeutil import rfc3339

SIZES = (1_000, 10_000, 100_000)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _event(seq: int, now: float) -> dict[str, Any]:
    return {
        "id": new_event_id(),
        "seq": seq,
        "type": "checkin",
        "ts": rfc3339(now),
        "store": "bench",
        "kiosk": "k1",
        "data": {"member_id": f"m{seq % 500}", "name": "小明", "visits": 3, "points": 30},
    }


def _fill_ours(directory: Path, n: int) -> None:
    """A store as it is after n events (all acked but the last 1%), written as a snapshot."""
    now = time.time()
    history = {str(i): _event(i, now - (n - i)) for i in range(1, n + 1)}
    outbox = {k: history[k] for k in list(history)[-max(1, n // 100) :]}
    data = {"history": history, "outbox": outbox, "meta": {"1": {"seq": n, "last_cmd_seq": 0}}}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DB_FILE).write_text(json.dumps(data, separators=(",", ":")))


def time_ours(n: int, writes: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="o2o-store-") as tmp:
        _fill_ours(Path(tmp), n)
        store = KioskDB(Path(tmp), store="bench", kiosk="k1", history_days=3650)
        ms = []
        for i in range(writes):
            d = Decision(
                EventType.COUPON_REDEEMED,
                {"coupon_id": f"c{i}"},
                effects=(CodeUsed(f"c{i}", CodeType.COUPON, exp=int(time.time()) + 3600),),
            )
            t0 = time.perf_counter()
            store.record(d, time.time())
            ms.append((time.perf_counter() - t0) * 1000)
        store.close()
    return ms


def time_stock(n: int, writes: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="o2o-tinydb-") as tmp:
        db = TinyDB(Path(tmp) / "stock.json")
        now = time.time()
        db.table("history").insert_multiple(_event(i, now) for i in range(1, n + 1))
        table = db.table("history")
        ms = []
        for i in range(writes):
            t0 = time.perf_counter()
            table.insert(_event(n + i + 1, now))
            ms.append((time.perf_counter() - t0) * 1000)
        db.close()
    return ms


def time_decisions(n: int) -> dict[str, float]:
    from tests.keys import Issuer

    issuer = Issuer(store="bench")
    codes = [issuer.code("m", f"m{i}", n="小明") for i in range(20)]
    codes += [issuer.code("c", f"c{i}", cp="spring", v="¥10") for i in range(20)]
    keys = issuer.public_keys
    rules = Rules()
    from kiosk.decisions import Facts

    ms = []
    for i in range(n):
        text = codes[i % len(codes)]
        t0 = time.perf_counter()
        now = time.time()
        result = verify_code(text, keys, store="bench", now=now)
        decide(result, Facts(), rules, now=now, today="2026-11-26", text=text)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(ms), "p95_ms": _pct(ms, 0.95)}


def run(quick: bool = False) -> dict[str, Any]:
    sizes = SIZES if not quick else (1_000, 10_000)
    out: dict[str, Any] = {"ours": {}, "stock_tinydb": {}}
    for n in sizes:
        ours = time_ours(n, 200 if not quick else 60)
        stock = time_stock(n, 40 if n < 100_000 else 8)
        out["ours"][n] = {"median_ms": statistics.median(ours), "p95_ms": _pct(ours, 0.95)}
        out["stock_tinydb"][n] = {
            "median_ms": statistics.median(stock),
            "p95_ms": _pct(stock, 0.95),
        }
    lo, hi = min(sizes), max(sizes)
    out["ratio_ours"] = out["ours"][hi]["median_ms"] / out["ours"][lo]["median_ms"]
    out["ratio_stock"] = out["stock_tinydb"][hi]["median_ms"] / out["stock_tinydb"][lo]["median_ms"]
    out["ratio_sizes"] = f"{hi // 1000}k/{lo // 1000}k"
    out["decision"] = time_decisions(2000 if not quick else 500)
    return out


def print_table(r: dict[str, Any]) -> None:
    print("Kiosk store: one durable write (fsynced) as the store grows")
    print(
        f"{'stored events':>14} {'ours med':>10} {'ours p95':>10} {'TinyDB med':>11} "
        f"{'TinyDB p95':>11}"
    )
    for n, ours in r["ours"].items():
        stock = r["stock_tinydb"][n]
        print(
            f"{n:>14,} {ours['median_ms']:>8.2f}ms {ours['p95_ms']:>8.2f}ms "
            f"{stock['median_ms']:>9.2f}ms {stock['p95_ms']:>9.2f}ms"
        )
    verdict = "OK" if r["ratio_ours"] <= 1.5 else "MISSED"
    print(
        f"  ratio {r['ratio_sizes']} (median): ours {r['ratio_ours']:.2f} (target <= 1.5: "
        f"{verdict}), stock TinyDB {r['ratio_stock']:.1f} (stock TinyDB does not fsync)"
    )
    d = r["decision"]
    print(
        f"  decision per scan, no camera (verify + decide): median {d['median_ms']:.3f} ms, "
        f"p95 {d['p95_ms']:.3f} ms"
    )


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print_table(result)
