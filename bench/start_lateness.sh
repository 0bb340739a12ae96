#!/usr/bin/env bash
# How late runs really start, and when: the agent with PROBES probes (default 1000) at
# `every: 1s` against nginx runs for DURATION s (default 110) with no /metrics scrape; then every
# probe's last 100 runs are read from /api/v1/probes/NAME/runs (those started once the reading
# began are left out). A probe's runs all belong to one slot grid (epoch-aligned seconds + the
# probe's fixed offset), so `started_at_ms mod 1000` minus the probe's on-time phase is how late
# the run started (ms resolution), including what the scheduler-lag histogram leaves out: the
# dispatcher, the runner's permit and task start. Prints the lateness percentiles and, per second of the run, the worst
# lateness of the runs due in it (to tell periodic stalls from noise).
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-1000}"
DURATION="${DURATION:-110}"
machine_notes
start_nginx
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
start_agent "$WORK/probes.yaml"
echo "patrol: $PROBES probes every 1s against nginx for $DURATION s, no scrape"
c0=$(cpu_ticks "$AGENT_PID")
sleep "$DURATION"
c1=$(cpu_ticks "$AGENT_PID")
echo "agent CPU $(( (c1 - c0) / CLK_TCK )) s in $DURATION s; RSS $(rss_kib "$AGENT_PID" | cut -d' ' -f1) KiB"
python3 - "$AGENT" "$PROBES" "$(date +%s%3N)" << 'PY'
import collections, json, sys, urllib.request
agent, probes, fetch_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
late, by_second = [], collections.defaultdict(int)
for i in range(1, probes + 1):
    with urllib.request.urlopen(f"{agent}/api/v1/probes/p{i:04d}/runs?limit=100") as r:
        body = json.load(r)
    runs = body["runs"] if isinstance(body, dict) else body
    # Runs that started while the results were being fetched do not count (the fetch loads
    # the agent).
    starts = [r["started_at_ms"] for r in runs if r["started_at_ms"] < fetch_ms]
    if len(starts) < 10:
        continue
    phase = [s % 1000 for s in starts]
    # The grid point is the earliest phase, unwrapped around it (runs are < 500 ms late).
    base = min(phase, key=lambda p: sum(((q - p) % 1000) for q in phase))
    for s in starts:
        d = (s % 1000 - base) % 1000
        late.append(d)
        sec = (s - d) // 1000
        by_second[sec] = max(by_second[sec], d)
late.sort()
q = lambda p: late[min(len(late) - 1, int(p * len(late)))]
print(f"start lateness over {len(late)} runs: p50 {q(0.5)} ms, p90 {q(0.9)} ms, p99 {q(0.99)} ms, "
      f"p99.9 {q(0.999)} ms, max {late[-1]} ms; over 5 ms: {sum(d > 5 for d in late)}, "
      f"over 50 ms: {sum(d > 50 for d in late)}")
secs = sorted(by_second)
print("worst lateness per second (ms), oldest first:")
print(" ".join(str(by_second[s]) for s in secs))
PY
