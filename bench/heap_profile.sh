#!/usr/bin/env bash
# Where the agent's memory goes: `patrol run` under heaptrack with PROBES probes (default 500) of
# STEPS GETs (default 2) at `every: EVERY` (default 10s) against nginx for DURATION s (default
# 25; every probe has run 2–3 times), optionally with one /metrics scrape at the end (SCRAPE=1).
# Prints heaptrack's peak heap, then the peak split by the first recognisable frame of each
# allocation's stack (metrics series, history, probe results, config, /metrics rendering…),
# then heaptrack's own top peak sites.
NO_SHOP=1 source "$(dirname "$0")/common.sh"
command -v heaptrack > /dev/null || { echo "heaptrack is needed: apt-get install heaptrack"; exit 2; }
PROBES="${PROBES:-500}"
STEPS="${STEPS:-2}"
EVERY="${EVERY:-10s}"
DURATION="${DURATION:-25}"
machine_notes
start_nginx
probes_config "$WORK/probes.yaml" "$PROBES" "$EVERY" "$STEPS" "$NGINX/"
heaptrack -o "$WORK/heap" "$PATROL" run --config "$WORK/probes.yaml" --listen 127.0.0.1:0 --grace 1s \
  > "$WORK/agent.out" 2> "$WORK/agent.err" &
HT_PID=$!
PIDS+=("$HT_PID")
for _ in $(seq 300); do
  AGENT="$(sed -n 's/^patrol agent listening on //p' "$WORK/agent.out")"
  [ -n "$AGENT" ] && break
  sleep 0.1
done
AGENT_PID=$(pgrep -P "$HT_PID" -x patrol || pgrep -f "$WORK/bin/patrol run" | head -1)
sleep "$DURATION"
echo "RSS under heaptrack: $(rss_kib "$AGENT_PID") KiB (rss anon file)"
if [ -n "${SCRAPE:-}" ]; then
  curl -s -o /dev/null -w "scrape: %{size_download} bytes in %{time_total} s\n" "$AGENT/metrics"
fi
kill "$AGENT_PID"
wait "$HT_PID" 2> /dev/null || true
file=$(find "$WORK" -maxdepth 1 -name 'heap*' | head -1)
[ -n "$file" ] || { echo "heaptrack wrote no data" >&2; exit 1; }
heaptrack_print -f "$file" --print-peaks 0 --print-allocators 0 --print-temporary 0 2> /dev/null \
  | grep -E "^(peak heap memory consumption|total memory leaked|calls to allocation functions)" || true
heaptrack_print -f "$file" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --flamegraph-cost-type peak -F "$WORK/peak.stacks" > /dev/null 2>&1
python3 - "$WORK/peak.stacks" << 'PY'
import collections, sys
# First match wins, scanning each stack from the allocation up to main.
rules = [
    ("/metrics rendering (gather + text encoding)", ["Metrics::render", "TextEncoder", "Registry::gather"]),
    ("metric series (prometheus MetricVec::with_label_values)", ["with_label_values", "MetricVec"]),
    ("metric series (probe_* store)", ["metrics::series::"]),
    ("history: latency windows", ["LatencyWindows", "history::Ring", "hdrhistogram"]),
    ("history: stored results (copy without exchange)", ["without_exchanges", "History::record"]),
    ("probe results in flight / run", ["run_probe", "run_steps", "run_step", "Transport::send", "StepExchange"]),
    ("config load and probe specs", ["config::", "Loaded::new", "saphyr"]),
    # Not "scheduler::": tokio::runtime::scheduler frames are on every task's stack.
    ("scheduler", ["patrol::scheduler::", "start_scheduler"]),
    ("tokio runtime / tasks", ["tokio::runtime", "tokio::task", "task_tracker"]),
    ("HTTP server (axum/hyper server)", ["axum", "hyper::server"]),
]
totals = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, cost = line.rstrip("\n").rpartition(" ")
    frames = stack.split(";")
    label = "other"
    for name, keys in rules:
        if any(k in f for f in frames for k in keys):
            label = name
            break
    totals[label] += int(cost)
total = sum(totals.values())
print(f"peak heap split ({total / 1048576:.1f} MiB):")
for label, cost in totals.most_common():
    print(f"  {cost / 1048576:7.2f} MiB  {cost / total * 100:5.1f}%  {label}")
PY
echo "--- heaptrack top peak sites ---"
heaptrack_print -f "$file" --print-peaks 1 --print-allocators 0 --print-temporary 0 --peak-limit 8 --sub-peak-limit 2 2> /dev/null \
  | sed -n '/PEAK MEMORY CONSUMERS/,/^$/p;/^[0-9.]*[KMG]*B peak memory consumed over/,+12p' | head -150
