#!/usr/bin/env bash
# Scheduler lag with many probes: the agent with PROBES probes (default 1000) of one GET of a
# static nginx page at `every: 1s`, on this 2-core machine. The patrol_scheduler_lag_seconds
# histogram, probe_runs_total and patrol_runs_skipped_total are read from /metrics after a
# WARMUP (default 10 s) and differenced over two windows:
#   quiet    QUIET s (default 300) with no scrape in between (a scrape renders every series and
#            stalls the agent, see below; over 300 s the one at the window's start weighs little);
#   scraped  SCRAPED s (default 60) with a scrape every SCRAPE_EVERY s (default 15, Prometheus'
#            usual interval), like a real deployment.
# For each: p50/p99/p99.9 lag (linear interpolation inside the bucket, and the bucket's upper
# bound), runs counted vs scheduled (PROBES × window), skips, the agent's CPU, and the same
# percentiles for a reference timer loop (Python, a wake-up every 1 ms on a grid) run alongside:
# what this machine's CPU contention alone does to a timer. Scrape sizes and times are printed.
# The histogram measures how late the scheduler *pops* a slot; the wait for a runner permit
# (agent.max_concurrency, 32 by default) after it is not part of it.
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-1000}"
QUIET="${QUIET:-300}"
SCRAPED="${SCRAPED:-60}"
SCRAPE_EVERY="${SCRAPE_EVERY:-15}"
WARMUP="${WARMUP:-10}"
machine_notes
start_nginx
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
cat > "$WORK/ticker.py" << 'PY'
# Wakes on a 1 ms grid for argv[1] seconds; prints lateness percentiles in ms.
import sys, time
duration, period = float(sys.argv[1]), 0.001
start = time.monotonic()
slot = start + period
late = []
while slot - start < duration:
    delay = slot - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    now = time.monotonic()
    late.append(now - slot)
    slot += period
    if slot < now:  # coalesce missed slots, as the scheduler does
        slot += ((now - slot) // period + 1) * period
late.sort()
q = lambda p: late[min(len(late) - 1, int(p * len(late)))] * 1000
print(f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, p99.9 {q(0.999):.2f} ms over {len(late)} wake-ups")
PY
start_agent "$WORK/probes.yaml"
echo "patrol: $PROBES probes every 1s against nginx; warm-up $WARMUP s, quiet window $QUIET s," \
  "scraped window $SCRAPED s (a scrape every $SCRAPE_EVERY s)"
sleep "$WARMUP"
scrape() { curl -s -o "$1" -w '%{time_total} %{size_download}\n' "$AGENT/metrics" >> "$WORK/scrapes.txt"; }
scrape "$WORK/m0.txt"
c0=$(cpu_ticks "$AGENT_PID")
python3 "$WORK/ticker.py" "$QUIET" > "$WORK/ticker_quiet.txt"
c1=$(cpu_ticks "$AGENT_PID")
scrape "$WORK/m1.txt"
python3 "$WORK/ticker.py" "$SCRAPED" > "$WORK/ticker_scraped.txt" &
ticker=$!
for _ in $(seq $((SCRAPED / SCRAPE_EVERY - 1))); do
  sleep "$SCRAPE_EVERY"
  scrape /dev/null
done
wait "$ticker"
c2=$(cpu_ticks "$AGENT_PID")
scrape "$WORK/m2.txt"
read -r rss _ < <(rss_kib "$AGENT_PID")
echo "scrapes (s, bytes): $(awk '{printf "%.2f/%d ", $1, $2}' "$WORK/scrapes.txt")"
echo "agent RSS at the end: $((rss / 1024)) MiB"
window() { # label from to seconds ticks ticker-file
  python3 - "$@" "$PROBES" "$CLK_TCK" << 'PY'
import re, sys
label, m0, m1, duration, ticks, ticker, probes, tck = sys.argv[1:]
duration, ticks, probes, tck = int(duration), int(ticks), int(probes), int(tck)
def parse(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out
a, b = parse(m0), parse(m1)
def delta(pred):
    return sum(b[k] - a.get(k, 0) for k in b if pred(k))
buckets = sorted((float(re.search(r'le="([^"]+)"', k).group(1)), b[k] - a.get(k, 0))
                 for k in b if k.startswith("patrol_scheduler_lag_seconds_bucket"))
total = buckets[-1][1]
def quantile(q):
    rank, lo, below = q * total, 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lo, lo
            frac = (rank - below) / (cum - below) if cum > below else 0
            return lo + (le - lo) * frac, le
        lo, below = le, cum
    return lo, lo
runs = delta(lambda k: k.startswith("probe_runs_total"))
passed = delta(lambda k: k.startswith("probe_runs_total") and 'result="pass"' in k)
skips = delta(lambda k: k.startswith("patrol_runs_skipped_total"))
lag_sum = delta(lambda k: k == "patrol_scheduler_lag_seconds_sum")
scheduled = probes * duration
print(f"== {label} window, {duration} s")
print("  lag histogram (fires per cumulative bucket):",
      ", ".join(f"le {le * 1000:g}ms: {int(c)}" for le, c in buckets))
print("  patrol lag: " + ", ".join(
    f"p{q * 100:g} {quantile(q)[0] * 1000:.2f} ms (bucket ≤{quantile(q)[1] * 1000:g})" for q in (0.5, 0.99, 0.999))
    + f"; mean {lag_sum / total * 1000:.2f} ms over {int(total)} fires")
print(f"  reference 1 ms timer loop: {open(ticker).read().strip()}")
print(f"  runs counted {int(runs)} (pass {int(passed)}) vs scheduled {scheduled} "
      f"({runs / scheduled * 100:.1f}%); skipped {int(skips)}")
print(f"  agent CPU {ticks / tck:.1f} s ({ticks / tck / duration * 100:.0f}% of one core), "
      f"{ticks / tck / runs * 1e6:.0f} µs per run")
PY
}
window quiet "$WORK/m0.txt" "$WORK/m1.txt" "$QUIET" $((c1 - c0)) "$WORK/ticker_quiet.txt"
window scraped "$WORK/m1.txt" "$WORK/m2.txt" "$SCRAPED" $((c2 - c1)) "$WORK/ticker_scraped.txt"
