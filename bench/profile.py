#!/usr/bin/env python3
"""Where the CPU goes: one corpus-a run through spoold with clamd, under `perf record`
machine-wide (issue 19: "if a goal is missed, profile").

    python3 bench/profile.py [--bin DIR] [--messages 2000] [--out docs/PERFORMANCE.md]

Uses bench/run.py's harness by import: the same corpus shape (distinct 20 KB attachments,
5 % EICAR), a fresh spool and spoold, a private clamd RELOADed before the run (its cache
cold), the same CPU meter. `perf record -a -g -F 499` runs from just before the first
rename into inbound/ (the corpus is staged before it starts) to the last final place;
then `perf report --no-children` by command, and by command and symbol. Needs root (perf
machine-wide) and perf (Debian's linux-perf). With --out the section goes into that file
between its marks (`make bench-profile`).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402  (bench/run.py)

MARK_BEGIN = "<!-- bench-profile: begin -->"
MARK_END = "<!-- bench-profile: end -->"


class Perf:
    """perf record -a -g over the body of a with-block."""

    def __init__(self, out):
        self.out = out
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-q",
                                      "-o", self.out], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # perf's own start-up (mapping every CPU's buffer) is not the run's
        if self.proc.poll() is not None:
            raise RuntimeError("perf record exited: %s" % self.proc.stderr.read().strip())
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=300)
        if self.proc.returncode not in (0, -signal.SIGINT) or not os.path.exists(self.out):
            raise RuntimeError("perf record failed (%s): %s" % (self.proc.returncode, err))
        return False


def report(data, sort, limit):
    """[(percent, key...)] from perf report --stdio, the top `limit` rows."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g",
                          "none", "--sort", sort, "--percent-limit", "0.3"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        p = line.split()
        if not p or line.lstrip().startswith("#") or not p[0].endswith("%"):
            continue
        rows.append((float(p[0][:-1]), p[1:]))
    return rows[:limit]


def idle(by_comm):
    return sum(pc for pc, k in by_comm if k[0] == "swapper")


def wrapped_throughput(args, files, scanner, data):
    """bench.throughput with perf started after staging and clamd's RELOAD: its Run is
    patched so that the first rename into inbound/ happens inside the perf window."""
    orig_start = bench.Run.start
    ctx = {}

    def start(self):
        orig_start(self)
        ctx["perf"] = Perf(data).__enter__()

    bench.Run.start = start
    try:
        res = bench.throughput(args, files, scanner, meter=True)
    finally:
        bench.Run.start = orig_start
        if "perf" in ctx:
            ctx["perf"].__exit__(None, None, None)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(bench.ROOT, "bin"))
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--out", default=None, help="a markdown file to put the section into")
    ap.add_argument("--work", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    if shutil.which("perf") is None:
        sys.exit("bench-profile: perf not found (Debian: linux-perf)")
    if os.geteuid() != 0:
        sys.exit("bench-profile: needs root (perf record -a)")
    started = time.time()
    args.work = args.work or tempfile.mkdtemp(prefix="spoold-profile-", dir="/tmp")
    os.makedirs(args.work, exist_ok=True)
    bench.DISCARD_DIR[0] = os.path.join(args.work, "discarded")
    os.makedirs(bench.DISCARD_DIR[0], exist_ok=True)
    data = os.path.join(args.work, "perf.data")
    cd = None
    try:
        sigs = bench.sigdir(args.work)
        files, total, inf = bench.make_corpus(args.work, "a", args.messages, 1, 20 << 10)
        cd = bench.Clamd(os.path.join(args.work, "clamd"), sigs, stream_max_length="200M",
                         extra={"MaxFileSize": "200M", "MaxScanSize": "400M",
                                "MaxThreads": "8"})
        bench.CLAMDS[cd.unix_addr] = cd
        res = wrapped_throughput(args, files, bench.scanner_clamd(cd.unix_addr), data)
        n = len(files)
        bench.say("%d msgs in %.2f s %s cpu %s" % (n, res["secs"], res["places"],
                                                   {k: round(v, 2)
                                                    for k, v in res["cpu"].items()}))
        by_comm = report(data, "comm", 15)
        by_sym = report(data, "comm,dso,sym", 26)
    finally:
        if cd is not None:
            cd.stop()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    ms = lambda k: 1000.0 * sum(v for c, v in res["cpu"].items() if c.startswith(k)) / n
    md = ["## Profile: corpus a through spoold with clamd (`make bench-profile`)\n",
          "`python3 bench/profile.py %s` on %s UTC, %.0f s; loadavg at the end %s. "
          "%d messages (%s of mail, %d with EICAR) in %.2f s (%.1f msg/s under perf); CPU "
          "per message: spoold's stages %.2f ms, clamd %.2f ms, kernel threads and irq "
          "%.2f ms; spoold's processes made %.0f MB dirty (%.1fx the mail). `perf record "
          "-a -g -F 499` machine-wide from the first rename into inbound/ to the last final "
          "place; `perf report --no-children`.\n" % (
              " ".join(sys.argv[1:]), time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
              time.time() - started, open("/proc/loadavg").read().strip(), n,
              "%.1f MB" % (total / 1e6), inf, res["secs"], n / res["secs"], ms("spoold:"),
              ms("clamd"), ms("kernel") + ms("irq"), res["own"] / 1e6, res["own"] / total),
          "Shares are of the busy samples: the idle task (`swapper`, %.1f %% of all "
          "samples) is left out and the rest scaled to 100 %%.\n" % idle(by_comm),
          "| share of busy samples | command |", "|---|---|"]
    busy = 100.0 - idle(by_comm)
    md += ["| %.1f %% | %s |" % (100.0 * pc / busy, " ".join(k)) for pc, k in by_comm
           if k[0] != "swapper"]
    md += ["", "The top symbols (command, object, symbol):", "",
           "| share | command | object | symbol |", "|---|---|---|---|"]
    for pc, k in by_sym:
        if k[0] == "swapper":
            continue
        pc = 100.0 * pc / busy
        comm, dso, sym = (k + ["", "", ""])[:3]
        rest = " ".join(k[3:]) if len(k) > 3 else ""
        md.append("| %.1f %% | %s | %s | `%s` |" % (pc, comm, dso, (sym + " " + rest).strip()))
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        bench.put_section(args.out, text, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
