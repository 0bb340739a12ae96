#!/usr/bin/env bash
# CPU time per single-GET probe run: the Patrol agent vs prometheus-blackbox-exporter, both
# probing the same nginx static page (612 bytes) on loopback, the same number of runs.
#
# Each of ROUNDS rounds (default 3), in turn:
# - patrol: `patrol run` with PROBES probes (default 200) of one GET at `every: 1s`, warmed up
#   for 5 s, then measured for DURATION s (default 30): agent CPU (utime+stime of every thread
#   from /proc/PID/stat) over runs counted by probe_runs_total. /metrics is scraped only just
#   before and just after the window, outside it.
# - blackbox paced: the same number of /probe?module=http_2xx requests at the same rate, sent
#   over keep-alive connections by a small Python driver; the exporter's CPU over probes.
# - blackbox under wrk: as fast as wrk sends them (1 thread, 4 connections), as in the peer
#   figure of ~0.6 ms/probe, in 2 s bursts until it has done at least as many probes.
# Only the measured process's CPU counts (not nginx, wrk or the driver). Prints per-round
# numbers and the medians.
NO_SHOP=1 source "$(dirname "$0")/common.sh"
PROBES="${PROBES:-200}"
DURATION="${DURATION:-30}"
ROUNDS="${ROUNDS:-3}"
machine_notes
echo "$(prometheus-blackbox-exporter --version 2>&1 | head -1); $(nginx -v 2>&1)"
start_nginx
start_blackbox
probe_url="$BLACKBOX/probe?target=$NGINX/&module=http_2xx"
grep -q '^probe_success 1' <<< "$(curl -s "$probe_url")" || { echo "blackbox probe failed" >&2; exit 1; }
probes_config "$WORK/probes.yaml" "$PROBES" 1s 1 "$NGINX/"
# Sends COUNT GETs of URL at RATE per second from 4 threads with keep-alive connections.
cat > "$WORK/pace.py" << 'PY'
import http.client, sys, threading, time, urllib.parse
url, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
u = urllib.parse.urlsplit(url)
path = u.path + "?" + u.query
threads = 4
failures = []
def worker(k):
    c = http.client.HTTPConnection(u.hostname, u.port)
    mine = range(k, count, threads)
    start = time.monotonic()
    for i in mine:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or b"\nprobe_success 1" not in body:
            failures.append(i)
ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
if failures:
    sys.exit(f"{len(failures)} probes failed")
PY
: > "$WORK/rows.tsv"
for round in $(seq "$ROUNDS"); do
  start_agent "$WORK/probes.yaml"
  sleep 5
  r0=$(metric_sum probe_runs_total)
  read -r u0 k0 x0 < <(cpu_split "$AGENT_PID"); s0=$(date +%s.%N)
  sleep "$DURATION"
  read -r u1 k1 x1 < <(cpu_split "$AGENT_PID"); s1=$(date +%s.%N)
  c0=$((u0 + k0)); c1=$((u1 + k1))
  r1=$(metric_sum probe_runs_total)
  fails=$(curl -s "$AGENT/metrics" | awk '/^probe_runs_total/ && !/result="pass"/ {s += $NF} END {print s + 0}')
  kill "$AGENT_PID"; wait "$AGENT_PID" 2> /dev/null || true
  runs=$((r1 - r0))
  rate=$(python3 -c "print($runs / ($s1 - $s0))")

  read -r bu0 bk0 bx0 < <(cpu_split "$BLACKBOX_PID"); t0=$(date +%s.%N)
  python3 "$WORK/pace.py" "$probe_url" "$runs" "$rate"
  read -r bu1 bk1 bx1 < <(cpu_split "$BLACKBOX_PID"); t1=$(date +%s.%N)
  b0=$((bu0 + bk0)); b1=$((bu1 + bk1))
  echo "round $round: patrol user/sys/ctxsw per run: $(python3 -c "t=$CLK_TCK; n=$runs; print(f'{($u1-$u0)*1000/t/n:.3f} ms / {($k1-$k0)*1000/t/n:.3f} ms / {($x1-$x0)/n:.1f}')");" \
    "blackbox paced: $(python3 -c "t=$CLK_TCK; n=$runs; print(f'{($bu1-$bu0)*1000/t/n:.3f} ms / {($bk1-$bk0)*1000/t/n:.3f} ms / {($bx1-$bx0)/n:.1f}')")" >> "$WORK/split.txt"

  # wrk runs for a duration: 2 s bursts until it has done as many probes as Patrol ran.
  w0=$(cpu_ticks "$BLACKBOX_PID"); wt0=$(date +%s.%N)
  wrk_done=0
  while [ "$wrk_done" -lt "$runs" ]; do
    wrk -t1 -c4 -d2s "$probe_url" > "$WORK/wrk.txt"
    if grep -q "Non-2xx" "$WORK/wrk.txt"; then cat "$WORK/wrk.txt" >&2; exit 1; fi
    wrk_done=$((wrk_done + $(awk '/requests in/ {print $1}' "$WORK/wrk.txt")))
  done
  w1=$(cpu_ticks "$BLACKBOX_PID"); wt1=$(date +%s.%N)
  wrk_rate=$(python3 -c "print($wrk_done / ($wt1 - $wt0))")

  python3 - "$round" "$runs" "$fails" "$rate" "$((c1 - c0))" "$((b1 - b0))" "$(python3 -c "print($t1 - $t0)")" \
    "$((w1 - w0))" "$wrk_done" "$wrk_rate" "$CLK_TCK" << 'PY' | tee -a "$WORK/rows.tsv"
import sys
rnd, runs, fails, rate, pc, bc, bsecs, wc, wdone, wrate, tck = sys.argv[1:]
runs, pc, bc, wc, wdone, tck = int(runs), int(pc), int(bc), int(wc), int(wdone), int(tck)
ms = lambda ticks, n: ticks * 1000 / tck / n
print(f"{rnd}\t{runs}\t{float(rate):.0f}\t{ms(pc, runs):.3f}\t{ms(bc, runs):.3f}\t{ms(wc, wdone):.3f}\t{float(wrate):.0f}\t{fails}\t{float(bsecs):.1f}\t{wdone}")
PY
done
cat "$WORK/split.txt"
python3 - "$WORK/rows.tsv" "$PROBES" << 'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1])]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print("round  runs  runs/s  patrol ms/run  blackbox paced ms/probe  blackbox wrk ms/probe  (wrk probes/s)")
for r in rows:
    print(f"{r[0]:>5} {r[1]:>5} {r[2]:>7} {r[3]:>14} {r[4]:>24} {r[5]:>21}  ({r[6]}; patrol non-pass runs {r[7]}; paced took {r[8]} s)")
p, bp, bw = med(3), med(4), med(5)
print(f"median CPU per run: patrol {p:.3f} ms ({p * 1000:.0f} µs), blackbox paced {bp:.3f} ms, blackbox wrk {bw:.3f} ms; "
      f"patrol/blackbox = {p / bp:.2f} (paced), {p / bw:.2f} (wrk)")
PY
