#!/usr/bin/env python3
"""idem's quick benchmarks, run against a live `idem serve` (stdlib only).

  throughput N        submit N `noop` tasks through the batch endpoint (1,000 per request) and wait
                      until all have succeeded; prints submit and end-to-end tasks per second
  lateness JOBS SECS  create JOBS one-second interval jobs, let them fire for SECS seconds, then read
                      each fire's lateness (recorded_at - scheduled_at) from the run history

Set IDEM_URL (default http://127.0.0.1:8000).
"""
import json
import os
import sys
import time
import urllib.request
from datetime import datetime

BASE = os.environ.get("IDEM_URL", "http://127.0.0.1:8000")


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def throughput(n):
    run = str(time.time_ns())
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        items = [{"task": "noop", "args": {"i": i, "run": run}} for i in range(start, min(n, start + 1000))]
        status, _ = call("POST", "/api/v1/tasks/submit/batch", {"items": items})
        assert status == 202, status
    t_submit = time.perf_counter() - t0
    while any(call("GET", f"/api/v1/tasks?state={st}&task=noop&limit=1")[1]["items"]
              for st in ("queued", "running", "scheduled", "retrying")):
        time.sleep(0.02)
    t_all = time.perf_counter() - t0
    print(json.dumps({"tasks": n, "submit_per_s": round(n / t_submit), "end_to_end_per_s": round(n / t_all),
                      "seconds": round(t_all, 3)}))


def parse(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def lateness(jobs, secs):
    prefix = f"lat{time.time_ns()}"
    for j in range(jobs):
        call("POST", "/api/v1/jobs", {"id": f"{prefix}-{j}", "task": "noop",
                                       "trigger": {"type": "interval", "every_seconds": 1},
                                       "max_instances": 5})
    time.sleep(secs)
    late, outcomes = [], {}
    for j in range(jobs):
        jid = f"{prefix}-{j}"
        call("POST", f"/api/v1/jobs/{jid}/pause")
        _, runs = call("GET", f"/api/v1/jobs/{jid}/runs?limit=1000")
        for r in runs["items"]:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
            if r["outcome"] == "fired":
                late.append((parse(r["recorded_at"]) - parse(r["scheduled_at"])).total_seconds() * 1000)
        call("DELETE", f"/api/v1/jobs/{jid}")
    print(json.dumps({"jobs": jobs, "seconds": secs, "fires": len(late), "outcomes": outcomes,
                      "lateness_ms_p50": round(pct(late, 50), 2), "lateness_ms_p99": round(pct(late, 99), 2),
                      "lateness_ms_max": round(max(late), 2)}))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("throughput", "lateness"):
        print(__doc__)
        sys.exit(2)
    if sys.argv[1] == "throughput":
        throughput(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
    else:
        lateness(int(sys.argv[2]) if len(sys.argv) > 2 else 100, float(sys.argv[3]) if len(sys.argv) > 3 else 30)
