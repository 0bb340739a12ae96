# Shared by the benchmark scripts: build the release binaries, start the reference shop, and
# helpers to start nginx, blackbox_exporter and the Patrol agent on loopback and read a process's
# CPU time and memory from /proc. Everything started here is stopped on exit.
#
# Environment: PROFILE picks the cargo profile (release; dist is what the image ships);
# NO_BUILD=1 skips `cargo build` (use the binaries already in target/PROFILE);
# BIN_DIR=DIR takes `patrol` and `citadel-shop` from DIR instead (no build), e.g. a release build
# of a given commit; SHOP_PORT picks the shop's port (a free one by default); NO_SHOP=1 does not
# start the shop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${BIN_DIR:-}"
# PROFILE=dist builds and measures what the container image ships (fat LTO); default release.
PROFILE="${PROFILE:-release}"
if [ -z "$BIN_DIR" ]; then
  BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
  if [ -z "${NO_BUILD:-}" ]; then
    cargo build --profile "$PROFILE" --quiet -p patrol -p citadel-shop --manifest-path "$ROOT/Cargo.toml"
  fi
fi
WORK="$(mktemp -d)"
# Copies, so a teammate's rebuild of target/release cannot swap the binary mid-run.
mkdir -p "$WORK/bin"
cp "$BIN_DIR/patrol" "$BIN_DIR/citadel-shop" "$WORK/bin/"
PATROL="$WORK/bin/patrol"
SHOP_BIN="$WORK/bin/citadel-shop"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2> /dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port nobody listens on at the moment, on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until URL answers (any status), up to 10 s.
wait_http() {
  local _
  for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2
  return 1
}

# Machine notes printed at the top of every run.
machine_notes() {
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p');" \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "binaries: $BIN_DIR/patrol built $(date -u -r "$BIN_DIR/patrol" +%Y-%m-%dT%H:%MZ)"
}

# CPU time (utime + stime, every thread) of PID in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# User and system CPU time of PID in clock ticks, and context switches of its live threads:
# "utime stime ctxsw".
cpu_split() {
  local ut st cs
  read -r ut st < <(awk '{print $14, $15}' "/proc/$1/stat")
  cs=$(cat /proc/"$1"/task/*/status 2> /dev/null | awk '/ctxt_switches/ {s += $2} END {print s}')
  echo "$ut $st $cs"
}
CLK_TCK="$(getconf CLK_TCK)"

# Resident memory of PID in KiB: "rss anon file".
rss_kib() {
  awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print r, a, f}' "/proc/$1/status"
}

if [ -z "${NO_SHOP:-}" ]; then
  SHOP_PORT="${SHOP_PORT:-$(free_port)}"
  SHOP="http://127.0.0.1:$SHOP_PORT"
  "$SHOP_BIN" --listen "127.0.0.1:$SHOP_PORT" > "$WORK/shop.log" 2>&1 &
  SHOP_PID=$!
  PIDS+=("$SHOP_PID")
  wait_http "$SHOP/api/health"
fi

# nginx on 127.0.0.1 serving a 612-byte static page at / (sets NGINX, NGINX_PID). One worker,
# no access log: the target should cost as little as possible and the same for every peer.
start_nginx() {
  local port dir
  port="$(free_port)"
  dir="$WORK/nginx"
  mkdir -p "$dir/html" "$dir/tmp"
  # nginx's workers run as nobody: they must be able to reach the page.
  chmod 755 "$WORK" "$dir" "$dir/html"
  head -c 612 /dev/zero | tr '\0' 'x' > "$dir/html/index.html"
  chmod 644 "$dir/html/index.html"
  cat > "$dir/nginx.conf" << CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp;
  proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp;
  scgi_temp_path $dir/tmp;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    root $dir/html;
  }
}
CONF
  nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  NGINX="http://127.0.0.1:$port"
  wait_http "$NGINX/"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$NGINX/")" = 200 ] || { echo "nginx does not serve the page" >&2; return 1; }
}

# prometheus-blackbox-exporter on 127.0.0.1 with an `http_2xx` module (sets BLACKBOX,
# BLACKBOX_PID).
start_blackbox() {
  local port
  port="$(free_port)"
  cat > "$WORK/blackbox.yml" << 'YML'
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
YML
  prometheus-blackbox-exporter --config.file="$WORK/blackbox.yml" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn > "$WORK/blackbox.log" 2>&1 &
  BLACKBOX_PID=$!
  PIDS+=("$BLACKBOX_PID")
  BLACKBOX="http://127.0.0.1:$port"
  wait_http "$BLACKBOX/metrics"
}

# Writes a Patrol config of N probes named p0001… to FILE: each runs STEPS GETs of URL on
# `every: EVERY` (EVERY "none": no schedule, on demand only). MAX_CONCURRENCY=N sets
# agent.max_concurrency (default: the agent's, 32), HISTORY=N agent.history (default 100).
# Usage: probes_config FILE N EVERY STEPS URL
probes_config() {
  local file=$1 n=$2 every=$3 steps=$4 url=$5
  python3 - "$file" "$n" "$every" "$steps" "$url" "${MAX_CONCURRENCY:-}" "${HISTORY:-}" << 'PY'
import sys
file, n, every, steps, url = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
with open(file, "w") as f:
    agent = [f"  max_concurrency: {int(v)}\n" for v in sys.argv[6:7] if v]
    agent += [f"  history: {int(v)}\n" for v in sys.argv[7:8] if v]
    if agent:
        f.write("agent:\n" + "".join(agent))
    f.write("probes:\n")
    for i in range(1, n + 1):
        f.write(f"  - name: p{i:04d}\n")
        if every != "none":
            f.write(f"    schedule: {{ every: {every} }}\n")
        f.write("    steps:\n")
        for s in range(1, steps + 1):
            f.write(f"      - name: s{s}\n        request: {{ url: \"{url}\" }}\n"
                    f"        assert: [ status == 200 ]\n")
PY
}

# Starts `patrol run` on CONFIG with its server on a free loopback port (sets AGENT, AGENT_PID).
# AGENT_PREFIX is put before the command, e.g. "nice -n -10" or "chrt -f 10" (real-time: ahead of
# every other user's work on a shared machine, to see Patrol's own behaviour).
start_agent() {
  ${AGENT_PREFIX:-} "$PATROL" run --config "$1" --listen 127.0.0.1:0 --grace 1s > "$WORK/agent.out" 2> "$WORK/agent.err" &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  local _
  for _ in $(seq 100); do
    AGENT="$(sed -n 's/^patrol agent listening on //p' "$WORK/agent.out")"
    [ -n "$AGENT" ] && return 0
    sleep 0.1
  done
  echo "the agent did not start:" >&2
  cat "$WORK/agent.err" >&2
  return 1
}

# Sum of a metric's samples in the agent's /metrics (all label sets), e.g. probe_runs_total.
metric_sum() {
  curl -s "$AGENT/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $NF} END {printf "%.0f\n", s}'
}
