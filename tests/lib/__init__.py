"""Tiny test harness for tests/t_*.py files (stdlib only).

A test file looks like this:

    #!/usr/bin/env python3
    import lib as harness
    from lib import test, skip, wait_for

    @test
    def spool_dirs_created():
        d = harness.tmpdir("spool")
        ...
        assert os.path.isdir(d), "spool not created"

    if __name__ == "__main__":
        harness.main()

Run as `python3 tests/t_x.py --bin DIR [--only PATTERN]`. Each registered test prints
exactly one result line on stdout:

    PASS name
    FAIL name: why
    SKIP name: why

Lines that do not start with PASS/FAIL/SKIP (details, tracebacks) are indented by four
spaces. The exit status is 1 if any test failed, else 0.

Module attributes (read them as `harness.X` at run time, not with `from lib import X`,
because main() sets some of them):
    BIN      the --bin directory (absolute), also exported as $TEST_BIN; None before main()
             unless $TEST_BIN was already set
    ROOT     the repository root
    TESTS    the tests/ directory
    FAKE     the tests/fake/ directory (fake scanners)
    LABEL    $TEST_LABEL or "" (e.g. "asan" when run.py --label asan)
"""

import fnmatch
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

__all__ = ["test", "skip", "Skip", "main", "check_after", "mount_tmpfs", "wait_for", "tmpdir", "sigdir", "cleanup",
           "bin_path", "run", "BIN", "ROOT", "TESTS", "FAKE"]

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)


def production_sources(exts=(".c",)):
    """The production sources, relative to the checkout: the files of lib/ and of every
    program folder named by the Makefile's PROGS line whose names end in one of exts;
    never tests/ or bench/. t_format measures them, t_names reads their literals."""
    progs = []
    with open(os.path.join(ROOT, "Makefile")) as f:
        for line in f:
            if line.startswith("PROGS") and "=" in line:
                progs = line.split("=", 1)[1].split()
                break
    assert progs, "Makefile: no PROGS line"
    paths = []
    for folder in ["lib"] + progs:
        d = os.path.join(ROOT, folder)
        assert os.path.isdir(d), "%s: program folder missing" % folder
        for name in sorted(os.listdir(d)):
            if name.endswith(tuple(exts)):
                paths.append(folder + "/" + name)
    return paths
FAKE = os.path.join(TESTS, "fake")
BIN = os.path.abspath(os.environ["TEST_BIN"]) if os.environ.get("TEST_BIN") else None
LABEL = os.environ.get("TEST_LABEL", "")

# Per-test wall-clock limit (seconds), so that one hung test fails alone and the rest
# of the file still runs; run.py's per-file timeout is the outer bound.
CASE_TIMEOUT = int(os.environ.get("TEST_CASE_TIMEOUT", "300"))


# A case that takes at least this long (seconds) says so in a detail line.
SLOW_CASE = float(os.environ.get("TEST_SLOW_CASE", "10"))


class Skip(Exception):
    """Raised by skip(); the test is reported as SKIP."""


class CaseTimeout(Exception):
    """Raised (from SIGALRM) in a test that ran longer than its time limit."""


_tests = []        # [(name, fn, timeout)]
_cleanups = []     # callables to run after the current test, last first
_checks = []       # callables to run after the current test body returned, in order
_tmp_base = None
_sigdir = None


def test(fn=None, *, name=None, timeout=None):
    """Register a test. Use as @test, or @test(name="x", timeout=60)."""
    def register(f):
        _tests.append((name or f.__name__, f, timeout))
        return f
    if fn is not None:
        return register(fn)
    return register


def skip(reason):
    """Stop the current test and report it as SKIP with reason."""
    raise Skip(reason)


def cleanup(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) after the current test, whether it passed or not, e.g.
    `d = Clamd(...); cleanup(d.stop)`. Cleanups run last-registered first; their
    exceptions are printed as detail lines, not raised. Returns fn."""
    _cleanups.append((fn, args, kwargs))
    return fn


def mount_tmpfs(size):
    """A fresh directory with a small tmpfs of size (e.g. "24m") mounted on it, unmounted
    after the test: for tests that fill a filesystem. Needs root; skips, saying why, when
    it cannot mount."""
    if os.geteuid() != 0:
        skip("needs root to mount a small tmpfs")
    d = tmpdir("small")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", d],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        skip("cannot mount tmpfs: %s" % r.stdout.decode().strip())
    if not os.environ.get("TEST_KEEP_TMP"):
        cleanup(lambda: subprocess.run(["umount", "-l", d]))
    return d


def check_after(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) when the current test body has returned without failing,
    before the cleanups and within the test's time limit; an exception it raises fails
    the test. Used for invariants every test of a kind must keep (Pipeline's delivery
    check). Returns fn."""
    _checks.append((fn, args, kwargs))
    return fn


def wait_for(pred, timeout=10, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value, and return that value.
    Raises AssertionError("timed out after Ns waiting for WHAT") when timeout passes.
    Exceptions raised by pred propagate."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(interval)


def _base():
    global _tmp_base
    if _tmp_base is None:
        _tmp_base = tempfile.mkdtemp(prefix="spoold-test-")
    return _tmp_base


def tmpdir(name="tmp"):
    """A fresh empty directory for this process, under one base directory that is
    removed at exit (kept when $TEST_KEEP_TMP is set). Short paths, so unix socket
    paths inside stay below the 107-byte limit."""
    base = _base()
    n = 0
    while True:
        d = os.path.join(base, name if n == 0 else "%s.%d" % (name, n))
        try:
            os.mkdir(d)
        except FileExistsError:
            n += 1
            continue
        if os.environ.get("SPOOLD_TEST_SEPARATED") == "1" and os.geteuid() == 0:
            # The separated pass: stages run as other users, and scanner stand-ins,
            # sinks and Maildirs of a test write into its directories, as in /tmp.
            os.chmod(base, 0o755)
            os.chmod(d, 0o1777)
        return d


def sigdir():
    """The test signature database built by conf/mksigs.sh (once per process):
    a directory with spoold-test.hdb, spoold-test.ndb and eicar.com."""
    global _sigdir
    if _sigdir is None:
        d = os.path.join(_base(), "sigs")
        r = subprocess.run([os.path.join(ROOT, "conf", "mksigs.sh"), d],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
            raise AssertionError("conf/mksigs.sh failed (exit %d): %s"
                                 % (r.returncode, r.stdout.decode(errors="replace").strip()))
        _sigdir = d
    return _sigdir


def bin_path(name):
    """Path of a built program in the --bin directory; SKIP if --bin was not given."""
    if not BIN:
        skip("no --bin directory given")
    return os.path.join(BIN, name)


def run(argv, timeout=60, check=False, **kw):
    """subprocess.run with captured, merged output and a timeout; returns the
    CompletedProcess with .out as str. check=True raises AssertionError on non-zero exit."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(argv, timeout=timeout, **kw)
    r.out = (r.stdout or b"").decode(errors="replace") if isinstance(r.stdout, bytes) else (r.stdout or "")
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d: %s" % (" ".join(map(str, argv)), r.returncode, r.out.strip()[-2000:]))
    return r


def _one_line(s):
    s = " | ".join(x.strip() for x in str(s).strip().splitlines() if x.strip())
    return s if len(s) <= 1000 else s[:1000] + "..."


def _where(tb):
    """file:line of the innermost frame that belongs to a test file (t_*.py), else the
    innermost frame."""
    frames = traceback.extract_tb(tb)
    pick = None
    for f in frames:
        if os.path.basename(f.filename).startswith("t_"):
            pick = f
    if pick is None and frames:
        pick = frames[-1]
    if pick is None:
        return ""
    return "%s:%d" % (os.path.basename(pick.filename), pick.lineno)


def _detail(text):
    for line in text.rstrip().splitlines():
        print("    " + line)


def _alarm(signum, frame):
    raise CaseTimeout()


def _run_cleanups():
    while _cleanups:
        fn, args, kwargs = _cleanups.pop()
        try:
            fn(*args, **kwargs)
        except Exception:
            print("    cleanup %s failed:" % getattr(fn, "__qualname__", fn))
            _detail(traceback.format_exc())


def _run_one(name, fn, timeout):
    limit = timeout or CASE_TIMEOUT
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        try:
            try:
                fn()
            except BaseException:
                _checks.clear()
                raise
            while _checks:
                check, args, kwargs = _checks.pop(0)
                check(*args, **kwargs)
        finally:
            _checks.clear()
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            _run_cleanups()
    except Skip as e:
        return "SKIP", _one_line(e) or "skipped", None
    except CaseTimeout as e:
        where = _where(e.__traceback__)
        msg = "test timed out after %ds" % limit
        return "FAIL", "%s (%s)" % (msg, where) if where else msg, (traceback.format_exc(), False)
    except AssertionError as e:
        msg = _one_line(e) or "assertion failed"
        where = _where(e.__traceback__)
        return "FAIL", "%s (%s)" % (msg, where) if where else msg, (traceback.format_exc(), False)
    except Exception as e:
        where = _where(e.__traceback__)
        msg = "%s: %s" % (type(e).__name__, _one_line(e))
        return "FAIL", "%s (%s)" % (msg, where) if where else msg, (traceback.format_exc(), True)
    return "PASS", None, None


def _match(pattern, name):
    return pattern in name or fnmatch.fnmatchcase(name, pattern)


def main(argv=None, prod_only=None):
    """Parse --bin DIR [--only PATTERN] [--list], run the registered tests in order,
    print one result line per test, exit 1 if any failed. prod_only: a reason; with the
    ASan build ($TEST_LABEL ending in "asan") every test is then a SKIP with that reason
    (t_fleet_load: its load and latency figures mean something only for the production
    build, and t_fleet runs the same code under ASan)."""
    global BIN
    import argparse
    p = argparse.ArgumentParser(description="run the tests of this file")
    p.add_argument("--bin", help="directory with the built programs")
    p.add_argument("--only", help="run only tests whose name contains or glob-matches PATTERN")
    p.add_argument("--list", action="store_true", help="list test names and exit")
    a = p.parse_args(argv)
    if a.bin:
        BIN = os.path.abspath(a.bin)
        os.environ["TEST_BIN"] = BIN
    if a.list:
        for name, _, _ in _tests:
            print(name)
        sys.exit(0)

    failed = 0
    try:
        for name, fn, timeout in _tests:
            if a.only and not _match(a.only, name):
                continue
            started = time.monotonic()
            if prod_only and LABEL.endswith("asan"):
                status, why, tb = "SKIP", prod_only, None
            else:
                status, why, tb = _run_one(name, fn, timeout)
            took = time.monotonic() - started
            if took >= SLOW_CASE:
                # Where a file's time goes, in every log: make test must stay well
                # inside CI's time limit, and the slow cases are where to look.
                _detail("%s took %.1fs" % (name, took))
            if status == "PASS":
                print("PASS %s" % name)
            else:
                print("%s %s: %s" % (status, name, why))
                if status == "FAIL":
                    failed += 1
                    # AssertionError and timeouts: the location is in the FAIL line,
                    # the whole traceback only with $TEST_VERBOSE. Other errors: always.
                    if tb and (tb[1] or os.environ.get("TEST_VERBOSE")):
                        _detail(tb[0])
            sys.stdout.flush()
    finally:
        if _tmp_base and not os.environ.get("TEST_KEEP_TMP"):
            shutil.rmtree(_tmp_base, ignore_errors=True)
        elif _tmp_base:
            print("    kept temporary files in %s" % _tmp_base)
        sys.stdout.flush()
    sys.exit(1 if failed else 0)
