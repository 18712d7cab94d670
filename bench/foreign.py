#!/usr/bin/env python3
"""spoold under a foreign writer (issue 19): drop-to-outbox latency and backlog throughput
per sync strategy (spool_sync = syncfs | files | auto), idle and with another program
dirtying pages on the spool's filesystem.

    python3 bench/foreign.py --bin /tmp/build-sync/prod/bin [--seconds 20] [--rate 50]
            [--writer-mb 80,400] [--backlog 2000] [--strategies syncfs,files,auto]
            [--out docs/PERFORMANCE.md]

With --out the section goes into that file between its marks (`make bench-foreign`), as
bench/peer.py's and bench/mta.py's do.

Uses bench/run.py's harness by import (Run, latency, backlog, the corpus, the no-op
scanner): a fresh spool and spoold per round, the no-op scanner (bench/noop.c) so that
clamd's time stays out, distinct content per message. Latency: `rate` messages a second
for `seconds` (after a second of warm-up, not counted), each timed from its rename into
inbound/ to its outbox entry's appearance (inotify). Throughput: `backlog` messages in
inbound/ before spoold starts, timed to the last final place.

The foreign writer is a separate process that writes 1 MiB blocks at a fixed rate into
one file beside the spool (same filesystem), round-robin over 512 MiB, never syncing: the
kernel's flusher and any syncfs must write them. It deletes its file when it stops. It
stands in for a backup, a log shipper or a `dd` on the same disk.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402  (bench/run.py)

STRATEGY = ["syncfs"]
_orig_init = bench.Run.__init__


def _run_init(self, *a, **k):
    """bench.Run with the strategy under test added to its config."""
    _orig_init(self, *a, **k)
    with open(self.conf, "a") as f:
        f.write('spool_sync = "%s";\n' % STRATEGY[0])


bench.Run.__init__ = _run_init

# bench.latency reports p50 and p99; the p90 is taken from the same list.
_orig_pct = bench.pct
LAST = {}


def _pct(xs, q):
    if q == 50:
        LAST["lat"] = list(xs)
    return _orig_pct(xs, q)


bench.pct = _pct

WRITER = r"""
import os, signal, sys, time
path, rate = sys.argv[1], float(sys.argv[2])
# Stopped by SIGTERM, with a handler of its own: SIGINT may be ignored (a shell starts
# a background job with SIGINT ignored, and Python then installs no handler for it).
def stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
blk = os.urandom(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
n, t0 = 0, time.monotonic()
try:
    while True:
        os.pwrite(fd, blk, (n % 512) << 20)
        n += 1
        d = t0 + n / rate - time.monotonic()
        if d > 0:
            time.sleep(d)
except KeyboardInterrupt:
    pass
finally:
    os.close(fd)
    os.unlink(path)
    print(n)
"""


class Writer:
    """The foreign writer: a child process dirtying `mb` MiB/s on the spool's filesystem."""

    def __init__(self, work, mb):
        self.path = os.path.join(work, "foreign.big")
        self.mb = mb
        self.proc = None

    def __enter__(self):
        if self.mb > 0:
            self.proc = subprocess.Popen([sys.executable, "-c", WRITER, self.path, str(self.mb)],
                                         stdout=subprocess.PIPE, text=True)
            time.sleep(2.0)  # steady state: dirty pages at the writer's pace
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=60)
            self.blocks = int(out.strip() or 0)
        return False


def dirty_kb():
    with open("/proc/meminfo") as f:
        v = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split()[-1] == "kB"}
    return v.get("Dirty", 0) + v.get("Writeback", 0)


def fs_note(path):
    """'ext4 on /dev/vda, journal: no' and the like."""
    st = os.stat(path)
    dev = "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    fstype, src, opts = "?", "?", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            if p[2] == dev:
                sep = p.index("-")
                fstype, src, opts = p[sep + 1], p[sep + 2], p[5]
    journal = "n/a"
    if fstype == "ext4":
        try:
            name = os.path.basename(os.path.realpath("/sys/dev/block/" + dev))
            journal = "yes" if any(j.startswith(name + "-") for j in os.listdir("/proc/fs/jbd2")) \
                else "no"
        except OSError:
            journal = "no"
    return "%s on %s (%s), journal: %s" % (fstype, src, opts, journal)


def one_latency(args, scanner):
    r = bench.latency(args, scanner, args.rate, args.seconds)
    lat = LAST.get("lat", [])
    return dict(n=r["n"], p50=r["p50"], p90=_orig_pct(lat, 90), p99=r["p99"], max=r["max"],
                places=r["places"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(bench.ROOT, "bin"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--writer-mb", default="80,400",
                    help="the foreign writer's rates in MiB/s, comma-separated: one that the "
                    "disk keeps up with, one that outruns it")
    ap.add_argument("--backlog", type=int, default=2000)
    ap.add_argument("--strategies", default="syncfs,files,auto")
    ap.add_argument("--out", default=None, help="a markdown file to put the section into")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.writers = [float(x) for x in args.writer_mb.split(",") if x]
    started = time.time()
    args.work = args.work or tempfile.mkdtemp(prefix="spoold-foreign-", dir="/tmp")
    os.makedirs(args.work, exist_ok=True)
    bench.DISCARD_DIR[0] = os.path.join(args.work, "discarded")
    os.makedirs(bench.DISCARD_DIR[0], exist_ok=True)
    rows = []
    try:
        tools = bench.compile_helpers(args.work)
        scanner = bench.scanner_noop(tools)
        files = []
        if args.backlog:
            files, _, _ = bench.make_corpus(args.work, "backlog", args.backlog, 1, 20 << 10,
                                            eicar_every=0)
        note = fs_note(args.work)
        bench.say("filesystem: %s; writers %s MiB/s" % (note, args.writer_mb))
        for strat in args.strategies.split(","):
            STRATEGY[0] = strat
            for mb in [0] + args.writers:
                os.sync()
                with Writer(args.work, mb) as w:
                    d0 = dirty_kb()
                    lat = one_latency(args, scanner)
                    d1 = dirty_kb()
                    bl = bench.backlog(args, files, scanner) if files else None
                row = dict(strategy=strat, writer=mb, lat=lat, backlog=bl, dirty=(d0, d1),
                           written=getattr(w, "blocks", 0))
                rows.append(row)
                bench.say("%-6s writer %3g MiB/s: latency n=%d p50 %.1f p90 %.1f p99 %.1f "
                          "max %.1f ms; backlog %s; dirty %d/%d kB; writer wrote %d MiB"
                          % (strat, mb, lat["n"], lat["p50"], lat["p90"], lat["p99"],
                             lat["max"],
                             "%d in %.2f s (%.0f msg/s)" % (len(files), bl["secs"],
                                                            len(files) / bl["secs"])
                             if bl else "-", d0, d1, row["written"]))
        text = table(note, args, rows, len(files))
        print(text)
        if args.out:
            cmd = "python3 bench/foreign.py " + " ".join(sys.argv[1:])
            md = ("## A foreign writer on the spool's filesystem (`make bench-foreign`)\n\n"
                  "`%s` on %s UTC, %.0f s; loadavg at the end %s.\n\n" % (
                      cmd, time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
                      time.time() - started, open("/proc/loadavg").read().strip())
                  + text + "\n" + goal(rows) + "\n")
            bench.put_section(args.out, md, MARK_BEGIN, MARK_END)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


MARK_BEGIN = "<!-- bench-foreign: begin -->"
MARK_END = "<!-- bench-foreign: end -->"


def goal(rows):
    """The issue's goal, per strategy and writer: p50 under the writer <= 2x idle p50."""
    idle = {r["strategy"]: r["lat"]["p50"] for r in rows if not r["writer"]}
    out = ["| status | goal: p50 under the foreign writer <= 2x idle p50 |", "|---|---|"]
    for r in rows:
        if not r["writer"] or r["strategy"] not in idle:
            continue
        x = r["lat"]["p50"] / idle[r["strategy"]] if idle[r["strategy"]] else float("inf")
        out.append("| %s | %s, writer %g MiB/s: %.1f against %.1f ms idle (%.2fx; p90 %.2fx)%s |"
                   % ("met" if x <= 2 else "**not met**", r["strategy"], r["writer"],
                      r["lat"]["p50"], idle[r["strategy"]], x,
                      r["lat"]["p90"] / max(1e-9, [i["lat"]["p90"] for i in rows
                                                    if i["strategy"] == r["strategy"]
                                                    and not i["writer"]][0]),
                      " (the default)" if r["strategy"] == "auto" else ""))
    return "\n".join(out) + "\n"


def table(note, args, rows, nback):
    out = ["Filesystem: %s. Latency: %g msg/s for %g s, 20 KiB attachment each, no-op "
           "scanner; backlog: %d messages; writers: none and %s MiB/s, never syncing.\n"
           % (note, args.rate, args.seconds, nback, args.writer_mb),
           "| strategy | foreign writer | p50 ms | p90 ms | p99 ms | max ms | backlog s | msg/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        la, bl = r["lat"], r["backlog"]
        out.append("| %s | %s | %.1f | %.1f | %.1f | %.1f | %s | %s |" % (
            r["strategy"], "%g MiB/s" % r["writer"] if r["writer"] else "none",
            la["p50"], la["p90"], la["p99"], la["max"],
            "%.2f" % bl["secs"] if bl else "-", "%.0f" % (nback / bl["secs"]) if bl else "-"))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
