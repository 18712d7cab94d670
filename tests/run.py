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


def run_program(name, argv, env, cwd, timeout, totals):
    """Run one test program, echo its output, count its results."""
    out("=== %s" % name)
    start = time.monotonic()
    try:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    except OSError as e:
        totals.failed += 1
        totals.failures.append((name, "FAIL %s: cannot run: %s" % (name, e)))
        out("FAIL %s: cannot run: %s" % (name, e))
        return
    pgid = p.pid
    fd = p.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = start + timeout
    term_at = kill_at = None
    exited_at = None
    buf = b""
    results = fails = 0
    timed_out = False
    eof = False

    def handle(raw):
        nonlocal results, fails
        text = raw.decode("utf-8", "replace").rstrip("\r")
        out(text)
        m = RESULT.match(raw.rstrip(b"\r"))
        if not m:
            return
        results += 1
        kind = m.group(1)
        if kind == b"PASS":
            totals.passed += 1
        elif kind == b"SKIP":
            totals.skipped += 1
            reason = text.split(": ", 1)[1] if ": " in text else "no reason given"
            totals.skips.append((name, reason))
        else:
            totals.failed += 1
            fails += 1
            totals.failures.append((name, text))

    while not eof:
        now = time.monotonic()
        if exited_at is None and p.poll() is not None:
            exited_at = now
            # Anything the program left running in its group must not hold our pipe.
            _killpg(pgid, signal.SIGKILL)
        if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
            break
        if exited_at is None and not timed_out and now >= deadline:
            timed_out = True
            _killpg(pgid, signal.SIGTERM)
            term_at = now
        if term_at is not None and kill_at is None and now - term_at >= KILL_GRACE:
            _killpg(pgid, signal.SIGKILL)
            kill_at = now
        r, _, _ = select.select([fd], [], [], 0.1)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            eof = True
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            handle(line)
    if buf:
        handle(buf)
    try:
        p.wait(timeout=KILL_GRACE * 2)
    except subprocess.TimeoutExpired:
        _killpg(pgid, signal.SIGKILL)
        p.wait()
    _killpg(pgid, signal.SIGKILL)
    p.stdout.close()
    secs = time.monotonic() - start

    rc = p.returncode
    why = None
    if timed_out:
        why = "timed out after %ds" % timeout
    elif rc != 0 and fails == 0:
        why = ("killed by signal %d" % -rc) if rc < 0 else ("exited with status %d" % rc)
        why += " without a FAIL line" if results else " without any result"
    elif rc == 0 and results == 0 and not env.get("TEST_ONLY_FILTERED"):
        why = "printed no PASS/FAIL/SKIP line"
    if why:
        line = "FAIL %s: %s" % (name, why)
        out(line)
        totals.failed += 1
        totals.failures.append((name, line))
    out("=== %s: %s in %.1fs" % (name, "exit %d" % rc if rc >= 0 else "signal %d" % -rc, secs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, action="append",
                    help="directory with the built programs (repeatable)")
    ap.add_argument("--only", help="PATTERN or FILEPATTERN:TESTPATTERN")
    ap.add_argument("--label", default="", help="name of this run, e.g. asan")
    ap.add_argument("--timeout", type=int, default=None,
                    help="seconds per program (default $TEST_TIMEOUT or 600)")
    ap.add_argument("--tests-dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--separated", default="",
                    help="test files to run again with every stage as its own user")
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
    for bindir in bins:
        label = a.label
        if len(bins) > 1:
            build = os.path.basename(os.path.dirname(bindir)) or bindir
            label = "%s-%s" % (a.label, build) if a.label else build
        run_suite(bindir, label, tests_dir, root, timeout, file_pat, test_pat, totals)
    if a.separated and not a.only:
        build = os.path.basename(os.path.dirname(bins[0])) or "bin"
        label = "%s-separated" % build
        if os.geteuid() != 0:
            line = "SKIP %s: the separated pass needs root (stages as users of their own)" % label
            out(line)
            totals.skipped += 1
            totals.skips.append((label, "the separated pass needs root"))
        else:
            run_suite(bins[0], label, tests_dir, root, timeout, a.separated, None, totals,
                      extra_env={"SPOOLD_TEST_SEPARATED": "1"})

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


def run_suite(bindir, label, tests_dir, root, timeout, file_pat, test_pat, totals,
              extra_env=None):
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
        if extra_env:  # the separated pass: exactly the files named
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
    for name, argv, penv in programs:
        run_program(prefix + name, argv, penv, root, timeout, totals)


if __name__ == "__main__":
    sys.exit(main())
