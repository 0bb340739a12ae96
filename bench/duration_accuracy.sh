#!/usr/bin/env bash
# Reported duration vs truth: a shop route that sleeps 150 ms, probed 200 times (10 runs of a
# 20-step probe, each step a fresh connection). Prints the median step duration and processing
# phase Patrol reports, and the same request's median as timed by Hurl when it is installed.
source "$(dirname "$0")/common.sh"
{
  echo "probes:"
  echo "  - name: slow"
  echo "    steps:"
  for i in $(seq 20); do
    echo "      - name: s$i"
    echo "        request: { url: \"$SHOP/slow?ms=150\" }"
    echo "        assert: [ status == 200 ]"
  done
} > "$WORK/slow.yaml"
for run in $(seq 10); do
  "$PATROL" verify --config "$WORK/slow.yaml" --report-json "$WORK/r$run.json" > /dev/null
done
python3 - "$WORK" <<'PY'
import json, glob, statistics, sys
steps = [s for f in glob.glob(sys.argv[1] + "/r*.json") for s in json.load(open(f))["probes"][0]["steps"]]
d = sorted(s["duration_seconds"] * 1000 for s in steps)
p = sorted(s["phases"]["processing"] * 1000 for s in steps)
print(f"patrol: n={len(d)} step duration median {statistics.median(d):.2f} ms "
      f"(p5 {d[len(d)//20]:.2f}, p95 {d[len(d)*19//20]:.2f}); processing median {statistics.median(p):.2f} ms")
PY
if command -v hurl > /dev/null; then
  for i in $(seq 200); do printf 'GET %s/slow?ms=150\nHTTP 200\n\n' "$SHOP"; done > "$WORK/slow.hurl"
  hurl --test --report-json "$WORK/hurl" "$WORK/slow.hurl" > /dev/null 2>&1
  python3 - "$WORK/hurl/report.json" <<'PY'
import json, statistics, sys
rep = json.load(open(sys.argv[1]))
t = sorted(c["timings"]["total"] / 1000 for e in rep for c in e["entries"] for c in c["calls"])
print(f"hurl:   n={len(t)} total median {statistics.median(t):.2f} ms")
PY
fi
