"""Celery's side of `cargo xtask bench` (start a worker first, as run.sh does). One JSON line each.

  bench.py ping [SECONDS]   wait until a worker answers a control ping
  bench.py throughput N     N `noop.delay()` calls, then wait for every result
  bench.py latency N        N round trips of one task at a time (`noop.delay(i).get()`), after 10
                            of warm-up; p50/p90/p99 by nearest rank
"""
import json
import math
import sys
import time

import celery
from celery.result import ResultSet

from tasks import app, noop


def pct(xs, p):
    return xs[max(1, math.ceil(p / 100 * len(xs))) - 1]


mode = sys.argv[1]
if mode == "ping":
    deadline = time.time() + (float(sys.argv[2]) if len(sys.argv) > 2 else 60)
    while time.time() < deadline:
        try:
            if app.control.ping(timeout=1.0):
                print(json.dumps({"ready": True}))
                sys.exit(0)
        except Exception:
            time.sleep(0.5)
    print(json.dumps({"error": "no worker answered a ping"}))
    sys.exit(1)
elif mode == "throughput":
    n = int(sys.argv[2])
    t0 = time.perf_counter()
    rs = [noop.delay(i) for i in range(n)]
    t1 = time.perf_counter()
    ResultSet(rs).join_native(timeout=600, propagate=True)
    t2 = time.perf_counter()
    print(json.dumps({"n": n, "submit_per_s": round(n / (t1 - t0)), "per_s": round(n / (t2 - t0)),
                      "seconds": round(t2 - t0, 3), "celery": celery.__version__}))
elif mode == "latency":
    n = int(sys.argv[2])
    lat = []
    for i in range(10 + n):
        t0 = time.perf_counter()
        noop.delay(i).get(timeout=30)
        if i >= 10:
            lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    print(json.dumps({"n": n, "p50_ms": round(pct(lat, 50), 3), "p90_ms": round(pct(lat, 90), 3),
                      "p99_ms": round(pct(lat, 99), 3), "max_ms": round(lat[-1], 3),
                      "mean_ms": round(sum(lat) / n, 3), "celery": celery.__version__}))
else:
    print(__doc__)
    sys.exit(2)
