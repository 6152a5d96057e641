"""`make bench`: every benchmark in one run, one table, and bench/results.json.

Each figure sits beside a baseline measured in the same run on the same machine, so the
ratios mean something even though absolute times vary between machines.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from bench import (
    bench_chain,
    bench_decode,
    bench_insights,
    bench_latency,
    bench_store,
    bench_sync,
    bench_ui,
)


def main() -> int:
    quick = "--quick" in sys.argv
    started = time.time()
    decode = bench_decode.run(quick=quick)
    bench_decode.print_table(decode)
    print()
    latency = bench_latency.run(quick=quick)
    bench_latency.print_table(latency)
    print()
    store = bench_store.run(quick=quick)
    bench_store.print_table(store)
    print()
    sync = bench_sync.run(quick=quick)
    bench_sync.print_table(sync)
    print()
    insights = bench_insights.run(quick=quick)
    bench_insights.print_table(insights)
    print()
    chain = bench_chain.run(quick=quick)
    bench_chain.print_table(chain)
    print()
    ui = bench_ui.run(quick=quick)
    bench_ui.print_table(ui)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        "decode": decode,
        "latency": latency,
        "store": store,
        "sync": sync,
        "insights": insights,
        "chain": chain,
        "ui": ui,
    }
    out = Path(__file__).parent / "results.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
