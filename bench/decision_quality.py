#!/usr/bin/env python3
"""Decision quality of deploy verification: simulated deploys against the reference shop, each
judged twice, by the rule verdict and by the canary verdict, both from the real `patrol` release
binary:
  - rule:   a running agent's POST /api/v1/verify with deploy.at_ms at the moment of the change:
            at least RUNS post-deploy runs per probe (500 ms apart), more of those still within
            their margin of error up to MAX_RUNS, against the agent's own scheduled runs of the
            baseline window before the deploy;
  - canary: `patrol verify --canary --runs RUNS` (up to MAX_RUNS the same way): the same probes
            against a stable shop (never changed) and the deployed shop, interleaved,
            Mann-Whitney on latencies and Fisher's exact test on failures.
Both start at the deploy moment and run side by side.

Half the deploys are healthy (the shop's natural jitter only), half regressed, cycling through
  - latency: +60% latency on one route (/api/products or /api/search: latency and jitter x1.6),
  - errors:  +20 points of errors on one route (status 500 with probability 0.2),
  - checkout_down: /api/checkout/create-session answers 503.
Reported per verdict: false rollbacks (fail on a healthy deploy), missed regressions (pass or
inconclusive on a regressed one), inconclusive verdicts, and the time from the deploy to the
verdict.

Each lane is two shops (deployed and stable) and one agent (release binaries) on loopback; lanes
run in parallel and each runs its share of the deploys one after another. Before a deploy that
follows a regressed one, the lane waits a whole baseline window with the shop healthy again, so
the baseline never holds runs of the regressed version.

Environment:
  DEPLOYS=200 LANES=4 RUNS=20    deploys in all, parallel lanes, post-deploy runs per probe (and
                                 canary runs per track) before the first look at the verdict
  MAX_RUNS=150                   verify.max_runs: the cap while a rule is within its margin
  WINDOW=12                      verify.baseline in seconds (also the wait after a regression)
  BASE_MS=40 JITTER_MS=40        the shop's natural latency on /api/*: BASE + uniform(0, JITTER)
  NO_BUILD=1                     use target/release as built; BIN_DIR=dir takes the binaries
                                 (patrol, citadel-shop) from elsewhere
  OUT=file.jsonl                 every deploy's record (default: a temp file, path printed)
Prints the machine, the settings, a Markdown table of the results and every wrong decision with
its reasons.
"""

import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOYS = int(os.environ.get("DEPLOYS", "200"))
LANES = int(os.environ.get("LANES", "4"))
RUNS = int(os.environ.get("RUNS", "20"))
MAX_RUNS = int(os.environ.get("MAX_RUNS", "150"))
WINDOW = float(os.environ.get("WINDOW", "12"))
BASE_MS = int(os.environ.get("BASE_MS", "40"))
JITTER_MS = int(os.environ.get("JITTER_MS", "40"))
TOKEN = "bench-decision-quality"
KINDS = ["latency", "errors", "checkout_down"]
ROUTES = ["/api/products", "/api/search"]
PROBE_OF_ROUTE = {"/api/products": "catalog", "/api/search": "search"}

CONFIG = """agent:
  api_token: "{{{{ env.PATROL_API_TOKEN }}}}"
  max_concurrency: 16
vars:
  api: {shop}
  email: test@citadelbuy.com
  password: "Test1234!"
defaults:
  timeout: 5s
probes:
  - name: catalog
    tags: [api]
    schedule: {{ every: 120ms }}
    steps:
      - request: {{ url: "{{{{ api }}}}/api/products" }}
        assert: [ status == 200 ]
  - name: search
    tags: [api]
    schedule: {{ every: 120ms }}
    steps:
      - request: {{ url: "{{{{ api }}}}/api/search", query: {{ q: laptop }} }}
        assert:
          - status == 200
          - jsonpath "$.total" >= 1
  - name: checkout
    tags: [api, checkout]
    schedule: {{ every: 250ms }}
    steps:
      - name: login
        request:
          method: POST
          url: "{{{{ api }}}}/api/auth/login"
          json: {{ email: "{{{{ email }}}}", password: "{{{{ password }}}}" }}
        capture: {{ token: jsonpath "$.token" }}
        assert: [ status == 200 ]
      - name: add_to_cart
        request:
          method: POST
          url: "{{{{ api }}}}/api/cart/items"
          headers: {{ Authorization: "Bearer {{{{ token }}}}" }}
          json: {{ productId: "1", quantity: 1 }}
        assert:
          - status in [200, 201]
      - name: create_session
        request:
          method: POST
          url: "{{{{ api }}}}/api/checkout/create-session"
          headers: {{ Authorization: "Bearer {{{{ token }}}}" }}
          json: {{ items: [ {{ productId: "1", quantity: 1 }} ], test: true }}
        assert: [ status == 200 ]
verify:
  baseline: {window}s
  min_samples: 20
  runs: {runs}
  max_runs: {max_runs}
  canary:
    stable: {{ api: "{stable}" }}
    canary: {{ api: "{shop}" }}
"""


def now_ms():
    return int(time.time() * 1000)


def request(method, url, body=None, token=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start(argv, pattern, env=None, log=None):
    """Starts a process and returns (process, the first stdout match of pattern)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL, text=True, env=env
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            # Keep draining stdout so the child never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not start")


def numbers(probes, before):
    """Per probe: the figures behind a verdict, in ms and percent."""

    def p95(a):
        return round(((a or {}).get("p95") or 0) * 1000, 1)

    return {
        p: {
            f"{before}_runs": (n["baseline"] or {}).get("runs", 0),
            f"{before}_p95_ms": p95(n["baseline"]),
            f"{before}_error_rate": (n["baseline"] or {}).get("error_rate"),
            "runs": n["current"]["runs"],
            "p95_ms": p95(n["current"]),
            "error_rate": n["current"]["error_rate"],
        }
        for p, n in probes.items()
    }


class Lane:
    def __init__(self, index, bin_dir, work):
        self.index = index
        self.procs = []
        self.bin_dir = bin_dir
        self.work = work
        shop, self.shop = start(
            [os.path.join(bin_dir, "citadel-shop"), "--listen", "127.0.0.1:0"],
            r"listening on (http://\S+)",
        )
        self.procs.append(shop)
        stable, self.stable = start(
            [os.path.join(bin_dir, "citadel-shop"), "--listen", "127.0.0.1:0"],
            r"listening on (http://\S+)",
        )
        self.procs.append(stable)
        self.base_fault(self.shop)
        self.base_fault(self.stable)
        path = os.path.join(work, f"lane{index}.yaml")
        self.config = path
        with open(path, "w") as f:
            f.write(
                CONFIG.format(
                    shop=self.shop,
                    stable=self.stable,
                    window=int(WINDOW),
                    runs=RUNS,
                    max_runs=MAX_RUNS,
                )
            )
        env = dict(os.environ, PATROL_API_TOKEN=TOKEN, PATROL_LOG="warn")
        self.env = env
        log = open(os.path.join(work, f"lane{index}.log"), "w")
        agent, addr = start(
            [os.path.join(bin_dir, "patrol"), "run", "--config", path, "--listen", "127.0.0.1:0"],
            r"patrol agent listening on (http://\S+)",
            env=env,
            log=log,
        )
        self.procs.append(agent)
        self.agent = addr
        self.healthy_since = time.time()
        self.dirty = True

    def fault(self, fault, shop=None):
        status, body = request("PUT", f"{shop or self.shop}/admin/faults", fault)
        assert status == 200, body

    def base_fault(self, shop):
        self.fault(
            {"route": "/api/*", "latency_ms": BASE_MS, "latency_jitter_ms": JITTER_MS}, shop
        )

    def heal(self):
        for route in ROUTES + ["/api/checkout/create-session"]:
            request("DELETE", f"{self.shop}/admin/faults?route={route}")
        self.healthy_since = time.time()
        self.dirty = True

    def regress(self, kind, n):
        route = ROUTES[(n // len(KINDS)) % len(ROUTES)]
        if kind == "latency":
            self.fault(
                {
                    "route": route,
                    "latency_ms": round(BASE_MS * 1.6),
                    "latency_jitter_ms": round(JITTER_MS * 1.6),
                }
            )
            return PROBE_OF_ROUTE[route]
        if kind == "errors":
            self.fault(
                {
                    "route": route,
                    "latency_ms": BASE_MS,
                    "latency_jitter_ms": JITTER_MS,
                    "status": 500,
                    "error_rate": 0.2,
                }
            )
            return PROBE_OF_ROUTE[route]
        self.fault(
            {
                "route": "/api/checkout/create-session",
                "latency_ms": BASE_MS,
                "latency_jitter_ms": JITTER_MS,
                "status": 503,
                "error_rate": 1.0,
            }
        )
        return "checkout"

    def canary(self, number, at, result):
        """`patrol verify --canary` from the deploy moment; fills `result`."""
        report = os.path.join(self.work, f"canary{number}.json")
        proc = subprocess.run(
            [
                os.path.join(self.bin_dir, "patrol"),
                "verify",
                "--config",
                self.config,
                "--canary",
                "--runs",
                str(RUNS),
                "--interval",
                "100ms",
                "--report-json",
                report,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
        result["seconds"] = (now_ms() - at) / 1000.0
        result["exit"] = proc.returncode
        try:
            with open(report) as f:
                verdict = json.load(f)["verdict"]
            os.remove(report)
        except (OSError, ValueError, KeyError) as e:
            result["error"] = f"exit {proc.returncode}, {e!r}: {proc.stderr[-500:]}"
            return
        result["verdict"] = verdict["verdict"]
        result["reasons"] = [r for r in verdict["reasons"] if r["decision"] != "pass"]
        result["numbers"] = numbers(verdict["probes"], "stable")

    def deploy(self, number, kind, n):
        # After a regression, a whole baseline window of healthy runs (plus a margin for runs in
        # flight); after a healthy deploy the baseline is healthy already.
        if self.dirty:
            wait = self.healthy_since + WINDOW + 0.6 - time.time()
            if wait > 0:
                time.sleep(wait)
            self.dirty = False
        at = now_ms()
        time.sleep(0.06)
        target = None if kind == "healthy" else self.regress(kind, n)
        canary = {}
        side = threading.Thread(target=self.canary, args=(number, at, canary))
        side.start()
        status, body = request(
            "POST",
            f"{self.agent}/api/v1/verify",
            {"deploy": {"version": f"d{number}", "environment": "bench", "at_ms": at}},
            token=TOKEN,
            timeout=600,
        )
        decided = now_ms()
        side.join()
        if kind != "healthy":
            self.heal()
        assert status == 200, body
        answer = json.loads(body)
        details = answer["details"]
        return {
            "deploy": number,
            "lane": self.index,
            "kind": kind,
            "target": target,
            "rule": {
                "verdict": answer["verdict"],
                "seconds": (decided - at) / 1000.0,
                "reasons": [r for r in details["reasons"] if r["decision"] != "pass"],
                "numbers": numbers(details["probes"], "baseline"),
            },
            "canary": canary,
        }

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def binaries(work):
    src = os.environ.get("BIN_DIR")
    if not src:
        if not os.environ.get("NO_BUILD"):
            subprocess.run(
                ["cargo", "build", "--release", "--quiet", "-p", "patrol", "-p", "citadel-shop"],
                cwd=ROOT,
                check=True,
            )
        src = os.path.join(ROOT, "target", "release")
    dst = os.path.join(work, "bin")
    os.makedirs(dst)
    # Copies, so a rebuild of target/release cannot swap a binary mid-run.
    for name in ["patrol", "citadel-shop"]:
        shutil.copy2(os.path.join(src, name), dst)
    return dst


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))]


def main():
    work = tempfile.mkdtemp(prefix="decision-quality-")
    out = os.environ.get("OUT") or os.path.join(work, "deploys.jsonl")
    bin_dir = binaries(work)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(
        f"date: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; {os.cpu_count()} cores; "
        f"load average {load}"
    )
    print(
        f"settings: {DEPLOYS} deploys, {LANES} lanes, {RUNS} to {MAX_RUNS} post-deploy runs per "
        f"probe, baseline window {WINDOW:g}s, natural latency {BASE_MS}+U(0,{JITTER_MS}) ms on "
        "/api/*"
    )
    # Healthy and regressed deploys interleaved, in a shuffled but reproducible order.
    plan = []
    for i in range(DEPLOYS // 2):
        plan.append(("healthy", i))
        plan.append((KINDS[i % len(KINDS)], i))
    random.Random(7).shuffle(plan)
    lanes = [Lane(i, bin_dir, work) for i in range(LANES)]
    records, lock = [], threading.Lock()
    started = time.time()

    def drive(lane):
        for number in range(lane.index, len(plan), LANES):
            kind, n = plan[number]
            try:
                record = lane.deploy(number, kind, n)
            except Exception as e:  # a broken lane is reported, not hidden
                record = {"deploy": number, "lane": lane.index, "kind": kind, "error": repr(e)}
            with lock:
                records.append(record)
                done = len(records)
            if done % 20 == 0:
                print(f"  {done}/{len(plan)} deploys after {time.time() - started:.0f}s", flush=True)

    threads = [threading.Thread(target=drive, args=(lane,)) for lane in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lane in lanes:
        lane.stop()
    elapsed = time.time() - started
    records.sort(key=lambda r: r["deploy"])
    with open(out, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")

    errors = [r for r in records if "error" in r or "error" in r.get("canary", {})]
    if errors:
        print(f"{len(errors)} deploys could not be judged: {errors[:3]}")
    print(f"\nwall time {elapsed / 60:.1f} min; records in {out}")
    for check in ["rule", "canary"]:
        ok = [r for r in records if "error" not in r and "verdict" in r[check]]
        report(check, ok)
    return 0


def report(check, ok):
    healthy = [r for r in ok if r["kind"] == "healthy"]
    regressed = [r for r in ok if r["kind"] != "healthy"]

    def count(rs, verdict):
        return sum(1 for r in rs if r[check]["verdict"] == verdict)

    def times(rs):
        ts = [r[check]["seconds"] for r in rs]
        if not ts:
            return "-"
        return f"{statistics.median(ts):.1f} / {pct(ts, 0.95):.1f} / {max(ts):.1f}"

    print(f"\n### {check} verdict\n")
    print("| deploys | n | pass | fail | inconclusive | wrong | time to verdict, s (median / p95 / max) |")
    print("|---|---:|---:|---:|---:|---|---|")
    print(
        f"| healthy | {len(healthy)} | {count(healthy, 'pass')} | {count(healthy, 'fail')} | "
        f"{count(healthy, 'inconclusive')} | false rollbacks: {count(healthy, 'fail')} | "
        f"{times(healthy)} |"
    )
    for kind in KINDS:
        rs = [r for r in regressed if r["kind"] == kind]
        missed = len(rs) - count(rs, "fail")
        print(
            f"| {kind} | {len(rs)} | {count(rs, 'pass')} | {count(rs, 'fail')} | "
            f"{count(rs, 'inconclusive')} | missed: {missed} | {times(rs)} |"
        )
    missed = len(regressed) - count(regressed, "fail")
    print(
        f"\n{check}: false rollbacks {count(healthy, 'fail')} of {len(healthy)}; missed "
        f"regressions {missed} of {len(regressed)}; inconclusive on healthy "
        f"{count(healthy, 'inconclusive')}; time to a verdict (all) {times(ok)} s"
    )
    runs = [
        v for r in ok for n in r[check]["numbers"].values() for k, v in n.items() if k.endswith("_runs")
    ]
    if runs:
        print(f"baseline/stable runs per probe: min {min(runs)}, median {statistics.median(runs):.0f}")
    for label, rs in [("healthy", healthy)] + [(k, [r for r in regressed if r["kind"] == k]) for k in KINDS]:
        # The most runs of any probe: how long the verdict kept going.
        most = [max(n["runs"] for n in r[check]["numbers"].values()) for r in rs if r[check]["numbers"]]
        if most:
            print(
                f"post-deploy runs, {label}: median {statistics.median(most):.0f}, "
                f"p95 {pct(most, 0.95)}, max {max(most)}"
            )
    wrong = [r for r in healthy if r[check]["verdict"] != "pass"] + [
        r for r in regressed if r[check]["verdict"] != "fail"
    ]
    if wrong:
        print(f"\n{check}: wrong or inconclusive decisions:")
    for r in wrong:
        print(f"- deploy {r['deploy']} ({r['kind']}, {r['target']}): {r[check]['verdict']}")
        for reason in r[check]["reasons"]:
            print(f"    {reason['probe']} [{reason['rule']}] {reason['message']}")
        if r["target"]:
            print(f"    numbers of {r['target']}: {r[check]['numbers'].get(r['target'])}")


if __name__ == "__main__":
    sys.exit(main())
