#!/usr/bin/env python3
"""Test runner used by `make test`.

    tests/run.py --bin DIR [--bin DIR2 ...] [--only PATTERN] [--label NAME] [--timeout SECONDS]

For each --bin DIR (e.g. build/prod/bin, build/asan/bin), runs, in name order:
  (a) every executable DIR/../tests/unit_* (C unit test binaries), with no arguments;
  (b) every tests/t_*.py as `python3 tests/t_x.py --bin DIR`.
Each prints result lines "PASS name", "FAIL name: why", "SKIP name: why"; every line is
echoed as it arrives. A program that times out (--timeout, else $TEST_TIMEOUT, else
600 s) counts as one failure; so does one that exits non-zero or by a signal without
having printed a FAIL line, and one that prints no result at all. After the last
program the skipped tests are summed up by reason, the failures are listed again, and the
very last line is exactly

    N passed, N failed, N skipped

Exit status: 1 if anything failed, else 0 (2 for a usage error).

--only PATTERN   run only programs whose name (unit_x, t_x) contains or glob-matches
                 PATTERN; "t_x:TEST" runs t_x.py with --only TEST (tests whose name
                 contains or glob-matches TEST).
--label NAME     a name for this run (e.g. "asan"), shown in the header and the failure
                 list and passed to the programs as $TEST_LABEL. With several --bin, each
                 is labelled by the name of its build directory (build/asan/bin: "asan"),
                 prefixed by NAME if given; the counts in the last line are the sum.
--tests-dir DIR  where the t_*.py files are (default: the directory of this script).
--separated PATS after the runs above, run the test files matching the comma-separated
                 patterns once more against the first --bin, labelled "<build>-separated",
                 with $SPOOLD_TEST_SEPARATED=1: run as root, every Pipeline then runs each
                 stage as a user of its own (tests/lib/privsep.py). Not root: one SKIP.
--sync-files PATS  run the test files named (comma-separated) once more against the last
                 --bin, labelled "<build>-files", with $SPOOLD_TEST_SPOOL_SYNC=files: every
                 Pipeline makes its steps durable per file (spool_sync = "files").

Programs run with the repository root as working directory, $TEST_BIN set to the --bin
directory, in their own process group; whatever they leave running in that group is
killed when they end.
"""

import argparse
import fnmatch
import os
import re
import select
import signal
import subprocess
import sys
import time

RESULT = re.compile(rb"^(PASS|FAIL|SKIP) (.*)$")
KILL_GRACE = 5.0     # seconds between SIGTERM and SIGKILL at a timeout
DRAIN_AFTER_EXIT = 2.0  # seconds to keep reading after the program exited

# Programs that run by themselves with --jobs: the benchmarks and load tests, whose
# figures another program beside them would spoil (t_fleet_load compares p50 latencies),
# and the files whose tests bound a time tightly (a restart within 2 s, a pipelined
# commit within 0.7 s, a control request within 2.5 s).
ALONE = {"t_bench_smoke", "t_farm_load", "t_speed_bench", "t_speed_mta", "t_speed_smtp",
         "t_fleet_load", "t_lmtp", "t_spoold", "t_privsep_root"}

# About how long each slow program takes (seconds, the longest of its builds, three at a
# time on 2 cores): with --jobs the slow ones start first, so that the pool does not end
# waiting on one long program.
SLOW = {
    "t_hostile": 183, "t_clamd_cut": 160, "t_fuzz": 146, "t_fleet": 131, "t_corpus": 124,
    "t_privsep_stages": 110, "t_router": 87, "t_crash": 76, "t_scanner": 69, "t_spoold": 69,
    "t_failclosed": 55, "t_router_policy": 53, "t_pipeline": 52, "t_strip": 52,
    "t_spoolctl": 48, "t_faults": 46, "t_install": 45, "t_chaos": 44, "t_deploy": 41,
    "t_differential": 40, "t_pool": 38, "t_privsep_scanner": 37, "t_lmtp": 36,
    "t_farm_load": 33, "t_fixtures": 26, "t_privsep_root": 26, "t_lmtp_postfix": 24,
    "t_postfix": 24, "t_limits": 22,
}


def out(line):
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()


def _match(pattern, name):
    return pattern in name or fnmatch.fnmatchcase(name, pattern)


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Totals:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures = []  # (program, line)
        self.skips = []     # (program, reason)


class Job:
    """One test program: started in its own process group, read without blocking, timed
    out on its own. With output=None its lines are echoed as they arrive; else they are
    kept and printed as one block when it ends, so that programs run side by side do not
    mix their lines."""

    def __init__(self, name, argv, env, cwd, timeout, totals, buffered):
        self.name, self.env, self.timeout, self.totals = name, env, timeout, totals
        self.lines = [] if buffered else None
        self.results = self.fails = 0
        self.timed_out = False
        self.term_at = self.kill_at = self.exited_at = None
        self.buf = b""
        self.done = False
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.emit("=== %s" % name)
        try:
            self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        except OSError as e:
            self.p = None
            self.fail_line("FAIL %s: cannot run: %s" % (name, e))
            self.flush()
            self.done = True
            return
        self.fd = self.p.stdout.fileno()
        os.set_blocking(self.fd, False)

    def emit(self, line):
        if self.lines is None:
            out(line)
        else:
            self.lines.append(line)

    def flush(self):
        for line in self.lines or ():
            out(line)
        self.lines = [] if self.lines is not None else None

    def fail_line(self, line):
        self.emit(line)
        self.totals.failed += 1
        self.totals.failures.append((self.name, line))

    def handle(self, raw):
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.emit(text)
        m = RESULT.match(raw.rstrip(b"\r"))
        if not m:
            return
        self.results += 1
        kind = m.group(1)
        if kind == b"PASS":
            self.totals.passed += 1
        elif kind == b"SKIP":
            self.totals.skipped += 1
            reason = text.split(": ", 1)[1] if ": " in text else "no reason given"
            self.totals.skips.append((self.name, reason))
        else:
            self.totals.failed += 1
            self.fails += 1
            self.totals.failures.append((self.name, text))

    def tick(self, now):
        """Exit, time-out and kill bookkeeping; True when reading should stop."""
        if self.exited_at is None and self.p.poll() is not None:
            self.exited_at = now
            # Anything the program left running in its group must not hold our pipe.
            _killpg(self.p.pid, signal.SIGKILL)
        if self.exited_at is not None and now - self.exited_at > DRAIN_AFTER_EXIT:
            return True
        if self.exited_at is None and not self.timed_out and now >= self.deadline:
            self.timed_out = True
            _killpg(self.p.pid, signal.SIGTERM)
            self.term_at = now
        if self.term_at is not None and self.kill_at is None and now - self.term_at >= KILL_GRACE:
            _killpg(self.p.pid, signal.SIGKILL)
            self.kill_at = now
        return False

    def read(self):
        """Read what is there; True at end of file."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.handle(line)
        return False

    def finish(self):
        if self.buf:
            self.handle(self.buf)
        p = self.p
        try:
            p.wait(timeout=KILL_GRACE * 2)
        except subprocess.TimeoutExpired:
            _killpg(p.pid, signal.SIGKILL)
            p.wait()
        _killpg(p.pid, signal.SIGKILL)
        p.stdout.close()
        secs = time.monotonic() - self.start
        rc = p.returncode
        why = None
        if self.timed_out:
            why = "timed out after %ds" % self.timeout
        elif rc != 0 and self.fails == 0:
            why = ("killed by signal %d" % -rc) if rc < 0 else ("exited with status %d" % rc)
            why += " without a FAIL line" if self.results else " without any result"
        elif rc == 0 and self.results == 0 and not self.env.get("TEST_ONLY_FILTERED"):
            why = "printed no PASS/FAIL/SKIP line"
        if why:
            self.fail_line("FAIL %s: %s" % (self.name, why))
        self.emit("=== %s: %s in %.1fs" % (self.name, "exit %d" % rc if rc >= 0 else
                                           "signal %d" % -rc, secs))
        self.flush()
        self.done = True


def run_programs(programs, cwd, timeout, totals, jobs):
    """Run (name, argv, env, alone) programs, at most jobs at once; a program marked alone
    runs with no other. Programs start in the order given."""
    queue = list(programs)
    running = []
    buffered = jobs > 1
    while queue or running:
        # Start what may start: an alone program waits until nothing runs, and nothing
        # starts beside it.
        while queue and len(running) < jobs and not any(j.alone for j in running):
            # The same file of another build beside itself makes both slow when it is
            # CPU-bound (t_hostile three times at once took 2.8 times as long): take the
            # first program whose file is not running, if there is one.
            busy = {j.name.rsplit("/", 1)[-1] for j in running}
            i = next((k for k, x in enumerate(queue)
                      if not x[3] and x[0].rsplit("/", 1)[-1] not in busy), 0)
            name, argv, env, alone = queue[i]
            if alone and running:
                break
            queue.pop(i)
            j = Job(name, argv, env, cwd, timeout, totals, buffered)
            j.alone = alone
            if not j.done:
                running.append(j)
        if not running:
            continue
        now = time.monotonic()
        for j in list(running):
            if j.tick(now):
                j.finish()
                running.remove(j)
        live = [j for j in running]
        if not live:
            continue
        r, _, _ = select.select([j.fd for j in live], [], [], 0.1)
        for j in live:
            if j.fd in r and j.read():
                j.finish()
                running.remove(j)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, action="append",
                    help="directory with the built programs (repeatable)")
    ap.add_argument("--only", help="PATTERN or FILEPATTERN:TESTPATTERN")
    ap.add_argument("--label", default="", help="name of this run, e.g. asan")
    ap.add_argument("--timeout", type=int, default=None,
                    help="seconds per program (default $TEST_TIMEOUT or 600)")
    ap.add_argument("--tests-dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--jobs", "-j", type=int, default=None,
                    help="programs run at once (default $TEST_JOBS or 1)")
    ap.add_argument("--separated", default="",
                    help="test files to run again with every stage as its own user")
    ap.add_argument("--sync-files", default="",
                    help="test files to run again against the last --bin with every spool "
                         "making its steps durable per file (spool_sync = \"files\")")
    a = ap.parse_args(argv)

    tests_dir = os.path.abspath(a.tests_dir)
    root = os.path.dirname(tests_dir)
    timeout = a.timeout or int(os.environ.get("TEST_TIMEOUT") or 600)
    file_pat, test_pat = a.only, None
    if a.only and ":" in a.only:
        file_pat, test_pat = a.only.split(":", 1)
        file_pat = file_pat or None

    totals = Totals()
    bins = [os.path.abspath(b) for b in a.bin]
    programs = []
    for bindir in bins:
        label = a.label
        if len(bins) > 1:
            build = os.path.basename(os.path.dirname(bindir)) or bindir
            label = "%s-%s" % (a.label, build) if a.label else build
        programs += suite_programs(bindir, label, tests_dir, timeout, file_pat, test_pat,
                                   totals)
    if a.separated and not a.only:
        build = os.path.basename(os.path.dirname(bins[0])) or "bin"
        label = "%s-separated" % build
        if os.geteuid() != 0:
            line = "SKIP %s: the separated pass needs root (stages as users of their own)" % label
            out(line)
            totals.skipped += 1
            totals.skips.append((label, "the separated pass needs root"))
        else:
            programs += suite_programs(bins[0], label, tests_dir, timeout, a.separated, None,
                                       totals, extra_env={"SPOOLD_TEST_SEPARATED": "1"})
    if a.sync_files and not a.only:
        # The default strategy (auto) syncs per file only while the page cache is full of
        # another writer's data, so the crash tests would seldom see that path: this pass
        # runs them with it forced, against the build that has the crash points.
        build = os.path.basename(os.path.dirname(bins[-1])) or "bin"
        programs += suite_programs(bins[-1], "%s-files" % build, tests_dir, timeout,
                                   a.sync_files, None, totals,
                                   extra_env={"SPOOLD_TEST_SPOOL_SYNC": "files"})
    jobs = a.jobs or int(os.environ.get("TEST_JOBS") or 1)
    if jobs > 1:
        # The slow programs first, so that the last to end is a short one; the order
        # within each weight stays the name order (sort is stable).
        # The programs that run alone come last, together, so that the pool is not
        # drained for each of them.
        programs.sort(key=lambda x: (x[3], -SLOW.get(x[0].rsplit("/", 1)[-1], 0)))
        out("=== %d program(s), %d at a time (programs marked alone run by themselves)"
            % (len(programs), jobs))
    run_programs(programs, root, timeout, totals, jobs)

    if totals.skips:
        # What was not run, and why, said once per reason: a skip must never pass unseen.
        by_reason = {}
        for name, reason in totals.skips:
            by_reason.setdefault(reason, []).append(name)
        out("")
        out("=== skipped, by reason:")
        for reason, names in sorted(by_reason.items(), key=lambda x: (-len(x[1]), x[0])):
            progs = sorted(set(names))
            out("  %d x %s (%s)" % (len(names), reason, ", ".join(progs)))
    if totals.failures:
        out("")
        out("=== failures:")
        for name, line in totals.failures:
            out("  [%s] %s" % (name, line))
    out("%d passed, %d failed, %d skipped" % (totals.passed, totals.failed, totals.skipped))
    return 1 if totals.failed else 0


def suite_programs(bindir, label, tests_dir, timeout, file_pat, test_pat, totals,
                   extra_env=None):
    """The (name, argv, env, alone) of every program of one pass."""
    env = dict(os.environ)
    env.update(extra_env or {})
    env["TEST_BIN"] = bindir
    env["TEST_LABEL"] = label
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TEST_ONLY_FILTERED", None)

    programs = []  # (name, argv, env)
    unit_dir = os.path.join(os.path.dirname(bindir), "tests")
    if os.path.isdir(unit_dir):
        for f in sorted(os.listdir(unit_dir)):
            path = os.path.join(unit_dir, f)
            if f.startswith("unit_") and os.path.isfile(path) and os.access(path, os.X_OK):
                programs.append((f, [path], env))
    for f in sorted(os.listdir(tests_dir)):
        if f.startswith("t_") and f.endswith(".py"):
            argv = [sys.executable, os.path.join(tests_dir, f), "--bin", bindir]
            penv = env
            if test_pat:
                argv += ["--only", test_pat]
                penv = dict(env, TEST_ONLY_FILTERED="1")
            programs.append((f[:-3], argv, penv))
    if file_pat:
        pats = file_pat.split(",")
        if extra_env:  # the separated and files passes: exactly the files named
            programs = [x for x in programs if x[0] in pats]
        else:
            programs = [x for x in programs if any(_match(p, x[0]) for p in pats)]

    prefix = (label + "/") if label else ""
    out("=== %srunning %d test program(s), bin %s, timeout %ds"
        % ((label + ": ") if label else "", len(programs), bindir, timeout))
    if not programs:
        line = "FAIL run.py: no test program matches in %s" % bindir
        out(line)
        totals.failed += 1
        totals.failures.append((prefix + "run.py", line))
    return [(prefix + name, argv, penv, name in ALONE) for name, argv, penv in programs]


if __name__ == "__main__":
    sys.exit(main())
