"""Groups `perf script -F comm,tid,time,ip,sym` samples of the server by thread and by task.

    python3 scripts/perf_by_task.py SCRIPT.txt SERVER_US_PER_RESULT

Each figure is a share of the samples times the server's CPU per stored result, so µs per
result. The busiest sqlx thread is the writer's connection; the other sqlx threads are the
pool's. The crate prefixes are folded (`X::`), so that the one-crate server (before issue 45)
and the split one compare frame by frame. Used by scripts/perf-throughput.sh.
"""

import collections
import re
import sys

TASKS = [
    ("digester", r"service::digests"),
    ("writer commit", r"::writer::commit"),
    ("writer other", r"::writer::"),
    ("agents' WebSocket tasks", r"hub::ws::"),
    ("agents' long-poll", r"hub::http::"),
    ("jobs service", r"service::jobs"),
    ("api", r"X::api::"),
    ("listen", r"X::listen"),
    ("workers", r"housekeeping|rollout|cron|schedules|integrations|webhooks|mail"),
    ("tokio", r"tokio::"),
]
PREFIXES = [
    "outpost_server::store::", "outpost_server::hub::", "outpost_server::service::",
    "outpost_server::", "outpost_store::", "outpost_core::", "outpost_web::",
]


def load(path):
    samples, cur = [], None
    for line in open(path, errors="replace"):
        if not line.strip():
            if cur:
                samples.append(cur)
            cur = None
        elif line[0] not in "\t ":
            comm, tid = line.split()[:2]
            cur = (comm + " " + tid, [])
        else:
            parts = line.strip().split(None, 1)
            cur[1].append(parts[1] if len(parts) > 1 else "?")
    if cur:
        samples.append(cur)
    return samples


def norm(frame):
    for prefix in PREFIXES:
        frame = frame.replace(prefix, "X::")
    return re.sub(r"(::\{\{closure\}\})+", "", frame)


def main():
    samples = load(sys.argv[1])
    cpu = float(sys.argv[2])
    n = len(samples)
    per = lambda count: cpu * count / n
    threads = collections.Counter(c for c, _ in samples)
    sqlx = [c for c, _ in threads.most_common() if c.startswith("sqlx")]
    writer_conn = sqlx[0] if sqlx else None

    def thread(c):
        if c == writer_conn:
            return "SQLite on the writer's connection"
        if c.startswith("sqlx"):
            return "SQLite on the pool's connections"
        if c.startswith("outpost-writer"):
            return "the writer's thread"
        return c.split()[0]

    by_thread, by_task, pool, incl = (collections.Counter() for _ in range(4))
    for c, frames in samples:
        t = thread(c)
        by_thread[t] += 1
        frames = [norm(f) for f in frames]
        joined = " ".join(frames)
        if t.startswith("SQLite"):
            by_task[t] += 1
            if t.endswith("pool's connections"):
                if "walCheckpoint" in joined:
                    kind = "checkpoints"
                elif "sqlite3BtreeInsert" in joined:
                    kind = "inserts"
                elif "sqlite3VdbeHalt" in joined:
                    kind = "commits"
                elif "sqlite3LockAndPrepare" in joined or "sqlite3Prepare" in joined:
                    kind = "prepares"
                elif "sqlite3_step" in joined:
                    kind = "other steps (reads, uniqueness checks)"
                else:
                    kind = "sqlx's own work"
                pool[kind] += 1
        else:
            task = next((name for name, pat in TASKS if re.search(pat, joined)), "other")
            by_task[task] += 1
        for frame in set(frames):
            if "X::" in frame:
                incl[frame] += 1
    print(f"{n} samples; µs per stored result (server {cpu:.1f})")
    for title, counter in [("by thread", by_thread), ("by task", by_task), ("the pool's SQLite", pool)]:
        print(f"\n{title}:")
        for key, count in counter.most_common():
            print(f"  {per(count):6.2f}  {key}")
    print("\nthe server's own functions, inclusive:")
    for key, count in incl.most_common(40):
        print(f"  {per(count):6.2f}  {key[:140]}")


if __name__ == "__main__":
    main()
