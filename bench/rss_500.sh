#!/usr/bin/env bash
# RSS with PROBES HTTP probes (default 500) of STEPS GETs each (default 2) against a static nginx
# page, in four runs of a fresh agent:
#   idle      the probes configured without a schedule: binary, config, registry, no runs;
#   every10s  `every: 10s` for WINDOW s (default 120), RSS every 10 s: the goal's set-up after
#             warm-up (each probe has run WINDOW/10 times: its metric series exist, its history
#             holds WINDOW/10 of the 100 results it keeps);
#   full      `every: 1s` for FULL s (default 130): every probe's history full (100 results),
#             which the every10s set-up reaches after 1,000 s;
#   full, MALLOC_ARENA_MAX=2  the same with glibc limited to 2 malloc arenas (what allocator
#             fragmentation across tokio's worker threads costs).
#   blackbox  the peer in the same run: prometheus-blackbox-exporter's RSS idle, after WINDOW s of
#             the same load (PROBES targets every 10 s, i.e. PROBES/10 probes/s of the nginx
#             page, paced), and after 5 s of wrk (its peak).
# For each Patrol run: RSS (anon, file) from /proc before any scrape of /metrics, then the
# scrape's size, sample count and time, and RSS after it. PHASES picks the runs (default all:
# "idle every10s full arena blackbox"). blackbox_exporter's
# RSS for comparison: 13–24 MB (see cpu_per_probe.sh; it keeps no per-target state).
# The image ships the dist profile (fat LTO: a smaller mapped binary); measure that by default.
PROFILE="${PROFILE:-dist}"
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-500}"
STEPS="${STEPS:-2}"
WINDOW="${WINDOW:-120}"
FULL="${FULL:-130}"
PHASES="${PHASES:-idle every10s full arena blackbox}"
machine_notes
start_nginx
has() { [[ " $PHASES " == *" $1 "* ]]; }
# RSS now, then one /metrics scrape (its time and size), then RSS again: rendering /metrics
# allocates a copy of every series, and glibc keeps most of that memory afterwards.
report() {
  local label=$1 before after bytes samples runs fails took
  before=$(rss_kib "$AGENT_PID")
  took=$(curl -s -o "$WORK/metrics.txt" -w '%{time_total}' "$AGENT/metrics")
  after=$(rss_kib "$AGENT_PID")
  bytes=$(wc -c < "$WORK/metrics.txt")
  samples=$(grep -vc '^#' "$WORK/metrics.txt" || true)
  runs=$(awk '/^probe_runs_total/ {s += $NF} END {printf "%.0f", s}' "$WORK/metrics.txt")
  fails=$(awk '/^probe_runs_total/ && !/result="pass"/ {s += $NF} END {printf "%.0f", s}' "$WORK/metrics.txt")
  python3 - "$label" "$before" "$after" "$bytes" "$samples" "$runs" "$fails" "$took" << 'PY'
import sys
label, before, after, size, samples, runs, fails, took = sys.argv[1:]
mib = lambda kib: int(kib) / 1024
b, a = before.split(), after.split()
print(f"{label:30s} RSS {mib(b[0]):6.1f} MiB (anon {mib(b[1]):5.1f}, file {mib(b[2]):4.1f}); "
      f"after a scrape {mib(a[0]):6.1f} MiB;  /metrics {int(size) / 1048576:5.2f} MiB, {samples} samples, "
      f"{float(took) * 1000:.0f} ms;  runs {runs} (non-pass {fails})")
PY
}
# RSS only, no scrape.
rss_line() {
  local rss anon file
  read -r rss anon file < <(rss_kib "$AGENT_PID")
  printf '%-30s RSS %6.1f MiB (anon %5.1f, file %4.1f)\n' "$1" "$(bc -l <<< "$rss/1024")" "$(bc -l <<< "$anon/1024")" "$(bc -l <<< "$file/1024")"
}
stop_agent() { kill "$AGENT_PID"; wait "$AGENT_PID" 2> /dev/null || true; }

echo "patrol: $PROBES probes × $STEPS steps against nginx"
if has idle; then
  probes_config "$WORK/idle.yaml" "$PROBES" none "$STEPS" "$NGINX/"
  start_agent "$WORK/idle.yaml"
  sleep 3
  report "idle (no schedule)"
  stop_agent
fi

if has every10s; then
  probes_config "$WORK/every10.yaml" "$PROBES" 10s "$STEPS" "$NGINX/"
  start_agent "$WORK/every10.yaml"
  for t in $(seq 10 10 $((WINDOW - 10))); do
    sleep 10
    rss_line "every10s t=${t}s"
  done
  sleep 10
  report "every10s t=${WINDOW}s"
  sleep 10
  rss_line "every10s t=$((WINDOW + 10))s"
  stop_agent
fi

probes_config "$WORK/full.yaml" "$PROBES" 1s "$STEPS" "$NGINX/"
if has full; then
  start_agent "$WORK/full.yaml"
  sleep "$FULL"
  report "full history (every 1s, ${FULL}s)"
  stop_agent
fi

if has arena; then
  MALLOC_ARENA_MAX=2 start_agent "$WORK/full.yaml"
  sleep "$FULL"
  report "full, MALLOC_ARENA_MAX=2"
  stop_agent
fi

if has blackbox; then
  start_blackbox
  probe_url="$BLACKBOX/probe?target=$NGINX/&module=http_2xx"
  bb() { printf '%-30s RSS %6.1f MiB\n' "$1" "$(bc -l <<< "$(rss_kib "$BLACKBOX_PID" | cut -d' ' -f1)/1024")"; }
  bb "blackbox idle"
  python3 - "$probe_url" $((PROBES * WINDOW / 10)) $((PROBES / 10)) << 'PY'
import http.client, sys, time, urllib.parse
url, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
u = urllib.parse.urlsplit(url)
c = http.client.HTTPConnection(u.hostname, u.port)
start = time.monotonic()
for i in range(count):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    c.request("GET", u.path + "?" + u.query)
    body = c.getresponse().read()
    if b"\nprobe_success 1" not in body:
        sys.exit("blackbox probe failed")
PY
  bb "blackbox after ${WINDOW}s paced"
  wrk -t1 -c4 -d5s "$probe_url" > /dev/null
  bb "blackbox after 5 s of wrk"
fi
