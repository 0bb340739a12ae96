#!/usr/bin/env bash
# Scheduler lag with many probes: the agent with PROBES probes (default 1000) of one GET of a
# static nginx page at `every: 1s`, on this 2-core machine. After a WARMUP (default 10 s) the
# patrol_scheduler_lag_seconds histogram, probe_runs_total and patrol_runs_skipped_total are read
# from /metrics, again DURATION s later (default 60), and the difference gives: p50/p99 lag
# (linear interpolation inside the bucket, and the bucket's upper bound), runs counted vs
# scheduled (PROBES × DURATION), skips, and the agent's CPU use.
# Note: the histogram measures how late the scheduler *pops* a slot; the wait for a runner
# permit (agent.max_concurrency, 32 by default) after it is not part of it.
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-1000}"
DURATION="${DURATION:-60}"
WARMUP="${WARMUP:-10}"
machine_notes
start_nginx
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
start_agent "$WORK/probes.yaml"
echo "patrol: $PROBES probes every 1s against nginx; warm-up $WARMUP s, window $DURATION s"
sleep "$WARMUP"
curl -s "$AGENT/metrics" > "$WORK/m0.txt"
c0=$(cpu_ticks "$AGENT_PID")
sleep "$DURATION"
c1=$(cpu_ticks "$AGENT_PID")
curl -s "$AGENT/metrics" > "$WORK/m1.txt"
read -r rss _ < <(rss_kib "$AGENT_PID")
python3 - "$WORK/m0.txt" "$WORK/m1.txt" "$PROBES" "$DURATION" "$((c1 - c0))" "$CLK_TCK" "$rss" << 'PY'
import re, sys
m0, m1, probes, duration, ticks, tck, rss = sys.argv[1:]
probes, duration, ticks, tck = int(probes), int(duration), int(ticks), int(tck)
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
print("lag histogram (cumulative fires per bucket in the window):",
      ", ".join(f"le {le:g}: {int(c)}" for le, c in buckets))
for q in (0.5, 0.99, 0.999):
    v, le = quantile(q)
    print(f"p{q * 100:g} lag: {v * 1000:.2f} ms (interpolated; bucket bound {le * 1000:g} ms)")
print(f"mean lag {lag_sum / total * 1000:.3f} ms over {int(total)} fires")
print(f"runs counted {int(runs)} (pass {int(passed)}) vs scheduled {scheduled} "
      f"({runs / scheduled * 100:.1f}%); skipped {int(skips)}")
print(f"agent CPU {ticks / tck:.1f} s in {duration} s ({ticks / tck / duration * 100:.0f}% of one core), "
      f"{ticks / tck / runs * 1e6:.0f} µs per run; RSS {int(rss) // 1024} MiB")
PY
