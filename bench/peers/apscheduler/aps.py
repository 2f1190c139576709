"""APScheduler 3.x beside idem's `schedule` scenario: N one-second interval jobs, measured D seconds.

usage: python3 aps.py N D [postgresql+psycopg2://postgres@127.0.0.1/DB]

With a database URL the jobs live in its SQLAlchemyJobStore (durable, as idem's); without, in memory.
Prints one JSON line.

Measured as idem is (docs/BENCHMARKS.md): the jobs' first slots are spread over a second (job i at
offset i * 997 mod 1000 ms); the window is [w0, w0 + D) with w0 a whole number of seconds after the
first slot and at least 1 s after start() returned (a job store's jobs are added inside start()), so
each job has D slots in it and expected = N * D.
  fires        slots of the window whose no-op ran (EVENT_JOB_EXECUTED); lateness = when it
               finished - its slot
  missed       slots of the window with no fire by 5 s after the window closed (coalesced-away
               runs are dropped silently by APScheduler, so its own EVENT_JOB_MISSED count,
               reported as missed_events, is lower)
  cpu_pct      this process's CPU over the window, percent of one core; rss_mb at the window's end
"""
import json
import logging
import math
import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import apscheduler
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler

logging.disable(logging.CRITICAL)
n, dur = int(sys.argv[1]), int(sys.argv[2])
stores = {}
if len(sys.argv) > 3:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    stores = {"default": SQLAlchemyJobStore(url=sys.argv[3])}

lock = threading.Lock()
lat, missed_events = [], [0]
window = [None, None]


def in_window(t):
    return window[0] is not None and window[0] <= t < window[1]


def noop():
    pass


def on_exec(ev):
    if in_window(ev.scheduled_run_time):
        ms = (datetime.now(timezone.utc) - ev.scheduled_run_time).total_seconds() * 1000
        with lock:
            lat.append(ms)


def on_miss(ev):
    if in_window(ev.scheduled_run_time):
        with lock:
            missed_events[0] += 1


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs, p):
    return xs[max(1, math.ceil(p / 100 * len(xs))) - 1] if xs else None


def sleep_until(t):
    d = (t - datetime.now(timezone.utc)).total_seconds()
    if d > 0:
        time.sleep(d)


s = BackgroundScheduler(jobstores=stores,
                        executors={"default": {"type": "threadpool", "max_workers": 20}},
                        job_defaults={"misfire_grace_time": 1, "coalesce": True, "max_instances": 1})
s.add_listener(on_exec, EVENT_JOB_EXECUTED)
s.add_listener(on_miss, EVENT_JOB_MISSED)
now = datetime.now(timezone.utc)
start = now.replace(microsecond=0) + timedelta(seconds=3)
for i in range(n):
    s.add_job(noop, "interval", seconds=1, start_date=start + timedelta(milliseconds=(i * 997) % 1000),
              id=f"j{i}", replace_existing=True)
t_add = time.perf_counter()
s.start()
add_s = time.perf_counter() - t_add
started = datetime.now(timezone.utc)
m = max(1, math.ceil((started + timedelta(seconds=1) - start).total_seconds()))
w0 = start + timedelta(seconds=m)
w1 = w0 + timedelta(seconds=dur)
window[0], window[1] = w0, w1
sleep_until(w0)
c0, t0 = time.process_time(), time.perf_counter()
sleep_until(w1)
cpu = (time.process_time() - c0) / (time.perf_counter() - t0) * 100
rss = status_mb("VmRSS")
time.sleep(5)
with lock:
    late = sorted(lat)
    missed_ev = missed_events[0]
expected = n * dur
print(json.dumps({
    "jobs": n, "seconds": dur, "expected": expected, "fires": len(late),
    "missed": expected - len(late), "missed_events": missed_ev, "skipped": 0,
    "p50_ms": round(pct(late, 50), 1) if late else None,
    "p99_ms": round(pct(late, 99), 1) if late else None,
    "max_ms": round(late[-1], 1) if late else None,
    "cpu_pct": round(cpu, 1), "rss_mb": round(rss, 1),
    "peak_rss_mb": round(status_mb("VmHWM"), 1),
    "add_seconds": round(add_s, 1), "store": "sqlalchemy" if stores else "memory",
    "apscheduler": apscheduler.__version__,
}), flush=True)
# Do not wait for the executor's queue or the job store: the measurement is over.
os._exit(0)
