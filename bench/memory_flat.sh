#!/usr/bin/env bash
# Memory flat over a long run: the agent with PROBES probes (default 200) at `every: 1s`, one GET
# of a static nginx page each, RSS sampled every 10 s for DURATION seconds (default 600).
# Prints every sample, then first / last / max and the least-squares slope over the whole run and
# over its second half (after the history of 100 results per probe has filled).
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-200}"
DURATION="${DURATION:-600}"
machine_notes
start_nginx
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
start_agent "$WORK/probes.yaml"
echo "patrol: $PROBES probes every 1s against nginx, RSS every 10 s for ${DURATION} s"
: > "$WORK/rss.tsv"
start=$(date +%s)
for i in $(seq 0 10 "$DURATION"); do
  while [ $(( $(date +%s) - start )) -lt "$i" ]; do sleep 0.2; done
  read -r rss anon file < <(rss_kib "$AGENT_PID")
  runs=$(metric_sum probe_runs_total)
  printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$rss" "$anon" "$file" "$runs" | tee -a "$WORK/rss.tsv"
done
echo "skipped runs: $(metric_sum patrol_runs_skipped_total); /metrics bytes: $(curl -s "$AGENT/metrics" | wc -c)"
python3 - "$WORK/rss.tsv" << 'PY'
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1])]
def slope(rows):
    if len(rows) < 2:
        return float("nan")
    t = [r[0] / 60 for r in rows]; y = [r[1] for r in rows]
    mt, my = sum(t) / len(t), sum(y) / len(y)
    return sum((a - mt) * (b - my) for a, b in zip(t, y)) / sum((a - mt) ** 2 for a in t)
rss = [r[1] for r in rows]
half = [r for r in rows if r[0] >= rows[-1][0] / 2]
print(f"RSS KiB: first {rss[0]} (t=0), at 60 s {rows[min(6, len(rows) - 1)][1]}, last {rss[-1]}, max {max(rss)}; "
      f"slope {slope(rows):.1f} KiB/min over the run, {slope(half):.1f} KiB/min over the second half; "
      f"runs {rows[-1][4]}")
PY
