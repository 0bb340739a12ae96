#!/usr/bin/env bash
# Where an agent run's CPU goes, without rebuilding: the per-step cost of the probe engine alone
# (`patrol verify` of one probe with 1 step vs 1+STEPS steps against nginx: the difference over
# STEPS is one GET on a fresh connection, templates, assertions and result building, without the
# agent's scheduler, runner, metrics or history), next to the agent's cost per single-GET run
# (as in cpu_per_probe.sh, PROBES probes at `every: 1s` for DURATION s). The gap is what the
# agent adds per run. CPU is user+sys of the process (getrusage via GNU time's %U %S).
NO_SHOP=1 source "$(dirname "$0")/common.sh"
STEPS="${STEPS:-2000}"
PROBES="${PROBES:-200}"
DURATION="${DURATION:-30}"
REPEAT="${REPEAT:-5}"
machine_notes
start_nginx
one_probe() {
  local n=$1
  {
    echo "probes:"
    echo "  - name: many"
    echo "    timeout: 600s"
    echo "    steps:"
    for i in $(seq "$n"); do
      echo "      - name: s$i"
      echo "        request: { url: \"$NGINX/\" }"
      echo "        assert: [ status == 200 ]"
    done
  } > "$WORK/steps$n.yaml"
}
one_probe 1
one_probe $((STEPS + 1))
cpu_of() { # prints user+sys seconds of one `patrol verify`
  /usr/bin/time -f '%U %S' -o "$WORK/time.txt" "$PATROL" verify --config "$1" > /dev/null
  awk '{print $1 + $2}' "$WORK/time.txt"
}
: > "$WORK/engine.txt"
for _ in $(seq "$REPEAT"); do
  small=$(cpu_of "$WORK/steps1.yaml")
  big=$(cpu_of "$WORK/steps$((STEPS + 1)).yaml")
  python3 -c "print(($big - $small) / $STEPS * 1e6)" >> "$WORK/engine.txt"
done
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
start_agent "$WORK/probes.yaml"
sleep 5
r0=$(metric_sum probe_runs_total); c0=$(cpu_ticks "$AGENT_PID")
sleep "$DURATION"
c1=$(cpu_ticks "$AGENT_PID"); r1=$(metric_sum probe_runs_total)
python3 - "$WORK/engine.txt" "$((c1 - c0))" "$((r1 - r0))" "$CLK_TCK" << 'PY'
import statistics, sys
engine = [float(l) for l in open(sys.argv[1])]
ticks, runs, tck = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
e = statistics.median(engine)
agent = ticks / tck / runs * 1e6
print(f"engine per GET step (verify, sequential): median {e:.0f} µs (runs: {', '.join(f'{x:.0f}' for x in engine)})")
print(f"agent per single-GET run: {agent:.0f} µs over {runs} runs; agent overhead per run ≈ {agent - e:.0f} µs")
PY
