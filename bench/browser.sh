#!/usr/bin/env bash
# Browser probes through the real agent (issue 4): wall time of a 6-step probe, memory per
# concurrent session, and RUNS consecutive runs without growth.
#
# The agent (release build) runs against the reference shop with chromedriver and Chromium from
# Debian. Three parts:
# - wall: RUNS (default 100) runs of `six_steps` (goto the home page, wait for the product cards,
#   fill the search box, click search, assert the results' text, no console errors), one after
#   the other through `POST /api/v1/runs`, PAUSE s apart (default 2: scheduled runs are seconds
#   apart, and the agent keeps a spare session ready meanwhile). Before them, WARM runs (default
#   100) back to back start chromedriver, warm the page cache and fill the agent's history (it
#   keeps 100 results per probe), so what follows is steady state, not the bounded history
#   filling up; they are left out. Wall = the probe's `duration_seconds` in its result: every
#   step and the session's checkout included.
# - growth: before every run of that series, once the previous run's session is closed and the
#   spare started: the agent's descendant processes (chromedriver and every Chromium process),
#   profile directories under the agent's browser work directory, Chromium's singleton temp
#   directories in /tmp, and the agent's RSS. Printed at a few points and judged first vs last.
# - sessions: for K in SESSIONS (default "1 2 4"; max_sessions is 4), K probes that each hold a
#   page for HOLD ms (the shop's /slow) run at once; while all K wait for their page, the summed
#   PSS and RSS of every Chromium process (PSS splits shared pages fairly between processes) and
#   chromedriver's RSS are read from /proc. The per-session figure is the slope between K values.
source "$(dirname "$0")/common.sh"
RUNS="${RUNS:-100}"
WARM="${WARM:-100}"
PAUSE="${PAUSE:-2}"
SESSIONS="${SESSIONS:-1 2 4}"
HOLD="${HOLD:-6000}"
machine_notes
echo "$(chromium --version 2> /dev/null); $(chromedriver --version 2> /dev/null | cut -d' ' -f1-2)"

python3 - "$WORK/browser.yaml" "$SHOP" "$WORK/artifacts" "$HOLD" << 'PY'
import sys
path, shop, artifacts, hold = sys.argv[1:]
held = "".join(
    f"""  - name: held{k}
    type: browser
    timeout: 30s
    steps:
      - name: wait
        goto: "{shop}/slow?ms={hold}"
""" for k in range(1, 5))
open(path, "w").write(f"""agent:
  artifacts_dir: {artifacts}
browser:
  max_sessions: 4
probes:
  - name: six_steps
    type: browser
    timeout: 30s
    steps:
      - name: home
        goto: "{shop}/"
      - name: cards
        wait_for: ".product-card"
      - name: query
        fill: {{ selector: "#search", text: laptop }}
      - name: search
        click: "#search-button"
      - name: results
        assert_text: {{ selector: ".results", contains: Laptop }}
      - name: console
        assert_no_console_errors: true
{held}""")
PY
start_agent "$WORK/browser.yaml"

python3 - "$AGENT" "$AGENT_PID" "$RUNS" "$WARM" "$PAUSE" "$SESSIONS" "$HOLD" << 'PY'
import glob, json, os, statistics, sys, threading, time, urllib.request

agent, pid, runs, warm, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
sessions, hold = [int(k) for k in sys.argv[6].split()], int(sys.argv[7])

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(agent + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)

def run(probes):
    run_id = call("POST", "/api/v1/runs", {"probes": probes})["id"]
    while True:
        record = call("GET", f"/api/v1/runs/{run_id}")
        if record["status"] == "done":
            return record
        time.sleep(0.02)

def descendants(root):
    children = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = open(stat).read()
        except OSError:
            continue
        rest = text.rsplit(") ", 1)[1].split()
        if rest[0] in "ZX":
            continue
        children.setdefault(int(rest[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found

def comm(p):
    try:
        return open(f"/proc/{p}/comm").read().strip()
    except OSError:
        return ""

def status_kib(p, key):
    try:
        for line in open(f"/proc/{p}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def pss_kib(p):
    try:
        for line in open(f"/proc/{p}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def browsers():
    return [p for p in descendants(pid) if comm(p).startswith("chrom") and comm(p) != "chromedriver"]

def snapshot():
    procs = descendants(pid)
    profiles = glob.glob(f"/tmp/patrol-browser-{pid}-*/profile-*")
    singletons = glob.glob("/tmp/org.chromium.Chromium.*")
    return {"procs": len(procs), "profiles": len(profiles), "singletons": len(singletons),
            "rss": status_kib(pid, "VmRSS")}

# Part 1 and 2: consecutive runs.
walls, steps_sum, shots = [], [], []
for i in range(warm + runs):
    if i >= warm - 1:
        time.sleep(pause)
    if i >= warm:
        shots.append(snapshot())
    record = run(["six_steps"])
    result = record["probes"][0]
    if result["result"] != "pass":
        sys.exit(f"run {i + 1} did not pass: {json.dumps(result)[:2000]}")
    if i >= warm:
        walls.append(result["duration_seconds"])
        steps_sum.append(sum(s["duration_seconds"] for s in result["steps"]))
time.sleep(pause)
shots.append(snapshot())

def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]

print(f"six_steps: {runs} runs after {warm} warm-up runs, {pause:g} s apart, all passed")
print(f"  wall (probe duration_seconds): median {statistics.median(walls) * 1000:.0f} ms, "
      f"p90 {q(walls, 0.9) * 1000:.0f} ms, min {min(walls) * 1000:.0f} ms, max {max(walls) * 1000:.0f} ms")
print(f"  steps alone: median {statistics.median(steps_sum) * 1000:.0f} ms")
print("  before run   processes (chromedriver + Chromium)   profile dirs   singleton dirs   agent RSS")
for n in sorted({1, 2, 10, 25, 50, 75, runs, runs + 1}):
    if n <= len(shots):
        s = shots[n - 1]
        label = f"{n}" if n <= runs else "after last"
        print(f"  {label:>10}   {s['procs']:>35}   {s['profiles']:>12}   {s['singletons']:>14}   {s['rss'] / 1024:.1f} MiB")
first, last = shots[0], shots[-1]
grew = [k for k in ("procs", "profiles", "singletons") if last[k] > first[k]]
rss_growth = (last["rss"] - first["rss"]) / first["rss"] * 100
print(f"  first -> last: processes {first['procs']} -> {last['procs']}, profiles {first['profiles']} -> "
      f"{last['profiles']}, singleton dirs {first['singletons']} -> {last['singletons']}, agent RSS {rss_growth:+.1f}%")

# Part 3: memory per concurrent session.
print(f"sessions held at once (each waits {hold} ms for /slow); Chromium PSS and RSS summed over its processes")
print("  K   Chromium processes   Chromium PSS   Chromium RSS   chromedriver RSS   agent RSS")
rows = []
for k in sessions:
    time.sleep(pause)
    done = []
    t = threading.Thread(target=lambda: done.append(run([f"held{j}" for j in range(1, k + 1)])))
    t.start()
    # Sample while the runs wait for their pages: from 1.5 s after the start to HOLD - 1 s.
    time.sleep(1.5)
    samples = []
    while len(samples) < 5:
        ps = browsers()
        samples.append((len(ps), sum(pss_kib(p) for p in ps), sum(status_kib(p, "VmRSS") for p in ps),
                        sum(status_kib(p, "VmRSS") for p in descendants(pid) if comm(p) == "chromedriver"),
                        status_kib(pid, "VmRSS")))
        time.sleep((hold / 1000 - 2.5) / 5)
    t.join()
    outcomes = [r["result"] for r in done[0]["probes"]]
    if any(o != "pass" for o in outcomes):
        sys.exit(f"K={k}: {outcomes}")
    best = max(samples, key=lambda s: s[1])
    rows.append((k, best))
    print(f"  {k}   {best[0]:>18}   {best[1] / 1024:>8.0f} MiB   {best[2] / 1024:>8.0f} MiB   "
          f"{best[3] / 1024:>12.1f} MiB   {best[4] / 1024:>6.1f} MiB")
if len(rows) > 1:
    (k0, a), (k1, b) = rows[0], rows[-1]
    print(f"  per session (slope K={k0} -> K={k1}): PSS {(b[1] - a[1]) / (k1 - k0) / 1024:.0f} MiB, "
          f"{(b[0] - a[0]) / (k1 - k0):.1f} processes")

missed = []
if statistics.median(walls) > 1.5:
    missed.append(f"median wall {statistics.median(walls):.2f} s > 1.5 s")
if grew:
    missed.append("grew: " + ", ".join(grew))
if rss_growth > 5:
    missed.append(f"agent RSS grew {rss_growth:.1f}%")
if missed:
    print("GOALS MISSED: " + "; ".join(missed))
    sys.exit(1)
print("all goals met: median wall <= 1.5 s; no growth in processes, profile or temp dirs; agent RSS within 5%")
PY
