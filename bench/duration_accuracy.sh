#!/usr/bin/env bash
# Reported duration vs truth: a shop route that sleeps 150 ms (`/slow?ms=150`), timed by Patrol,
# by Hurl (peer) and by curl (the thinnest client at hand, our reference for "truth" on the
# wire). ROUNDS rounds (default 10), each: one `patrol verify` of a 20-step probe, one Hurl file
# of the same 20 requests, one curl of the same 20 URLs; interleaved so machine noise hits all
# three alike. Every request goes on a fresh connection (`Connection: close` for Hurl and curl;
# Patrol always opens one per step).
# The shop sleeps with tokio's timer (1 ms wheel, deadline rounded up, then a wake-up), so the
# server side alone takes more than 150 ms; Patrol's overhead is its median minus curl's. The
# same is then repeated against a reference server that sleeps with clock_nanosleep (Python's
# time.sleep, ~0.1 ms late; one connection at a time, answered in one write) to show the
# absolute numbers when the server truly takes ~150 ms.
source "$(dirname "$0")/common.sh"
ROUNDS="${ROUNDS:-10}"
STEPS=20
machine_notes
measure() {
local SHOP=$1
rm -rf "$WORK"/r*.json "$WORK"/hurl* "$WORK/curl.txt"
{
  echo "probes:"
  echo "  - name: slow"
  echo "    steps:"
  for i in $(seq "$STEPS"); do
    echo "      - name: s$i"
    echo "        request: { url: \"$SHOP/slow?ms=150\" }"
    echo "        assert: [ status == 200 ]"
  done
} > "$WORK/slow.yaml"
have_hurl=""
if command -v hurl > /dev/null; then
  have_hurl=1
  for _ in $(seq "$STEPS"); do printf 'GET %s/slow?ms=150\nConnection: close\nHTTP 200\n\n' "$SHOP"; done > "$WORK/slow.hurl"
fi
urls=()
for _ in $(seq "$STEPS"); do urls+=(-o /dev/null "$SHOP/slow?ms=150"); done
for run in $(seq "$ROUNDS"); do
  "$PATROL" verify --config "$WORK/slow.yaml" --report-json "$WORK/r$run.json" > /dev/null
  if [ -n "$have_hurl" ]; then
    hurl --test --report-json "$WORK/hurl$run" "$WORK/slow.hurl" > /dev/null 2>&1
  fi
  curl -s -H 'Connection: close' -w '%{stderr}%{time_total}\n' "${urls[@]}" 2>> "$WORK/curl.txt"
done
python3 - "$WORK" << 'PY'
import json, glob, statistics, sys
work = sys.argv[1]
def show(name, xs, extra=""):
    xs = sorted(xs)
    print(f"{name:7s} n={len(xs)} median {statistics.median(xs):.2f} ms "
          f"(p5 {xs[len(xs)//20]:.2f}, p95 {xs[len(xs)*19//20]:.2f}){extra}")
    return statistics.median(xs)
steps = [s for f in glob.glob(work + "/r*.json") for s in json.load(open(f))["probes"][0]["steps"]]
p = statistics.median(s["phases"]["processing"] * 1000 for s in steps)
patrol = show("patrol:", [s["duration_seconds"] * 1000 for s in steps], f"; processing median {p:.2f} ms")
hurl = None
calls = [c for f in glob.glob(work + "/hurl*/report.json") for e in json.load(open(f))
         for entry in e["entries"] for c in entry["calls"]]
if calls:
    hurl = show("hurl:", [c["timings"]["total"] / 1000 for c in calls])
curl = show("curl:", [float(l) * 1000 for l in open(work + "/curl.txt") if l.strip()])
print(f"patrol - curl = {patrol - curl:+.2f} ms" + (f"; hurl - curl = {hurl - curl:+.2f} ms" if hurl else ""))
PY
}
echo "== citadel-shop $SHOP/slow?ms=150 (tokio sleep)"
measure "$SHOP"
PRECISE_PORT="$(free_port)"
python3 - "$PRECISE_PORT" > /dev/null 2>&1 << 'PY' &
# One connection at a time: read the head, sleep `ms`, answer in one write, close.
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
body = b'{"ok":true}'
answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
          b"Connection: close\r\n\r\n%s" % (len(body), body))
while True:
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(65536)
        if not chunk:
            break
        head += chunk
    line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    ms = int(line.split("ms=", 1)[1].split()[0].split("&")[0]) if "ms=" in line else 0
    time.sleep(ms / 1000)
    c.sendall(answer)
    c.close()
PY
PIDS+=("$!")
wait_http "http://127.0.0.1:$PRECISE_PORT/slow?ms=0"
echo "== reference server http://127.0.0.1:$PRECISE_PORT/slow?ms=150 (clock_nanosleep)"
measure "http://127.0.0.1:$PRECISE_PORT"
