#!/usr/bin/env python3
"""The fault suite (CONTRACT.md §21): several hosts as network namespaces, faults injected
while jobs, a schedule and webhook deliveries run, and a history checker.

    scripts/faults.py run --bin-dir DIR [--work DIR] [--rounds N]   # as root; scripts/faults.sh
    scripts/faults.py check HISTORY                                 # the checker alone
    scripts/faults.py selftest                                      # the checker finds faults

Hosts (one network namespace each, on one bridge in the root namespace, 10.77.0.0/24):
PostgreSQL (.2), three `outpost-server` nodes (.11-.13) sharing it, and three agent hosts
(.21-.23) running two `outpost-agent`s each, every agent listing the three nodes. This process
(the test client: REST calls, the webhook receiver) sits on the bridge (.1).

Everything the clients see goes to a history (`history.jsonl`, one JSON object a line): each
job acknowledged by the API (its runs, the output each run must print), each webhook request
received, each fault (injected, healed, recovered), then what the API holds at the end (every
job, run, output and event) and the marker files the script wrote on the agents (one per
execution, so a run executed twice leaves two). `check` judges a history alone, so a failed CI
run's history can be judged again by hand; `selftest` feeds it histories with known faults.

Faults: partitions (agent<->node, node<->PostgreSQL, node<->node) with nftables, latency and
loss with `tc netem`, a node stopped with SIGSTOP past its lease and claims and resumed, a node
restarted with its clock skewed (libfaketime) and an agent skewed from the start, kill -9 of a
node and of an agent (each started again), and a crash restart of PostgreSQL (SIGQUIT, then
start). After each heal the fleet's recovery is timed: until a ping job to every agent, made
through the API, has every run succeeded.
"""

import argparse
import base64
import collections
import http.server
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SUBNET = "10.77.0"
BRIDGE = "opf0"
PREFIX = "opf-"
PG_IP = f"{SUBNET}.2"
NODES = {"n1": f"{SUBNET}.11", "n2": f"{SUBNET}.12", "n3": f"{SUBNET}.13"}
AGENT_HOSTS = {"a1": f"{SUBNET}.21", "a2": f"{SUBNET}.22", "a3": f"{SUBNET}.23"}
AGENTS_PER_HOST = 2
PORT = 8080
# Agents tagged `sched` run the schedule's fires.
SCHED_AGENTS = {"a1-2", "a3-1"}
# The agent whose clock is skewed from the start, and the node restarted with a skewed clock.
SKEWED_AGENT = "a3-1"
AGENT_SKEW = "+3600"
NODE_SKEW = "+7"
SCHEDULE_EVERY_S = 10
# Lines a script prints, 0.2 s apart: runs last a few seconds, so faults land mid-run.
LINES = (5, 25)

FAULT_KINDS = [
    "agent-node-partition",
    "node-postgres-partition",
    "node-node-partition",
    "latency-loss",
    "node-paused-past-lease",
    "clock-skew",
    "node-kill-9",
    "agent-kill-9",
    "postgres-restart",
]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# The checker: a pure function of a history.
# ---------------------------------------------------------------------------------------------


def expected_output(run_id, lines):
    return "".join(f"line {i} of {run_id}\n" for i in range(1, lines + 1))


def check(history):
    """Judges a history; returns (report lines, summary dict)."""
    jobs = {}  # acknowledged jobs by id
    faults = []
    final_jobs = {}
    outputs = {}
    markers = collections.defaultdict(lambda: {"start": 0, "done": 0})
    events = {}
    received = collections.defaultdict(list)  # webhook-id -> [event id]
    schedule = None
    nonces = collections.defaultdict(set)
    for rec in history:
        kind = rec["kind"]
        if kind == "ack":
            jobs[rec["job_id"]] = rec
        elif kind == "fault":
            faults.append(rec)
        elif kind == "final_job":
            final_jobs[rec["job"]["job_id"]] = rec["job"]
        elif kind == "output":
            outputs[rec["run_id"]] = rec["stdout"]
        elif kind == "marker":
            markers[rec["run_id"]][rec["what"]] += 1
        elif kind == "event":
            events[rec["id"]] = rec
        elif kind == "webhook":
            received[rec["webhook_id"]].append(rec["event_id"])
        elif kind == "schedule":
            schedule = rec

    violations = []  # (invariant, what, time span)

    def span_of(job):
        start = job.get("t", 0)
        final = final_jobs.get(job.get("job_id"))
        end = (final or {}).get("_t_final", start)
        return (start, max(end, start))

    # 1. Each acknowledged result stored exactly once; 5. no output lost or reordered.
    for job_id, ack in jobs.items():
        final = final_jobs.get(job_id)
        span = span_of(ack)
        if final is None:
            violations.append(("result stored", f"job {job_id} acknowledged, not found", span))
            continue
        runs = {r["run_id"]: r for r in final.get("runs", [])}
        for run in ack["runs"]:
            got = runs.get(run["run_id"])
            if got is None:
                violations.append(("result stored", f"run {run['run_id']} missing", span))
                continue
            status = got.get("status")
            error = (got.get("error") or {}).get("code")
            if status in ("pending", "delivered", "running", "lost") or (
                status == "expired" and ack.get("command") == "run"
            ):
                violations.append(
                    ("result stored", f"run {run['run_id']} ended {status} ({error})", span)
                )
                continue
            if ack.get("command") != "run":
                # A probe (a ping to every agent, with a short TTL) may expire while the fleet
                # recovers: that is its answer, stored. It only has to end.
                if ack.get("command") != "ping" and status != "succeeded":
                    violations.append(
                        ("result stored", f"{ack.get('command')} run {run['run_id']} {status}", span)
                    )
                continue
            m = markers.get(run["run_id"], {"start": 0, "done": 0})
            if status == "succeeded":
                if m["start"] == 0:
                    violations.append(
                        ("result stored", f"run {run['run_id']} succeeded, never executed", span)
                    )
                want = expected_output(run["run_id"], ack["lines"])
                if outputs.get(run["run_id"]) != want:
                    violations.append(
                        ("output", f"run {run['run_id']}: output differs from what it printed", span)
                    )
            elif error == "interrupted":
                # The agent was killed during the run (CONTRACT.md §2: reported `interrupted`).
                pass
            else:
                violations.append(
                    ("result stored", f"run {run['run_id']} {status} ({error})", span)
                )
        if len(runs) != len(ack["runs"]):
            violations.append(("result stored", f"job {job_id} has extra runs", span))
    # A request retried with its idempotency key must not store a second job.
    for job in final_jobs.values():
        nonce = ((job.get("data") or {}).get("params") or {}).get("NONCE")
        if nonce:
            nonces[nonce].add(job["job_id"])
    for nonce, ids in nonces.items():
        if len(ids) > 1:
            violations.append(("result stored", f"request {nonce} stored as {len(ids)} jobs", (0, 0)))

    # 2. No run executed twice (the script leaves a start marker per execution).
    run_times = {}
    for ack in jobs.values():
        for run in ack["runs"]:
            run_times[run["run_id"]] = span_of(ack)
    for job in final_jobs.values():
        for run in job.get("runs", []):
            run_times.setdefault(run["run_id"], (job.get("_t_final", 0), job.get("_t_final", 0)))
    for run_id, m in markers.items():
        if m["start"] > 1:
            violations.append(
                ("executed once", f"run {run_id} executed {m['start']} times", run_times.get(run_id, (0, 0)))
            )
        if run_id not in run_times:
            violations.append(("executed once", f"run {run_id} executed, unknown to the API", (0, 0)))

    # 3. Every schedule fire exactly once: the fires form the schedule's grid, no gap, no twin.
    fires = 0
    if schedule is not None:
        fired = collections.Counter()
        for job in final_jobs.values():
            if job.get("schedule_id") == schedule["id"]:
                fired[job["scheduled_for"]] += 1
        instants = sorted(parse_time(t) for t in fired)
        fires = len(instants)
        for when, count in fired.items():
            if count > 1:
                violations.append(("fire once", f"fire {when} made {count} jobs", (0, 0)))
        if fires < 2:
            violations.append(("fire once", f"only {fires} fires", (0, 0)))
        for a, b in zip(instants, instants[1:]):
            if abs((b - a) - schedule["every_s"]) > 0.001:
                violations.append(
                    ("fire once", f"fires {fmt_time(a)} then {fmt_time(b)}: a gap", (a, b))
                )
        if instants and instants[0] - schedule["created"] > schedule["every_s"] + 2:
            violations.append(("fire once", "the first fire came late", (schedule["created"], instants[0])))
        if instants and schedule["disabled"] - instants[-1] > schedule["every_s"] + 2:
            violations.append(("fire once", "fires stopped before the end", (instants[-1], schedule["disabled"])))
        for job in final_jobs.values():
            if job.get("schedule_id") == schedule["id"]:
                for run in job.get("runs", []):
                    st = run.get("status")
                    code = (run.get("error") or {}).get("code")
                    if st != "succeeded" and code != "interrupted":
                        violations.append(
                            ("fire once", f"fire {job['scheduled_for']} run {run['run_id']} {st} ({code})",
                             (parse_time(job["scheduled_for"]), parse_time(job["scheduled_for"])))
                        )
                        continue
                    if st == "succeeded" and outputs.get(run["run_id"]) != expected_output(
                        run["run_id"], schedule["lines"]
                    ):
                        violations.append(("output", f"scheduled run {run['run_id']}: output differs", (0, 0)))

    # 4. Every delivery sent at least once, and deduplicable by its id.
    got = collections.defaultdict(set)
    for webhook_id, ids in received.items():
        if len(set(ids)) > 1:
            violations.append(("delivered", f"webhook-id {webhook_id} named {len(set(ids))} events", (0, 0)))
        for event_id in ids:
            got[event_id].add(webhook_id)
    duplicates = sum(len(ids) - 1 for ids in received.values())
    for event_id, ev in events.items():
        if event_id not in got:
            violations.append(
                ("delivered", f"event {event_id} ({ev['type']}) never delivered", (ev["t"], ev["t"]))
            )
        elif len(got[event_id]) > 1:
            violations.append(("delivered", f"event {event_id} sent under several ids", (ev["t"], ev["t"])))

    # The table: faults against invariants. A violation is laid at the door of every fault whose
    # window (injected .. recovered) overlaps the job's life.
    invariants = ["result stored", "executed once", "fire once", "delivered", "output"]
    by_kind = collections.OrderedDict((k, []) for k in FAULT_KINDS)
    for f in faults:
        by_kind.setdefault(f["fault"], []).append(f)
    table = collections.OrderedDict()
    table["(no fault)"] = {inv: 0 for inv in invariants}
    for kind in by_kind:
        table[kind] = {inv: 0 for inv in invariants}
    for inv, what, (a, b) in violations:
        hit = False
        for f in faults:
            lo, hi = f["injected"], f.get("recovered") or f.get("healed") or f["injected"]
            if a <= hi + 5 and b >= lo - 5:
                table[f["fault"]][inv] += 1
                hit = True
        if not hit:
            table["(no fault)"][inv] += 1

    lines = []
    header = f"{'fault':<26}{'injected':>9}{'recovery s':>12}" + "".join(f"{inv:>15}" for inv in invariants)
    lines.append(header)
    for kind, counts in table.items():
        fs = by_kind.get(kind, [])
        rec = [f["recovered"] - f["healed"] for f in fs if f.get("recovered") and f.get("healed")]
        unrecovered = sum(1 for f in fs if not f.get("recovered"))
        rec_s = "-" if not fs else (f"{max(rec):.1f}" if rec else "never")
        if unrecovered and rec:
            rec_s += f" ({unrecovered} never)"
        lines.append(
            f"{kind:<26}{(len(fs) if kind != '(no fault)' else '-'):>9}{rec_s:>12}"
            + "".join(f"{counts[inv]:>15}" for inv in invariants)
        )
    lines.append("")
    for inv, what, _ in violations[:50]:
        lines.append(f"violation ({inv}): {what}")
    if len(violations) > 50:
        lines.append(f"... and {len(violations) - 50} more violations")
    runs = sum(len(j["runs"]) for j in jobs.values())
    executions = sum(m["start"] for m in markers.values())
    lines.append(
        f"history: {len(jobs)} jobs acknowledged, {runs} runs, {executions} script executions, "
        f"{fires} schedule fires, {len(events)} events, "
        f"{sum(len(v) for v in received.values())} webhook requests ({duplicates} repeats of an id)"
    )
    unrecovered = [f for f in faults if not f.get("recovered")]
    for f in unrecovered:
        lines.append(f"fault {f['fault']} at {fmt_time(f['injected'])}: the fleet never recovered")
    lost = sum(1 for inv, _, _ in violations if inv in ("result stored", "output"))
    twice = sum(1 for inv, _, _ in violations if inv == "executed once")
    other = sum(1 for inv, _, _ in violations if inv in ("fire once", "delivered")) + len(unrecovered)
    for kind in by_kind:
        lines.append(f"fault {kind}: injected {len(by_kind[kind])}")
    lines.append(f"fault kinds: {sum(1 for k in by_kind if by_kind[k])}")
    lines.append(f"results lost: {lost}")
    lines.append(f"runs executed twice: {twice}")
    return lines, {"lost": lost, "twice": twice, "other": other, "violations": violations}


def parse_time(text):
    # RFC 3339 UTC, e.g. 2026-11-28T08:40:10Z or with fractions.
    import datetime

    text = text.replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


def fmt_time(t):
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 10)}"


def run_check(path):
    with open(path) as f:
        history = [json.loads(line) for line in f if line.strip()]
    lines, summary = check(history)
    print("\n".join(lines), flush=True)
    return 0 if summary["lost"] == 0 and summary["twice"] == 0 and summary["other"] == 0 else 1


def selftest():
    """The checker finds what it is there to find: each planted fault is counted."""
    t = 1_000.0
    ack = {"kind": "ack", "job_id": "j1", "t": t, "command": "run", "lines": 2,
           "runs": [{"run_id": "r1", "agent_id": "x"}, {"run_id": "r2", "agent_id": "y"}]}
    final = {"kind": "final_job", "job": {"job_id": "j1", "_t_final": t + 5, "data": {"params": {"NONCE": "n1"}},
             "runs": [{"run_id": "r1", "status": "succeeded"}, {"run_id": "r2", "status": "succeeded"}]}}
    good = [
        ack, final,
        {"kind": "marker", "run_id": "r1", "what": "start"},
        {"kind": "marker", "run_id": "r2", "what": "start"},
        {"kind": "output", "run_id": "r1", "stdout": expected_output("r1", 2)},
        {"kind": "output", "run_id": "r2", "stdout": expected_output("r2", 2)},
        {"kind": "event", "id": "e1", "type": "job.succeeded", "t": t + 5},
        {"kind": "webhook", "webhook_id": "e1", "event_id": "e1"},
        {"kind": "webhook", "webhook_id": "e1", "event_id": "e1"},
        {"kind": "fault", "fault": "node-kill-9", "injected": t + 1, "healed": t + 2, "recovered": t + 3},
    ]
    cases = [
        ("a clean history", good, 0, 0, 0),
        ("a run executed twice", good + [{"kind": "marker", "run_id": "r2", "what": "start"}], 0, 1, 0),
        ("a result never stored", [r for r in good if r is not final]
         + [{"kind": "final_job", "job": {**final["job"], "runs": [final["job"]["runs"][0],
             {"run_id": "r2", "status": "running"}]}}], 1, 0, 0),
        ("an output chunk lost", [r for r in good if r.get("run_id") != "r1" or r["kind"] != "output"]
         + [{"kind": "output", "run_id": "r1", "stdout": "line 2 of r1\n"}], 1, 0, 0),
        ("an acknowledged job missing", [r for r in good if r is not final], 1, 0, 0),
        ("a delivery never sent", [r for r in good if r["kind"] != "webhook"], 0, 0, 1),
        ("a job stored twice", good + [{"kind": "final_job", "job": {**final["job"], "job_id": "j2", "runs": []}}],
         1, 0, 0),
        ("a fleet that never recovered", [r for r in good if r["kind"] != "fault"]
         + [{"kind": "fault", "fault": "node-kill-9", "injected": t + 1, "healed": t + 2}], 0, 0, 1),
    ]
    failed = 0
    for name, history, lost, twice, other in cases:
        _, s = check(history)
        ok = (s["lost"], s["twice"], s["other"]) == (lost, twice, other)
        failed += not ok
        print(f"selftest: {name}: {'ok' if ok else 'WRONG'} (lost {s['lost']}, twice {s['twice']}, other {s['other']})")
    # Schedules: a gap and a twin are both caught.
    sched = {"kind": "schedule", "id": "s", "every_s": 10, "created": 0, "disabled": 40, "lines": 1}

    def fire(job_id, at):
        return {"kind": "final_job", "job": {"job_id": job_id, "schedule_id": "s", "scheduled_for": at, "runs": []}}

    base = "1970-01-01T00:00:%02dZ"
    whole = [sched] + [fire(f"f{i}", base % (10 * i)) for i in range(1, 5)]
    for name, history, want in [
        ("fires on the grid", whole, 0),
        ("a fire missed", [r for r in whole if r.get("job", {}).get("job_id") != "f2"], 1),
    ]:
        _, s = check(history)
        ok = s["other"] == want
        failed += not ok
        print(f"selftest: {name}: {'ok' if ok else 'WRONG'} (other {s['other']})")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# The run: hosts, processes, load, faults.
# ---------------------------------------------------------------------------------------------


def sh(*args, check=True, ns=None):
    cmd = (["ip", "netns", "exec", PREFIX + ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class History:
    def __init__(self, path):
        self.f = open(path, "a")
        self.lock = threading.Lock()

    def add(self, kind, **fields):
        rec = {"kind": kind, **fields}
        with self.lock:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()
        return rec


class Api:
    """REST calls to whichever node answers, in turn; a node that does not answer is skipped."""

    def __init__(self, token):
        self.token = token
        self.urls = [f"http://{ip}:{PORT}" for ip in NODES.values()]
        self.i = 0
        self.lock = threading.Lock()

    def call(self, method, path, body=None, timeout=8, tries=None):
        tries = tries or len(self.urls) * 3
        last = None
        for attempt in range(tries):
            with self.lock:
                url = self.urls[self.i % len(self.urls)]
                self.i += 1
            req = urllib.request.Request(url + path, method=method)
            req.add_header("authorization", f"Bearer {self.token}")
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                req.add_header("content-type", "application/json")
            try:
                with urllib.request.urlopen(req, data=data, timeout=timeout) as resp:
                    raw = resp.read()
                    ctype = resp.headers.get("content-type", "")
                    return resp.status, (json.loads(raw) if "json" in ctype else raw)
            except urllib.error.HTTPError as err:
                raw = err.read()
                if err.code in (502, 503, 504) or err.code == 429:
                    last = f"{err.code} {raw[:200]!r}"
                    time.sleep(0.3)
                    continue
                try:
                    return err.code, json.loads(raw)
                except ValueError:
                    return err.code, raw
            except (OSError, urllib.error.URLError) as err:
                last = str(err)
                time.sleep(0.1)
        raise RuntimeError(f"{method} {path}: no node answered ({last})")

    def pages(self, path, key="items"):
        cursor = None
        while True:
            sep = "&" if "?" in path else "?"
            q = path + sep + "limit=100" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            status, body = self.call("GET", q)
            if status != 200:
                raise RuntimeError(f"GET {q}: {status} {body}")
            yield from body[key]
            cursor = body.get("next_cursor")
            if not cursor:
                return


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True


def receiver_handler(history):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            if n > 1 << 20:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(n)
            try:
                event = json.loads(body)
            except ValueError:
                event = {}
            history.add(
                "webhook",
                t=time.time(),
                path=self.path,
                webhook_id=self.headers.get("webhook-id"),
                event_id=event.get("id"),
                type=event.get("type"),
            )
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


class Suite:
    def __init__(self, args):
        self.bin = os.path.abspath(args.bin_dir)
        self.work = args.work
        self.rounds = args.rounds
        self.node_skew = args.node_skew
        self.procs = {}  # name -> Popen
        self.history = History(os.path.join(self.work, "history.jsonl"))
        self.stop = threading.Event()
        self.pg_data = os.path.join(self.work, "pg")
        self.admin_key = "opk_faults" + secrets.token_hex(24)
        self.master_key = secrets.token_hex(32)
        self.api = Api(self.admin_key)
        self.agent_ids = {}
        self.submitted = 0
        self.faultlib = None
        for cand in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                     "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"):
            if os.path.exists(cand):
                self.faultlib = cand

    # --- hosts ---
    def teardown_net(self):
        sh("ip", "link", "del", BRIDGE, check=False)
        for ns in ["sw", "pg", *NODES, *AGENT_HOSTS]:
            sh("ip", "netns", "del", PREFIX + ns, check=False)

    def build_net(self):
        """A switch namespace holding a bridge, and a veth from it to each host.

        The bridge lives in a namespace of its own, not in the root one, so that the host's
        firewall (Docker's FORWARD policy DROP with bridge netfilter on, say) never sees the
        suite's traffic: the test client's veth end in the root namespace is a local address.
        """
        self.teardown_net()
        sh("ip", "netns", "add", PREFIX + "sw")
        sh("ip", "link", "add", "br0", "type", "bridge", ns="sw")
        sh("ip", "link", "set", "br0", "up", ns="sw")
        sh("ip", "link", "add", BRIDGE, "type", "veth", "peer", "name", "v-root", "netns", PREFIX + "sw")
        sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        sh("ip", "link", "set", "v-root", "master", "br0", "up", ns="sw")
        hosts = {"pg": PG_IP, **NODES, **AGENT_HOSTS}
        for ns, ip in hosts.items():
            sh("ip", "netns", "add", PREFIX + ns)
            sh("ip", "link", "add", f"v-{ns}", "type", "veth", "peer", "name", "eth0",
               "netns", PREFIX + ns, ns="sw")
            sh("ip", "link", "set", f"v-{ns}", "master", "br0", "up", ns="sw")
            sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            # One table per host for partitions and random loss; its chains start empty.
            sh("nft", "add", "table", "inet", "faults", ns=ns)
            for chain, hook in (("in", "input"), ("out", "output")):
                sh("nft", "add", "chain", "inet", "faults", chain,
                   f"{{ type filter hook {hook} priority 0 ; policy accept ; }}", ns=ns)

    def partition(self, ns, peers):
        for ip in peers:
            sh("nft", "add", "rule", "inet", "faults", "in", "ip", "saddr", ip, "drop", ns=ns)
            sh("nft", "add", "rule", "inet", "faults", "out", "ip", "daddr", ip, "drop", ns=ns)

    def degrade(self, ns, delay_ms, loss_pct):
        """Latency and loss on a host's link: `tc netem` where the kernel has it; else (kernels
        built without sch_netem, as some CI VMs are) a slow token bucket (`tbf`), whose queue
        delays packets, and random loss from nftables (`numgen random`)."""
        r = subprocess.run(["ip", "netns", "exec", PREFIX + ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                            "netem", "delay", f"{delay_ms}ms", f"{delay_ms // 3}ms", "loss", f"{loss_pct}%"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return f"{ns}: netem delay {delay_ms}ms loss {loss_pct}%"
        sh("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "8kb",
           "latency", f"{delay_ms * 2}ms", ns=ns)
        for chain in ("in", "out"):
            sh("nft", "add", "rule", "inet", "faults", chain, "numgen", "random", "mod", "100", "<",
               str(loss_pct), "drop", ns=ns)
        return f"{ns}: no netem in this kernel; tbf 1mbit queue {delay_ms * 2}ms, nft loss {loss_pct}%"

    def heal(self, ns):
        sh("nft", "flush", "chain", "inet", "faults", "in", ns=ns)
        sh("nft", "flush", "chain", "inet", "faults", "out", ns=ns)

    # --- PostgreSQL ---
    def pg_bin(self):
        found = sorted(d for d in os.listdir("/usr/lib/postgresql") if os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL's server programs are not installed (Debian: postgresql)")
        return f"/usr/lib/postgresql/{found[-1]}/bin"

    def start_pg(self):
        b = self.pg_bin()
        if not os.path.exists(os.path.join(self.pg_data, "PG_VERSION")):
            os.makedirs(self.pg_data, exist_ok=True)
            shutil.chown(self.pg_data, "postgres", "postgres")
            subprocess.run(["runuser", "-u", "postgres", "--", f"{b}/initdb", "-D", self.pg_data, "-U", "postgres",
                            "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
                           check=True, capture_output=True)
            with open(os.path.join(self.pg_data, "pg_hba.conf"), "a") as f:
                f.write(f"host all all {SUBNET}.0/24 trust\n")
        logf = open(os.path.join(self.work, "postgres.log"), "a")
        self.procs["pg"] = subprocess.Popen(
            ["ip", "netns", "exec", PREFIX + "pg", "runuser", "-u", "postgres", "--", f"{b}/postgres",
             "-D", self.pg_data, "-c", f"listen_addresses={PG_IP}", "-c", "port=5432",
             "-c", f"unix_socket_directories={self.pg_data}", "-c", "max_connections=300",
             "-c", "shared_buffers=128MB"],
            stdout=logf, stderr=logf)
        self.wait("PostgreSQL", lambda: subprocess.run(
            ["psql", "-X", "-q", "-t", "-A", f"postgres://postgres@{PG_IP}:5432/postgres", "-c", "SELECT 1"],
            capture_output=True).returncode == 0, 60)

    def postmaster_pid(self):
        with open(os.path.join(self.pg_data, "postmaster.pid")) as f:
            return int(f.readline())

    # --- nodes and agents ---
    def start_node(self, n, skew=None):
        d = os.path.join(self.work, n)
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": d, "OUTPOST_ADMIN_KEY": self.admin_key,
               "OUTPOST_MASTER_KEY": self.master_key, "OUTPOST_LOG": "info"}
        if skew:
            env.update(LD_PRELOAD=self.faultlib, FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1",
                       FAKETIME_DONT_RESET="1")
        logf = open(os.path.join(d, "server.log"), "a")
        logf.write(f"--- started {time.strftime('%H:%M:%S')} skew {skew}\n")
        logf.flush()
        self.procs[n] = subprocess.Popen(
            ["ip", "netns", "exec", PREFIX + n, f"{self.bin}/outpost-server",
             "--listen", f"{NODES[n]}:{PORT}", "--data-dir", os.path.join(d, "data"),
             "--database-url", f"postgres://postgres@{PG_IP}:5432/outpost", "--node-name", n,
             "--webhook-allow-private", "--heartbeat-interval", "5", "--rate-limit", "0"],
            env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)

    def node_ready(self, n):
        try:
            with urllib.request.urlopen(f"http://{NODES[n]}:{PORT}/readyz", timeout=3) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def start_agent(self, name, key, skew=None):
        host = name.split("-")[0]
        state = os.path.join(self.work, "agents", name)
        os.makedirs(state, exist_ok=True)
        tags = ["faults", f"host={host}"] + (["sched"] if name in SCHED_AGENTS else [])
        env = {"PATH": os.environ["PATH"], "HOME": state,
               "OUTPOST_SERVER_URL": ",".join(f"ws://{ip}:{PORT}" for ip in NODES.values()),
               "OUTPOST_API_KEY": key, "OUTPOST_STATE_DIR": state,
               "OUTPOST_MANIFEST": os.path.join(self.work, "scripts", "manifest.json"),
               "OUTPOST_TAGS": ",".join(tags), "OUTPOST_LOG": "info", "OUTPOST_CONTAINMENT": "process"}
        if skew:
            env.update(LD_PRELOAD=self.faultlib, FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1",
                       FAKETIME_DONT_RESET="1")
        logf = open(os.path.join(self.work, "agents", name + ".log"), "a")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", PREFIX + host, f"{self.bin}/outpost-agent"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf)

    def write_scripts(self):
        d = os.path.join(self.work, "scripts")
        self.markers = os.path.join(self.work, "markers")
        os.makedirs(d, exist_ok=True)
        os.makedirs(self.markers, exist_ok=True)
        with open(os.path.join(d, "work.sh"), "w") as f:
            f.write(
                "#!/bin/sh\n"
                "# One marker per execution (the pid tells executions apart), then numbered lines.\n"
                'run=${OUTPOST_RUN_ID:?}\n'
                ': > "$1/$run.start.$$"\n'
                "i=1\n"
                'while [ "$i" -le "${OUTPOST_PARAM_LINES:-5}" ]; do\n'
                '  echo "line $i of $run"\n'
                "  sleep 0.2\n"
                "  i=$((i + 1))\n"
                "done\n"
                ': > "$1/$run.done.$$"\n'
            )
        os.chmod(os.path.join(d, "work.sh"), 0o755)
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump({"scripts": [{"name": "work", "path": "work.sh", "args": [self.markers],
                                    "timeout_s": 300, "params": ["LINES", "NONCE"]}]}, f)

    @staticmethod
    def wait(what, cond, timeout):
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                raise RuntimeError(f"{what}: not ready after {timeout} s")
            time.sleep(0.2)

    # --- load ---
    def submit(self, body, lines=None):
        """POST /api/jobs until a node acknowledges it (the idempotency key makes retries safe)."""
        key = "faults-" + secrets.token_hex(8)
        body = {**body, "idempotency_key": key}
        t = time.time()
        for _ in range(10):
            try:
                status, answer = self.api.call("POST", "/api/jobs", body, timeout=10)
            except RuntimeError:
                time.sleep(1)
                continue
            if status == 202 or status == 200:
                self.submitted += 1
                return self.history.add("ack", t=t, job_id=answer["job_id"], command=body["command"],
                                        lines=lines, runs=answer["runs"], idempotency_key=key)
            raise RuntimeError(f"POST /api/jobs: {status} {answer}")
        self.history.add("unacknowledged", t=t, idempotency_key=key)
        return None

    def load(self):
        names = sorted(self.agent_ids)
        while not self.stop.is_set():
            lines = random.randint(*LINES)
            nonce = secrets.token_hex(8)
            data = {"script": "work", "params": {"LINES": str(lines), "NONCE": nonce}}
            if random.random() < 0.25:
                target = {"tags": [f"host={random.choice(list(AGENT_HOSTS))}"]}
            else:
                target = {"agents": [self.agent_ids[random.choice(names)]]}
            try:
                self.submit({"command": "run", "data": data, "target": target, "timeout_s": 300}, lines)
            except RuntimeError as err:
                log(f"load: {err}")
            self.stop.wait(random.uniform(0.8, 1.6))

    def probe(self, deadline_s=150):
        """Time until a ping job to every agent has every run succeeded (a new job each 10 s)."""
        start = time.time()
        while time.time() - start < deadline_s:
            ack = self.submit({"command": "ping", "data": {}, "target": {"tags": ["faults"]}, "timeout_s": 10,
                               "ttl_s": 15})
            if ack is None:
                continue
            t_job = time.time()
            while time.time() - t_job < 12:
                try:
                    status, job = self.api.call("GET", f"/api/jobs/{ack['job_id']}", timeout=5, tries=3)
                except RuntimeError:
                    time.sleep(0.5)
                    continue
                runs = job.get("runs", [])
                if len(runs) == len(self.agent_ids) and all(r["status"] == "succeeded" for r in runs):
                    return time.time()
                if any(r["status"] in ("failed", "expired", "timed_out", "lost") for r in runs):
                    break
                time.sleep(0.3)
        return None

    # --- faults ---
    def fault(self, kind, inject, heal, hold):
        log(f"fault {kind}: injecting")
        t0 = time.time()
        detail = inject()
        time.sleep(hold)
        t1 = time.time()
        heal()
        log(f"fault {kind}: healed after {t1 - t0:.0f} s; waiting for the fleet")
        t2 = self.probe()
        self.history.add("fault", fault=kind, detail=detail, injected=t0, healed=t1, recovered=t2)
        log(f"fault {kind}: " + (f"recovered in {t2 - t1:.1f} s" if t2 else "the fleet did NOT recover"))

    def faults(self, rnd):
        agents = sorted(self.agent_ids)
        node_ips = list(NODES.values())
        host = random.choice(list(AGENT_HOSTS))

        self.fault("agent-node-partition", lambda: (self.partition(host, node_ips), host)[1],
                   lambda: self.heal(host), 20)
        n = random.choice(list(NODES))
        self.fault("node-postgres-partition", lambda: (self.partition(n, [PG_IP]), n)[1],
                   lambda: self.heal(n), 25)
        a, b = random.sample(list(NODES), 2)
        self.fault("node-node-partition", lambda: (self.partition(a, [NODES[b]]), f"{a}-{b}")[1],
                   lambda: self.heal(a), 15)
        lossy = random.choice(list(AGENT_HOSTS))
        lossy_node = random.choice(list(NODES))

        def netem_on():
            return f"{self.degrade(lossy, 150, 10)}; {self.degrade(lossy_node, 80, 5)}"

        def netem_off():
            for ns in (lossy, lossy_node):
                sh("tc", "qdisc", "del", "dev", "eth0", "root", ns=ns, check=False)
                self.heal(ns)

        self.fault("latency-loss", netem_on, netem_off, 25)
        p = random.choice(list(NODES))
        self.fault("node-paused-past-lease",
                   lambda: (os.kill(self.procs[p].pid, signal.SIGSTOP), p)[1],
                   lambda: os.kill(self.procs[p].pid, signal.SIGCONT), 25)
        k = random.choice(list(NODES))

        def kill_node():
            self.procs[k].kill()
            self.procs[k].wait()
            return k

        def restart_node():
            self.start_node(k)
            self.wait(f"{k} again", lambda: self.node_ready(k), 90)

        self.fault("node-kill-9", kill_node, restart_node, 5)
        s = random.choice(list(NODES))

        def skew_node():
            self.procs[s].kill()
            self.procs[s].wait()
            self.start_node(s, skew=self.node_skew)
            self.wait(f"{s} skewed", lambda: self.node_ready(s), 90)
            return f"{s} {self.node_skew}"

        def unskew_node():
            self.procs[s].terminate()
            self.procs[s].wait()
            self.start_node(s)
            self.wait(f"{s} again", lambda: self.node_ready(s), 90)

        self.fault("clock-skew", skew_node, unskew_node, 30)
        victim = random.choice([x for x in agents if x != SKEWED_AGENT])

        def kill_agent():
            self.procs[victim].kill()
            self.procs[victim].wait()
            return victim

        self.fault("agent-kill-9", kill_agent, lambda: self.start_agent(victim, self.agent_key), 3)

        def pg_crash():
            os.kill(self.postmaster_pid(), signal.SIGQUIT)  # immediate shutdown: a crash
            self.procs["pg"].wait()
            return "SIGQUIT"

        self.fault("postgres-restart", pg_crash, self.start_pg, 3)

    def run(self):
        if os.geteuid() != 0:
            raise RuntimeError("the fault suite needs root (network namespaces, nftables, tc)")
        if not self.faultlib:
            raise RuntimeError("libfaketime is not installed (Debian: faketime)")
        log("hosts: a bridge and network namespaces")
        self.build_net()
        try:
            self.start_all()
            self.history.add("start", t=time.time(), agents=self.agent_ids)
            schedule = self.make_schedule_and_integration()
            loader = threading.Thread(target=self.load, daemon=True)
            loader.start()
            t = self.probe()
            log(f"fleet ready; load running ({t and 'probe ok'})")
            for rnd in range(self.rounds):
                self.faults(rnd)
            log("faults done; draining")
            self.stop.set()
            loader.join()
            status, _ = self.api.call("PATCH", f"/api/schedules/{schedule['id']}", {"enabled": False})
            self.history.add("schedule", id=schedule["id"], every_s=SCHEDULE_EVERY_S, created=schedule["t"],
                             disabled=time.time(), lines=3)
            self.drain()
        finally:
            self.stop.set()
            self.shutdown()
            self.teardown_net()
        return run_check(os.path.join(self.work, "history.jsonl"))

    def start_all(self):
        self.write_scripts()
        self.start_pg()
        subprocess.run(["psql", "-X", "-q", f"postgres://postgres@{PG_IP}:5432/postgres", "-c",
                        "CREATE DATABASE outpost"], check=True, capture_output=True)
        self.start_node("n1")
        self.wait("n1", lambda: self.node_ready("n1"), 90)
        for n in ("n2", "n3"):
            self.start_node(n)
        for n in ("n2", "n3"):
            self.wait(n, lambda n=n: self.node_ready(n), 90)
        log("three nodes ready")
        self.receiver = Receiver((f"{SUBNET}.1", 0), receiver_handler(self.history))
        threading.Thread(target=self.receiver.serve_forever, daemon=True).start()
        status, key = self.api.call("POST", "/api/agents/keys", {"name": "faults"})
        if status != 201:
            raise RuntimeError(f"agent key: {status} {key}")
        self.agent_key = key["secret"]
        for host in AGENT_HOSTS:
            for i in range(1, AGENTS_PER_HOST + 1):
                name = f"{host}-{i}"
                self.start_agent(name, self.agent_key, skew=AGENT_SKEW if name == SKEWED_AGENT else None)
        for host in AGENT_HOSTS:
            for i in range(1, AGENTS_PER_HOST + 1):
                name = f"{host}-{i}"
                path = os.path.join(self.work, "agents", name, "agent_id")
                self.wait(f"agent {name}", lambda p=path: os.path.exists(p) and len(open(p).read().strip()) == 36, 60)
                self.agent_ids[name] = open(path).read().strip()
        self.wait("every agent online", lambda: len([
            a for a in self.api.call("GET", "/api/agents?status=online")[1]]) >= len(self.agent_ids), 60)
        log(f"{len(self.agent_ids)} agents online")

    def make_schedule_and_integration(self):
        port = self.receiver.server_address[1]
        status, integ = self.api.call("POST", "/api/integrations", {
            "kind": "webhook", "name": "faults", "events": ["job"],
            "config": {"url": f"http://{SUBNET}.1:{port}/hook", "secret": "whsec_" + base64.b64encode(
                secrets.token_bytes(24)).decode()}})
        if status != 201:
            raise RuntimeError(f"integration: {status} {integ}")
        status, sched = self.api.call("POST", "/api/schedules", {
            "name": "faults", "cron": f"@every {SCHEDULE_EVERY_S}s", "command": "run",
            "data": {"script": "work", "params": {"LINES": "3"}}, "target": {"tags": ["sched"]},
            "timeout_s": 300})
        if status != 201:
            raise RuntimeError(f"schedule: {status} {sched}")
        return {"id": sched["id"], "t": time.time()}

    def drain(self):
        acked = [json.loads(line) for line in open(os.path.join(self.work, "history.jsonl"))]
        job_ids = {r["job_id"] for r in acked if r["kind"] == "ack"}
        # Every job final (or 120 s).
        deadline = time.time() + 120
        open_jobs = set(job_ids)
        finals = {}
        while open_jobs and time.time() < deadline:
            for job_id in list(open_jobs):
                try:
                    status, job = self.api.call("GET", f"/api/jobs/{job_id}", timeout=5, tries=3)
                except RuntimeError:
                    continue
                if status == 200 and all(r["status"] not in ("pending", "delivered", "running") for r in job["runs"]):
                    open_jobs.discard(job_id)
            if open_jobs:
                time.sleep(1)
        log(f"drain: {len(open_jobs)} jobs still open after the wait")
        # Every job the API holds (ours, the schedule's, the probes').
        for job in self.api.pages("/api/jobs", "jobs"):
            status, full = self.api.call("GET", f"/api/jobs/{job['job_id']}")
            full["_t_final"] = time.time()
            finals[job["job_id"]] = full
        for job in finals.values():
            final_t = max([parse_time(r["finished_at"]) for r in job["runs"] if r.get("finished_at")] or [time.time()])
            job["_t_final"] = final_t
            self.history.add("final_job", job=job)
            if job.get("command") != "run":
                continue
            for run in job["runs"]:
                if run["status"] == "succeeded":
                    status, out = self.api.call(
                        "GET", f"/api/jobs/{job['job_id']}/runs/{run['run_id']}/output?stream=stdout")
                    text = out.decode("utf-8", "replace") if isinstance(out, bytes) else json.dumps(out)
                    self.history.add("output", run_id=run["run_id"], stdout=text)
        # Events, then the deliveries they owe (or 90 s: at most one request a second per URL).
        events = [e for e in self.api.pages("/api/events", "events") if e["type"].startswith("job.")]
        want = {e["id"] for e in events}
        deadline = time.time() + 90
        while time.time() < deadline:
            got = {json.loads(line).get("event_id") for line in open(os.path.join(self.work, "history.jsonl"))
                   if '"webhook"' in line}
            if want <= got:
                break
            time.sleep(1)
        for e in events:
            self.history.add("event", id=e["id"], type=e["type"], t=parse_time(e["time"]))
        for name in os.listdir(self.markers):
            run_id, what, _pid = name.split(".")
            self.history.add("marker", run_id=run_id, what=what)

    def shutdown(self):
        # The agents and nodes first, then PostgreSQL (SIGINT: its fast shutdown).
        order = sorted(self.procs, key=lambda name: name == "pg")
        for name in order:
            p = self.procs[name]
            if name == "pg":
                for q in self.procs.values():
                    if q is not p:
                        try:
                            q.wait(timeout=15)
                        except subprocess.TimeoutExpired:
                            q.kill()
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGINT if name == "pg" else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p in list(self.procs.items()):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin-dir", required=True)
    r.add_argument("--work", default=None)
    r.add_argument("--rounds", type=int, default=1)
    r.add_argument("--node-skew", default=NODE_SKEW, help="the skewed node's clock offset (libfaketime), e.g. +30")
    c = sub.add_parser("check")
    c.add_argument("history")
    sub.add_parser("selftest")
    args = ap.parse_args()
    if args.cmd == "check":
        return run_check(args.history)
    if args.cmd == "selftest":
        return selftest()
    # A SIGTERM (a CI timeout) unwinds like an error, so that the hosts and processes go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.work = args.work or tempfile.mkdtemp(prefix="outpost-faults.")
    os.makedirs(args.work, exist_ok=True)
    os.chmod(args.work, 0o711)
    log(f"work directory {args.work}")
    return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
