#!/usr/bin/env bash
# Load and soak: PROBES configured probes (default 2,000), each one GET of a static nginx page on
# loopback at `every: EVERY` seconds (default 10), i.e. PROBES/EVERY runs a second (200/s), for
# DURATION seconds (default 600; `DURATION=60 bench/soak.sh` is the one-minute CI version).
#
# Goals, each checked; the script exits 1 when one is missed:
# - RSS flat: the last sample is within RSS_GROWTH_PCT (5%) of the first of the window;
# - open file descriptors flat: the last count is within FD_GROWTH (10) of the first;
# - scheduler lag p99 within LAG_P99_MS (5 ms): at least 99% of the window's fires are in the
#   patrol_scheduler_lag_seconds buckets up to 5 ms;
# - no result dropped: every run started produced exactly one counted result (probe_runs_total
#   equals the fires, patrol_scheduler_lag_seconds_count, plus the prefill's on-demand runs, once
#   the agent is drained), and the fires plus the overlaps counted in patrol_runs_skipped_total
#   equal the runs the schedule calls for in the window — computed here from the schedule itself
#   (Patrol's epoch-aligned grid, offset per probe by FNV-1a + murmur mix of the name, as in
#   agent/src/scheduler.rs, checked against every probe's next_run) and the wall-clock window;
#   only slots within ~0.3 s of the window's two edges are uncertain, and the check allows
#   exactly those;
# - every run passed (nginx on loopback never fails; a failure would be the agent's fault).
#
# How: before the window the agent's bounded stores are filled, so what is measured is steady
# state rather than their filling: PREFILL (100, the per-probe history capacity) on-demand runs
# of every probe through POST /api/v1/runs, then 100 one-probe runs so the run store (the last
# 100 API runs) no longer pins the prefill results; then WARMUP seconds (default 20). The window
# opens with a /metrics scrape; RSS (VmRSS) and the fd count (/proc/PID/fd) are sampled every
# SAMPLE seconds (10); at its end the config is reloaded with the same probes unscheduled, which
# stops the schedule without dropping any series, and once runs in flight are done the last
# scrape closes the books.
#
# Environment: PROBES, EVERY, DURATION, WARMUP, SAMPLE, PREFILL, SCRAPE (scrape /metrics every
# SCRAPE seconds in the window; default only its two), PRIORITY (a nice value for the
# agent and nginx), the goals RSS_GROWTH_PCT, FD_GROWTH, LAG_P99_MS (a bucket bound of the lag
# histogram: 0.5, 1, 2.5, 5, 10… ms), JUDGE_LAG (0: report the lag only), and common.sh's NO_BUILD,
# BIN_DIR and AGENT_PREFIX (e.g. AGENT_PREFIX="chrt -f 10": the agent at real-time priority).
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-2000}"
EVERY="${EVERY:-10}"
DURATION="${DURATION:-600}"
WARMUP="${WARMUP:-20}"
SAMPLE="${SAMPLE:-10}"
PREFILL="${PREFILL:-100}"
RSS_GROWTH_PCT="${RSS_GROWTH_PCT:-5}"
FD_GROWTH="${FD_GROWTH:-10}"
LAG_P99_MS="${LAG_P99_MS:-5}"
# JUDGE_LAG=0 prints the lag figures without judging them (CI: a shared machine's timing is not
# a verdict on the code; BENCHMARKS.md section 7 judges the lag goal on measured runs).
JUDGE_LAG="${JUDGE_LAG:-1}"

machine_notes
start_nginx
probes_config "$WORK/soak.yaml" "$PROBES" "${EVERY}s" 1 "$NGINX/"
start_agent "$WORK/soak.yaml"
# PRIORITY=-10 (say) renices the agent's threads and nginx: on a machine busy with other work
# (builds, test suites) the scheduler then competes less for a core, which is what the lag goal
# assumes. Default: no change.
if [ -n "${PRIORITY:-}" ]; then
  # A thread may end between the listing and renice: not an error.
  for task in /proc/"$AGENT_PID"/task/* /proc/"$NGINX_PID"/task/*; do
    renice -n "$PRIORITY" -p "${task##*/}" > /dev/null 2>&1 || true
  done
  for pid in $(pgrep -P "$NGINX_PID" || true); do renice -n "$PRIORITY" -p "$pid" > /dev/null 2>&1 || true; done
fi
curl -sSf "$AGENT/api/v1/probes" > "$WORK/probes.json"
echo "patrol: $PROBES probes every ${EVERY}s against nginx ($((PROBES / EVERY)) runs/s); window ${DURATION}s"

now() { date +%s.%N; }
fds() { find "/proc/$AGENT_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
alive() { kill -0 "$AGENT_PID" 2> /dev/null || { echo "the agent died:" >&2; tail -20 "$WORK/agent.err" >&2; exit 1; }; }

# POST /api/v1/runs with BODY; prints the run id.
start_run() {
  curl -sf -X POST -H 'content-type: application/json' -d "$1" "$AGENT/api/v1/runs" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
# Waits until every run id given is done.
wait_runs() {
  local id
  for id in "$@"; do
    until curl -sf "$AGENT/api/v1/runs/$id" | grep -q '"status":"done"'; do sleep 0.05; alive; done
  done
}

started=$(date +%s)
if [ "$PREFILL" -gt 0 ]; then
  # Five runs of every probe at a time: 10,000 queued behind agent.max_concurrency.
  for ((round = 0; round < PREFILL; round += 5)); do
    ids=()
    for ((k = round; k < round + 5 && k < PREFILL; k++)); do ids+=("$(start_run '{}')"); done
    wait_runs "${ids[@]}"
  done
  ids=()
  for ((k = 0; k < 100; k++)); do ids+=("$(start_run '{"probes":["p0001"]}')"); done
  wait_runs "${ids[@]}"
fi
echo "prefill: $PREFILL runs of every probe in $(($(date +%s) - started)) s; RSS $(rss_kib "$AGENT_PID" | cut -d' ' -f1) KiB"
sleep "$WARMUP"
alive

t0a=$(now)
curl -sf "$AGENT/metrics" > "$WORK/m0.txt"
t0b=$(now)
# SCRAPE=15 scrapes /metrics every 15 s in the window, as Prometheus would.
if [ "${SCRAPE:-0}" -gt 0 ]; then
  (
    while sleep "$SCRAPE"; do curl -sf "$AGENT/metrics" -o /dev/null || exit 0; done
  ) &
  SCRAPER=$!
  PIDS+=("$SCRAPER")
fi
: > "$WORK/samples.tsv"
end=$(python3 -c "print($t0a + $DURATION)")
for ((i = 0; ; i++)); do
  at=$(python3 -c "print($t0b + $i * $SAMPLE)")
  python3 -c "import time; time.sleep(max(0, min($at, $end) - time.time()))"
  alive
  read -r rss _ < <(rss_kib "$AGENT_PID")
  printf '%s\t%s\t%s\n' "$(python3 -c "print(round(min($at, $end) - $t0b))")" "$rss" "$(fds)" >> "$WORK/samples.tsv"
  python3 -c "import sys; sys.exit(0 if $at < $end else 1)" || break
done

# Stop the schedule (same probes, none scheduled: every series stays), drain, read the books.
if [ -n "${SCRAPER:-}" ]; then kill "$SCRAPER" 2> /dev/null || true; fi
probes_config "$WORK/soak.yaml" "$PROBES" none 1 "$NGINX/"
t1a=$(now)
curl -sf -X POST "$AGENT/-/reload" > "$WORK/reload.json"
t1b=$(now)
grep -q '"result":"success"' "$WORK/reload.json" || { echo "reload failed: $(cat "$WORK/reload.json")" >&2; exit 1; }
sleep 3
curl -sf "$AGENT/metrics" > "$WORK/m1.txt"
read -r rss_end _ < <(rss_kib "$AGENT_PID")

echo "command: PROBES=$PROBES EVERY=$EVERY DURATION=$DURATION WARMUP=$WARMUP PREFILL=$PREFILL${SCRAPE:+ SCRAPE=$SCRAPE}${PRIORITY:+ PRIORITY=$PRIORITY}${AGENT_PREFIX:+ AGENT_PREFIX=\"$AGENT_PREFIX\"} bench/soak.sh"
python3 - "$WORK" "$PROBES" "$EVERY" "$t0a" "$t0b" "$t1a" "$t1b" "$RSS_GROWTH_PCT" "$FD_GROWTH" \
  "$LAG_P99_MS" "$CLK_TCK" "$(cpu_ticks "$AGENT_PID")" "$rss_end" \
  "$((PREFILL > 0 ? PREFILL * PROBES + 100 : 0))" "$JUDGE_LAG" << 'PY'
import re, sys

work, probes, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0a, t0b, t1a, t1b = map(float, sys.argv[4:8])
rss_pct, fd_growth, lag_goal_ms = float(sys.argv[8]), int(sys.argv[9]), float(sys.argv[10])
tck, ticks, rss_end = int(sys.argv[11]), int(sys.argv[12]), int(sys.argv[13])
api_runs = int(sys.argv[14])  # the prefill's on-demand runs, all finished before the window

def parse(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out

m0, m1 = parse(f"{work}/m0.txt"), parse(f"{work}/m1.txt")
def total(m, prefix):
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))
def delta(prefix):
    return total(m1, prefix) - total(m0, prefix)

# The schedule, as agent/src/scheduler.rs computes it: slot k of a probe is at
# k * period + spread_offset(name, period) on the Unix epoch.
M = (1 << 64) - 1
def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M
    return h
def mix64(h):
    h ^= h >> 33; h = (h * 0xFF51AFD7ED558CCD) & M
    h ^= h >> 33; h = (h * 0xC4CEB9FE1A85EC53) & M
    return h ^ (h >> 33)
period_ms = every * 1000
offsets = [mix64(fnv1a64(f"p{i:04d}".encode())) % period_ms for i in range(1, probes + 1)]
# Check the formula against the agent's own next_run for every probe.
import json
from datetime import datetime
for p in json.load(open(f"{work}/probes.json"))["probes"]:
    at = re.sub(r"(\.\d{6})\d+", r"\1", p["next_run"])
    ms = round(datetime.fromisoformat(at).timestamp() * 1000)
    i = int(p["name"][1:]) - 1
    if (ms - offsets[i]) % period_ms:
        sys.exit(f"the schedule formula disagrees with the agent: {p['name']} next_run {p['next_run']}")
def slots(a, b):
    """Slots of every probe with a < t <= b (seconds since the epoch)."""
    a_ms, b_ms = a * 1000, b * 1000
    return sum(int((b_ms - o) // period_ms) - int((a_ms - o) // period_ms) for o in offsets)
# A slot shortly before a scrape may still be running during it, and one during the scrape or
# the reload may or may not be counted: those are the uncertain ones.
before, after = 0.25, 0.05
certain = slots(t0b + after, t1a - before)
uncertain = slots(t0a - before, t0b + after) + slots(t1a - before, t1b + after)

fires_total = m1["patrol_scheduler_lag_seconds_count"]
runs_total = total(m1, "probe_runs_total")
fires, skips, runs = delta("patrol_scheduler_lag_seconds_count"), delta("patrol_runs_skipped_total"), delta("probe_runs_total")
results = {}
for k, v in m1.items():
    if k.startswith("probe_runs_total{"):
        r = re.search(r'result="([^"]+)"', k).group(1)
        results[r] = results.get(r, 0) + v - m0.get(k, 0)

buckets = sorted((float(re.search(r'le="([^"]+)"', k).group(1)), m1[k] - m0.get(k, 0))
                 for k in m1 if k.startswith("patrol_scheduler_lag_seconds_bucket"))
count = buckets[-1][1]
def quantile(q):
    rank, lo, below = q * count, 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / (cum - below) if cum > below else 0)
        lo, below = le, cum
    return lo
within_goal = sum(c for le, c in buckets if abs(le - lag_goal_ms / 1000) < 1e-9)
lag_sum = delta("patrol_scheduler_lag_seconds_sum")

rows = [list(map(int, l.split())) for l in open(f"{work}/samples.tsv")]
def slope(col):
    t = [r[0] / 60 for r in rows]; y = [r[col] for r in rows]
    mt, my = sum(t) / len(t), sum(y) / len(y)
    den = sum((a - mt) ** 2 for a in t)
    return sum((a - mt) * (b - my) for a, b in zip(t, y)) / den if den else 0.0
rss = [r[1] for r in rows]; fd = [r[2] for r in rows]
window = t1a - t0a

print("t_s\trss_kib\tfds")
for r in rows:
    print("\t".join(map(str, r)))
print(f"window {window:.1f} s; {int(fires)} fires, {int(skips)} skipped (overlap), {int(runs)} results "
      f"({', '.join(f'{k} {int(v)}' for k, v in sorted(results.items()))}); "
      f"{runs / window:.1f} runs/s")
print(f"scheduled by the schedule: {certain} certain + up to {uncertain} at the window's edges")
print("lag buckets (fires in the window): " + ", ".join(f"le {le:g}: {int(c)}" for le, c in buckets))
print(f"lag p50 {quantile(0.5) * 1000:.2f} ms, p99 {quantile(0.99) * 1000:.2f} ms, "
      f"p99.9 {quantile(0.999) * 1000:.2f} ms (interpolated in buckets); mean {lag_sum / count * 1000:.3f} ms; "
      f"{within_goal / count * 100:.3f}% within {lag_goal_ms:g} ms")
print(f"RSS KiB first {rss[0]}, last {rss[-1]}, min {min(rss)}, max {max(rss)}, slope {slope(1):.1f} KiB/min; "
      f"after the drain {rss_end}")
print(f"fds first {fd[0]}, last {fd[-1]}, min {min(fd)}, max {max(fd)}")
print(f"since start: {int(fires_total)} fires + {api_runs} on-demand runs = {int(fires_total) + api_runs}; "
      f"{int(runs_total)} results")
print(f"agent CPU since start {ticks / tck:.0f} s")

missed = []
growth = (rss[-1] - rss[0]) / rss[0] * 100
if growth > rss_pct:
    missed.append(f"RSS grew {growth:.1f}% (> {rss_pct:g}%)")
if fd[-1] - fd[0] > fd_growth:
    missed.append(f"open fds grew by {fd[-1] - fd[0]} (> {fd_growth})")
if within_goal < 0.99 * count and sys.argv[15] != "0":
    missed.append(f"scheduler lag p99 over {lag_goal_ms:g} ms ({within_goal / count * 100:.2f}% within)")
# Every run started, scheduled or on demand, became exactly one counted result (all drained).
if runs_total != fires_total + api_runs:
    missed.append(f"results {int(runs_total)} != fires {int(fires_total)} + on-demand runs {api_runs}")
if not (certain <= fires + skips <= certain + uncertain):
    missed.append(f"fires + skips {int(fires + skips)} outside the schedule's {certain}..{certain + uncertain}")
if any(r != "pass" and n > 0 for r, n in results.items()):
    missed.append(f"runs that did not pass: {results}")
if missed:
    print("GOALS MISSED: " + "; ".join(missed))
    sys.exit(1)
lag_verdict = f"lag p99 <= {lag_goal_ms:g} ms" if within_goal >= 0.99 * count else "lag not judged (JUDGE_LAG=0)"
print(f"all goals met: RSS {growth:+.1f}%, fds {fd[-1] - fd[0]:+d}, {lag_verdict}, "
      f"results = fires = scheduled - skipped")
PY
