#!/usr/bin/env python3
"""idem's distributed benchmarks: spawn real `idem` role processes against the machine's services.

  throughput N [full|pg]   1 api + 2 workers (+1 scheduler) on a fresh PostgreSQL database, with
                           RabbitMQ + Redis (full) or PostgreSQL only (pg); N noop tasks through the
                           batch endpoint; prints submit and end-to-end tasks per second
  failover [full|pg]       2 schedulers + 1 worker + 1 api, 20 one-second interval jobs; SIGKILL one
                           scheduler and report when the first fire after the kill was recorded, and
                           whether any slot was lost

Needs a release build (cargo build --release) and psql-free access to PostgreSQL at
postgres://postgres@127.0.0.1:5432 (trust auth, as on the dev machines). Stdlib only.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "idem")
PG = os.environ.get("IDEM_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
AMQP = os.environ.get("IDEM_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS = os.environ.get("IDEM_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PORT = 8790


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def fresh_db():
    name = f"idem_bench_{time.time_ns()}"
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    return f"{PG}/{name}"


def env_for(shape, db, queue):
    env = dict(os.environ, IDEM_DATABASE_URL=db, IDEM_LOG="warn", IDEM_QUEUES=queue)
    if shape == "full":
        env.update(IDEM_BROKER_URL=AMQP, IDEM_REDIS_URL=REDIS)
    return env


def spawn(role, env, *args):
    return subprocess.Popen([BIN, role, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(f"/tmp/idem-bench-{role}-{time.time_ns()}.log", "w"))


def wait_api():
    for _ in range(300):
        try:
            call("GET", "/health/ready")
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit("api did not come up")


def throughput(n, shape):
    db = fresh_db()
    queue = f"b{time.time_ns()}"
    env = env_for(shape, db, queue)
    subprocess.run([BIN, "migrate"], env=env, check=True)
    procs = [spawn("api", env, "--bind", f"127.0.0.1:{PORT}"), spawn("scheduler", env),
             spawn("worker", env), spawn("worker", env)]
    try:
        wait_api()
        time.sleep(1)
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            items = [{"task": "noop", "args": {"i": i}, "queue": queue} for i in range(start, min(n, start + 1000))]
            status, _ = call("POST", "/api/v1/tasks/submit/batch", {"items": items})
            assert status == 202, status
        t_submit = time.perf_counter() - t0
        while any(call("GET", f"/api/v1/tasks?state={st}&limit=1")[1]["items"]
                  for st in ("queued", "running", "scheduled", "retrying")):
            time.sleep(0.05)
        t_all = time.perf_counter() - t0
        _, ok = call("GET", "/api/v1/tasks?state=succeeded&limit=1")
        print(json.dumps({"shape": shape, "workers": 2, "tasks": n, "submit_per_s": round(n / t_submit),
                          "end_to_end_per_s": round(n / t_all), "seconds": round(t_all, 2)}))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def parse(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def failover(shape):
    db = fresh_db()
    queue = f"f{time.time_ns()}"
    env = env_for(shape, db, queue)
    subprocess.run([BIN, "migrate"], env=env, check=True)
    api = spawn("api", env, "--bind", f"127.0.0.1:{PORT}")
    s1, s2 = spawn("scheduler", env), spawn("scheduler", env)
    worker = spawn("worker", env)
    procs = [api, s2, worker]
    try:
        wait_api()
        for j in range(20):
            call("POST", "/api/v1/jobs", {"id": f"f{j}", "task": "noop", "queue": queue, "max_instances": 5,
                                          "trigger": {"type": "interval", "every_seconds": 1}})
        time.sleep(5.3)
        s1.send_signal(signal.SIGKILL)
        killed = datetime.now(timezone.utc)
        s1.wait()
        time.sleep(5)
        firsts, gaps, missed = [], [], 0
        for j in range(20):
            call("POST", f"/api/v1/jobs/f{j}/pause")
            _, runs = call("GET", f"/api/v1/jobs/f{j}/runs?limit=1000")
            fired = sorted(parse(r["scheduled_at"]) for r in runs["items"] if r["outcome"] == "fired")
            recorded = sorted(parse(r["recorded_at"]) for r in runs["items"] if r["outcome"] == "fired")
            missed += sum(1 for r in runs["items"] if r["outcome"] != "fired")
            after = [r for r in recorded if r > killed]
            firsts.append((after[0] - killed).total_seconds() * 1000)
            gaps.extend((b - a).total_seconds() for a, b in zip(fired, fired[1:]))
        print(json.dumps({"shape": shape, "first_fire_after_kill_ms": round(min(firsts)),
                          "every_job_fired_again_within_ms": round(max(firsts)),
                          "largest_gap_between_slots_s": round(max(gaps), 3), "not_fired": missed}))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("throughput", "failover"):
        print(__doc__)
        sys.exit(2)
    if sys.argv[1] == "throughput":
        throughput(int(sys.argv[2]) if len(sys.argv) > 2 else 20_000, sys.argv[3] if len(sys.argv) > 3 else "full")
    else:
        failover(sys.argv[2] if len(sys.argv) > 2 else "full")
