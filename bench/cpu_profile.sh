#!/usr/bin/env bash
# Where the agent's CPU per run goes: `perf record` (DWARF call graphs) of `patrol run` with
# PROBES probes (default 200) of one GET of a static nginx page at `every: 1s`, for DURATION s
# (default 20) after a 5 s warm-up; every sample is put in the first category (in the order
# below) that a frame of its stack matches. Samples whose stack could not be unwound to a
# Patrol frame are split by where they were taken (kernel, libc, patrol).
NO_SHOP=1 source "$(dirname "$0")/common.sh"
command -v perf > /dev/null || { echo "perf is needed: apt-get install linux-perf"; exit 2; }
PROBES="${PROBES:-200}"
DURATION="${DURATION:-20}"
machine_notes
start_nginx
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
start_agent "$WORK/probes.yaml"
sleep 5
r0=$(metric_sum probe_runs_total)
perf record -q -F 1999 --call-graph dwarf,32768 -o "$WORK/perf.data" -p "$AGENT_PID" -- sleep "$DURATION" 2> /dev/null
r1=$(metric_sum probe_runs_total)
perf script -i "$WORK/perf.data" -F comm,tid,ip,sym,dso 2> /dev/null > "$WORK/perf.txt"
python3 - "$WORK/perf.txt" "$((r1 - r0))" << 'PY'
import collections, sys
rules = [
    ("/metrics rendering", ["Metrics::render"]),
    ("metrics: record_run (label lookups, histograms)", ["Metrics::record_run", "record_scheduler_lag"]),
    ("history: record (result copy, latency windows)", ["History::record"]),
    ("engine: request building (templates, URL parsing)", ["render_request", "build_request"]),
    ("engine: exchange capture and masking", ["StepExchange::shown", "mask_step", "Masker"]),
    ("engine: assertions", ["Assertion::evaluate", "assert::"]),
    ("transport: TCP connect", ["TcpStream::connect", "Run::connect"]),
    ("transport: HTTP exchange (hyper, socket I/O, close)", ["Transport::send", "hyper::"]),
    ("engine: other (run_probe, results, uuid)", ["run_probe", "run_steps", "run_step"]),
    ("scheduler loop", ["patrol::scheduler::"]),
    ("dispatcher + runner (spawn, permits, tracker, timeouts)", ["patrol::daemon::run", "patrol::runner::", "task_tracker", "tokio::task::spawn"]),
    ("tokio: park/unpark, timers, I/O driver (idle workers, epoll, futex)", ["park", "Driver::turn", "epoll_wait", "futex", "tokio::runtime::time"]),
]
totals = collections.Counter()
stack, n = [], 0
def flush():
    global stack, n
    if not stack:
        return
    n += 1
    label = None
    for name, keys in rules:
        if any(k in f for f in stack for k in keys):
            label = name
            break
    if label is None:
        leaf = stack[0]
        label = ("unattributed: kernel" if "kernel" in leaf else
                 "unattributed: libc (malloc/free/memcpy)" if "libc" in leaf else
                 "unattributed: patrol/tokio")
    totals[label] += 1
    stack = []
for line in open(sys.argv[1]):
    if not line.strip():
        flush()
    elif line.startswith((" ", "\t")):
        stack.append(line.strip())
    # header lines (comm tid) start a sample
flush()
runs = int(sys.argv[2])
print(f"{n} samples over {runs} runs")
for label, c in totals.most_common():
    print(f"  {c / n * 100:5.1f}%  {label}")
PY
