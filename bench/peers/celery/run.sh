#!/usr/bin/env bash
# Celery by hand, as `cargo xtask bench` runs it: start a worker, run bench.py, stop the worker.
# usage: run.sh throughput|latency N    (env: POOL [prefork], CONC [2], BROKER, BACKEND; see tasks.py)
set -u
cd "$(dirname "$0")"
log=${TMPDIR:-/tmp}/celery-worker-$$.log
python3 -m celery -A tasks purge -f >/dev/null 2>&1
python3 -m celery -A tasks worker -P "${POOL:-prefork}" -c "${CONC:-2}" --loglevel warning >"$log" 2>&1 &
w=$!
python3 bench.py ping 60 >/dev/null && python3 bench.py "$1" "$2"
kill -TERM $w
wait $w 2>/dev/null
