#!/usr/bin/env python3
"""Scan-farm load tests (issue 17): clamd pools and the verdict cache, loopback only,
bounded in time. `make bench-farm` runs the full sizes and writes the "Scan farm"
section at the end of docs/PERFORMANCE.md; tests/t_pool.py runs the same scenarios small.

    python3 bench/farm.py [--bin DIR] [--out FILE] [--quick] [--only NAME]

Scenarios (each on a fresh spool, real binaries, real clamd instances from
tests/lib/clamd.py loading the project's test signatures):
  split   three clamd, one pool, balance = least-busy, three scanner-runners: how the
          work splits (placements per address, and parts per address from the traces)
  kill    the same pool; one clamd is killed (SIGKILL) mid-run: no message lost, none
          delivered unscanned (the delivery invariant), the longest gap between two
          final messages after the kill; then the clamd is restarted: how long until it
          is probed back in and takes mail again
  slow    three clamd over tcp, one behind a proxy that holds every reply 50 ms: the
          share of work least-busy gives it
  cache   one clamd whose database has a version (an unsigned daily.cud built with
          sigtool), the same corpus twice: the share of parts the cache answers on the
          second pass. The corpus is generated (distinct messages, 1-3 attachments each);
          ../shared/corpus has no msgs/ directory on this machine, so none of it is used.

Every scenario checks the delivery invariant of the tests (assert_delivered_clean): each
outbox message, rescanned whole with clamscan and re-split, is clean.
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import lib as harness  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd, command  # noqa: E402
from lib.spool import Pipeline  # noqa: E402

ONE_PART = dict(scan_raw_message=False)
SECTION = "## Scan farm: clamd pools and the verdict cache"


class DelayProxy:
    """A loopback TCP proxy to a clamd tcp address that holds every reply chunk from
    clamd for `delay` seconds (one reply per request, so about delay per request).
    .addr is "tcp:127.0.0.1:PORT"."""

    def __init__(self, upstream, delay=0.05):
        host, _, port = upstream[4:].rpartition(":")
        self.upstream = (host, int(port))
        self.delay = delay
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.ls.settimeout(0.1)
        self.addr = "tcp:127.0.0.1:%d" % self.ls.getsockname()[1]
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _pump(self, src, dst, delay):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if delay:
                    time.sleep(delay)
                dst.sendall(b)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _conn(self, c):
        try:
            u = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            c.close()
            return
        u.settimeout(None)
        c.settimeout(None)
        a = threading.Thread(target=self._pump, args=(c, u, 0), daemon=True)
        a.start()
        self._pump(u, c, self.delay)
        a.join(5)
        c.close()
        u.close()

    def _serve(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def stop(self):
        self.stop_ev.set()
        self.t.join(5)
        self.ls.close()


def make_cud(dbdir, version, work):
    """dbdir/daily.cud: the test EICAR body signature as database `version`."""
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(harness.sigdir(), "spoold-test.ndb")) as f:
        ndb = f.read()
    with open(os.path.join(work, "daily.ndb"), "w") as f:
        f.write(ndb if ndb.endswith("\n") else ndb + "\n")
    with open(os.path.join(work, "COPYING"), "w") as f:
        f.write("spoold bench database\n")
    r = subprocess.run(["sigtool", "--datadir=" + work, "--build=daily.cud", "--unsigned",
                        "--cvd-version=%d" % version, "--no-cdiff"], cwd=work,
                       input=b"spoold-bench\n", stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("sigtool: " + r.stdout.decode(errors="replace")[-2000:])
    os.makedirs(dbdir, exist_ok=True)
    shutil.copyfile(os.path.join(work, "daily.cud"), os.path.join(dbdir, "daily.cud"))


def scanner(addrs, **kw):
    d = dict(name="clamd", type="clamd", addresses=addrs, stream_max_length=10 << 20,
             timeout=10, max_concurrent=12, balance="least-busy", down_min=1, down_max=4)
    d.update(kw)
    return d


def corpus(prefix, n, parts=None):
    """n distinct messages with 1-3 distinct text attachments each, or `parts` each
    (deterministic)."""
    out = []
    for i in range(n):
        k = parts or 1 + (i * 7 + i // 3) % 3
        atts = [(("%s message %d attachment %d\n" % (prefix, i, j)).encode() * (20 + 7 * j),
                 "a%d.txt" % j, "text/plain") for j in range(k)]
        common, crlf = msgs._split_common(dict(subject="%s %d" % (prefix, i)))
        m = msgs._bytes(msgs._mixed("%s message %d\n" % (prefix, i), atts, common), crlf)
        out.append(("%s%05d" % (prefix, i), m))
    return out


def drop_all(p, items):
    for name, data in items:
        p.drop(name, data)


def pool_status(p):
    import json
    r = p.ctl("status", "--json")
    for s in json.loads(r.out)["scanners"]:
        if s["name"] == "clamd":
            return {a["address"]: a for a in s.get("pool", [])}
    return {}


def parts_per_address(p):
    counts = {}
    for _, _, path in p.finals():
        try:
            with open(os.path.join(path, "trace"), errors="replace") as f:
                for m in re.finditer(r"scan part=\d+ scanner=clamd .*?exit=(\S+)", f.read()):
                    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        except FileNotFoundError:
            pass
    return counts


def finish(p):
    """The delivery invariant, then stop."""
    try:
        p.assert_delivered_clean()
    finally:
        p.stop()


def run_split(n, runners=3):
    cds = [Clamd(harness.tmpdir("split%d" % i), harness.sigdir()) for i in range(3)]
    try:
        addrs = [c.unix_addr for c in cds]
        p = Pipeline(scanners=[scanner(addrs)], splitter=ONE_PART,
                     runner=dict(instances=runners), invariant="checked by finish()").start()
        harness.wait_for(lambda: pool_status(p) or True, timeout=30)
        t0 = time.monotonic()
        # Messages of one size (2 attachments): the split of messages is the split of work.
        drop_all(p, corpus("s", n, parts=2))
        p.wait_final(n, timeout=60 + n)
        took = time.monotonic() - t0
        pool = pool_status(p)
        res = dict(n=n, seconds=took, placed=[pool[a]["requests"] for a in addrs],
                   parts=[parts_per_address(p).get(a, 0) for a in addrs],
                   places=sorted(set(f[0] for f in p.finals())))
        finish(p)
        return res
    finally:
        for c in cds:
            c.stop()


def run_kill(n, runners=2):
    cds = [Clamd(harness.tmpdir("kill%d" % i), harness.sigdir()) for i in range(3)]
    try:
        addrs = [c.unix_addr for c in cds]
        p = Pipeline(scanners=[scanner(addrs)], splitter=ONE_PART, runner=dict(instances=runners),
                     invariant="checked by finish()").start()
        items = corpus("k", n) + [("kvirus", msgs.eicar_attachment())]
        # A third before the kill, the rest right after it: the pool learns of the dead
        # clamd from the mail itself, not from a quiet spell.
        first = n // 3
        drop_all(p, items[:first])
        harness.wait_for(lambda: len(p.finals()) >= first, timeout=60 + n)
        times = []
        done_at_kill = len(p.finals())
        cds[1].kill()
        t_kill = time.monotonic()
        drop_all(p, items[first:])
        seen = done_at_kill
        deadline = t_kill + 60 + n
        while len(p.finals()) < n + 1 or p.in_flight():
            now = len(p.finals())
            if now > seen:
                times.append(time.monotonic())
                seen = now
            if time.monotonic() > deadline:
                raise AssertionError("kill: not all final (%d/%d)" % (now, n + 1))
            time.sleep(0.005)
        gaps = [b - a for a, b in zip([t_kill] + times, times)]
        places = [f[0] for f in p.finals()]
        before = pool_status(p)[addrs[1]]
        cds[1].proc.wait(10)
        cds[1].proc = None
        t_restart = time.monotonic()
        cds[1].start()
        extra = corpus("r", 30)
        rejoin = None
        drop_all(p, extra[:1])
        deadline = time.monotonic() + 60
        i = 1
        while time.monotonic() < deadline:
            st = pool_status(p)[addrs[1]]
            if st["state"] == "up" and st["requests"] > before["requests"]:
                rejoin = time.monotonic() - t_restart
                break
            if i < len(extra):
                drop_all(p, extra[i:i + 1])
                i += 1
            time.sleep(0.2)
        p.wait_final(n + 1 + i, timeout=120)
        res = dict(n=n, finals=len(places), held=places.count("hold"),
                   quarantined=places.count("quarantine"),
                   delivered=places.count("outbox/smtp"),
                   max_gap=max(gaps) if gaps else 0.0, killed_errors=before["errors"],
                   killed_state=before["state"], rejoin=rejoin)
        finish(p)
        return res
    finally:
        for c in cds:
            c.stop()


def run_slow(n, runners=3, delay=0.05):
    cds = [Clamd(harness.tmpdir("slow%d" % i), harness.sigdir(), tcp=True) for i in range(3)]
    proxy = DelayProxy(cds[0].tcp_addr, delay)
    try:
        addrs = [proxy.addr, cds[1].tcp_addr, cds[2].tcp_addr]
        p = Pipeline(scanners=[scanner(addrs)], splitter=ONE_PART,
                     runner=dict(instances=runners), invariant="checked by finish()").start()
        t0 = time.monotonic()
        drop_all(p, corpus("w", n, parts=2))
        p.wait_final(n, timeout=60 + 2 * n)
        took = time.monotonic() - t0
        pool = pool_status(p)
        res = dict(n=n, seconds=took, placed=[pool[a]["requests"] for a in addrs],
                   parts=[parts_per_address(p).get(a, 0) for a in addrs])
        finish(p)
        return res
    finally:
        proxy.stop()
        for c in cds:
            c.stop()


def cache_counter(p, result):
    d = os.path.join(p.spool, "run", "stats")
    total = 0
    for name in os.listdir(d) if os.path.isdir(d) else []:
        try:
            with open(os.path.join(d, name)) as f:
                text = f.read()
        except OSError:
            continue
        for m in re.finditer(r'spoold_cache_lookups_total\{[^}]*result="%s"[^}]*\} (\d+)'
                             % result, text):
            total += int(m.group(1))
    return total


def run_cache(n, runners=2):
    db = harness.tmpdir("cachedb")
    make_cud(db, 7, harness.tmpdir("cachecud"))
    with Clamd(harness.tmpdir("cache"), db) as cd:
        p = Pipeline(scanners=[scanner([cd.unix_addr])], runner=dict(instances=runners),
                     invariant="checked by finish()").start()
        items = corpus("c", n)
        t0 = time.monotonic()
        drop_all(p, items)
        p.wait_final(n, timeout=60 + n)
        t1 = time.monotonic()
        # The metrics files are rewritten about once a second.
        harness.wait_for(lambda: cache_counter(p, "miss") > 0, timeout=20)
        time.sleep(1.5)
        h1, m1 = cache_counter(p, "hit"), cache_counter(p, "miss")
        # The same corpus again (same bytes, new file names).
        t1 = time.monotonic()
        drop_all(p, [("again-" + name, data) for name, data in items])
        p.wait_final(2 * n, timeout=60 + n)
        t2 = time.monotonic()
        harness.wait_for(lambda: cache_counter(p, "hit") + cache_counter(p, "miss") > h1 + m1,
                         timeout=20)
        time.sleep(1.5)  # the metrics file is rewritten about once a second
        h2, m2 = cache_counter(p, "hit") - h1, cache_counter(p, "miss") - m1
        res = dict(n=n, pass1=(h1, m1, t1 - t0), pass2=(h2, m2, t2 - t1),
                   ratio=h2 / float(h2 + m2) if h2 + m2 else 0.0)
        finish(p)
        return res


def report(results, args):
    lines = [SECTION, ""]
    lines.append("* **Command:** `%s`" % " ".join(["python3", "bench/farm.py"] + sys.argv[1:]))
    lines.append("* **Date:** %s" % datetime.datetime.now(datetime.timezone.utc)
                 .strftime("%Y-%m-%d %H:%M UTC"))
    lines.append("* **Machine:** %s, %d cores (shared with other work while it ran)"
                 % (platform.machine(), os.cpu_count() or 0))
    lines.append("* Loopback only; real clamd instances loading the test signatures; every "
                 "scenario also checks the delivery invariant.")
    lines.append("* \"Messages placed\" counts the first address chosen for each message "
                 "(run/pool.clamd, shown by spoolctl status); \"parts scanned\" counts the "
                 "verdict lines naming each address (exit=) in the messages' traces.")
    lines.append("* Not measured here: a canary round runs inside each scanner-runner and now "
                 "checks every address of a pool in turn, so with a very short "
                 "canary_interval (2 s in an earlier run) a round can pause that runner's "
                 "mail for about a second per address; the default interval is 300 s.")
    lines.append("")
    s = results.get("split")
    if s:
        lines += ["### Three clamd, least-busy, %d messages, 3 scanner-runners" % s["n"], "",
                  "| | clamd 1 | clamd 2 | clamd 3 | off the mean (max) |", "|---|---|---|---|---|"]
        for label, key in (("messages placed", "placed"), ("parts scanned", "parts")):
            v = s[key]
            mean = sum(v) / 3.0
            off = max(abs(x - mean) for x in v) / mean * 100 if mean else 0
            lines.append("| %s | %d | %d | %d | %.1f %% |" % (label, v[0], v[1], v[2], off))
        lines += ["", "%d messages in %.1f s." % (s["n"], s["seconds"]), ""]
    k = results.get("kill")
    if k:
        lines += ["### One clamd killed mid-run (%d messages + 1 EICAR), then restarted" % k["n"],
                  "",
                  "| final | delivered | quarantined | held | longest gap after the kill | "
                  "killed clamd errors | back in the pool after restart |",
                  "|---|---|---|---|---|---|---|",
                  "| %d | %d | %d | %d | %.2f s | %d | %s |" % (
                      k["finals"], k["delivered"], k["quarantined"], k["held"], k["max_gap"],
                      k["killed_errors"],
                      "%.1f s" % k["rejoin"] if k["rejoin"] is not None else "no"), ""]
    w = results.get("slow")
    if w:
        tot = sum(w["placed"]) or 1
        lines += ["### One clamd behind a proxy adding 50 ms per request, %d messages" % w["n"],
                  "",
                  "| | slow clamd | clamd 2 | clamd 3 |", "|---|---|---|---|",
                  "| messages placed | %d (%.0f %%) | %d (%.0f %%) | %d (%.0f %%) |" % (
                      w["placed"][0], 100.0 * w["placed"][0] / tot,
                      w["placed"][1], 100.0 * w["placed"][1] / tot,
                      w["placed"][2], 100.0 * w["placed"][2] / tot),
                  "| parts scanned | %d | %d | %d |" % tuple(w["parts"]), "",
                  "%d messages in %.1f s." % (w["n"], w["seconds"]), ""]
    c = results.get("cache")
    if c:
        lines += ["### Verdict cache: the same %d generated messages twice" % c["n"], "",
                  "| pass | cache hits | misses | seconds |", "|---|---|---|---|",
                  "| first | %d | %d | %.1f |" % c["pass1"],
                  "| second | %d | %d | %.1f |" % c["pass2"], "",
                  "Second pass: the cache answered **%.1f %%** of the parts (the shared "
                  "corpus has no msgs/ directory here, so the corpus is generated)."
                  % (100 * c["ratio"]), ""]
    return "\n".join(lines) + "\n"


def write_section(path, text):
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    i = doc.find(SECTION)
    if i >= 0:
        doc = doc[:i].rstrip("\n") + "\n\n"
    elif doc and not doc.endswith("\n\n"):
        doc = doc.rstrip("\n") + "\n\n"
    with open(path + ".tmp", "w") as f:
        f.write(doc + text)
    os.rename(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    harness.BIN = os.path.abspath(args.bin)
    os.environ["TEST_BIN"] = harness.BIN
    for prog in ("spoold", "scanner-runner", "spoolctl"):
        if not os.access(os.path.join(harness.BIN, prog), os.X_OK):
            sys.exit("farm.py: %s/%s missing: build first (make)" % (harness.BIN, prog))
    scale = 0.2 if args.quick else 1.0
    plan = [("split", run_split, 600), ("kill", run_kill, 400), ("slow", run_slow, 300),
            ("cache", run_cache, 500)]
    results = {}
    for name, fn, n in plan:
        if args.only and name not in args.only:
            continue
        t = time.monotonic()
        results[name] = fn(max(10, int(n * scale)))
        print("%s: %s (%.0f s)" % (name, results[name], time.monotonic() - t), flush=True)
    text = report(results, args)
    write_section(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
