#!/usr/bin/env python3
"""The fleet exporter's throughput (issue 16, docs/PERFORMANCE.md "Fleet exporter").

    python3 bench/fleet.py [--bin DIR] [-n MESSAGES] [--batch N]

A throwaway PostgreSQL (tests/lib/pg.py) and one node's spool whose export/ holds a
backlog of MESSAGES x 3 records (intake, scanned, outbox: what a delivered message
writes), made directly as files in the record format (lib/export.h); then
`exporter --once` drains it, timed. Prints the events per second, the message rate they
stand for, the exporter's own CPU per message (getrusage of the child), and checks that
the database holds every row once. PostgreSQL's own CPU is not in that figure: it runs on
the same two cores and shows in the wall time."""
import argparse
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import lib as harness  # noqa: E402
from lib.pg import Postgres, fleet_conf  # noqa: E402
from lib.spool import Pipeline, fake  # noqa: E402


def write_backlog(export, n):
    t = time.time()
    for i in range(n):
        qid = "%014x-%06x-%04x" % (int(t * 1e6) + i, 0x42, i & 0xffff)
        common = "node bench\nqid %s\ntime %.6f\n" % (qid, t + i / 1e6)
        recs = {
            1: "kind intake\nsender s%d@bench.example\nrcpt r%d@dest.example\n"
               "subject bench message %d\nmessage_id <bench-%d@example.test>\nsize 24000\n"
               % (i, i, i, i),
            2: "kind scanned\nclass clean\n",
            3: "kind outbox\n",
        }
        for seq, body in recs.items():
            with open(os.path.join(export, "%s.%d" % (qid, seq)), "w") as f:
                f.write("spoold-event 1\n%sseq %d\n%send\n" % (common, seq, body))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    ap.add_argument("-n", type=int, default=33334)
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
    harness.BIN = os.path.abspath(a.bin)
    pg = Postgres()
    pg.add_role("node_bench", "spoold-bench")
    p = Pipeline(scanners=[fake("av")],
                 extra=fleet_conf(pg, "bench", "spoold-bench", "\tbatch = %d;\n" % a.batch),
                 invariant="no mail is delivered here")
    for argv in (["fleet", "init"], ["fleet", "node", "bench", "node_bench"]):
        r = p.ctl(*argv)
        assert r.returncode == 0, r.out
    p.stage("splitter")  # makes the spool
    export = os.path.join(p.spool, "export")
    os.makedirs(export, exist_ok=True)
    write_backlog(export, a.n)
    events = 3 * a.n
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([os.path.join(harness.BIN, "exporter"), "-c", p.conf, "--once"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3600)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    left = len([x for x in os.listdir(export) if not x.startswith(".")])
    rows = int(pg.value("SELECT count(*) FROM spoold.events"))
    msgs = int(pg.value("SELECT count(*) FROM spoold.messages"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print("backlog: %d events (%d messages), batch %d" % (events, a.n, a.batch))
    print("drained in %.1f s: %.0f events/s = %.0f msg/s; left in export/: %d" % (
        wall, events / wall, a.n / wall, left))
    print("exporter CPU: %.1f s, %.3f ms per message (%.3f ms per event)" % (
        cpu, 1000 * cpu / a.n, 1000 * cpu / events))
    print("database: %d event rows, %d message rows" % (rows, msgs))
    assert left == 0 and rows == events and msgs == a.n
    harness._run_cleanups()


if __name__ == "__main__":
    main()
