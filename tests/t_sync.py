#!/usr/bin/env python3
"""The sync strategies (spool_sync, docs/INTERNALS.md "Durability"): each one carries mail
end to end, a SIGKILL of everything mid-run loses and duplicates nothing, and each really
makes the system calls it claims (strace): "files" fdatasyncs and never calls syncfs,
"syncfs" calls syncfs, "auto" goes per file while much of the page cache is dirty."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline  # noqa: E402

STRATEGIES = ("syncfs", "files", "auto")
AUTO_DIRTY_KB = 64 * 1024  # lib/spool_sync.c SPOOL_SYNC_AUTO_DIRTY_KB


def pipeline(strategy, **kw):
    return Pipeline(extra='spool_sync = "%s";\n' % strategy, **kw)


def drop_clean(p, tag, n):
    """Drop n distinct clean messages, each to its own recipient; returns them."""
    sent = [msgs.clean(subject="%s %d" % (tag, i), to=["u%d@example.org" % i]) for i in range(n)]
    for i, m in enumerate(sent):
        p.drop("m%d" % i, m)
    return sent


def end_to_end(strategy):
    p = pipeline(strategy).start()
    sent = drop_clean(p, "sync " + strategy, 8)
    p.drop("virus", msgs.eicar_attachment())
    finals = p.wait_final(len(sent) + 1)
    places = sorted(f[0] for f in finals)
    assert places == ["outbox/smtp"] * len(sent) + ["quarantine"], places
    p.check_invariant(sent)


@test
def syncfs_carries_mail_end_to_end():
    end_to_end("syncfs")


@test
def files_carries_mail_end_to_end():
    end_to_end("files")


@test
def auto_carries_mail_end_to_end():
    end_to_end("auto")


def kill_all(p):
    """SIGKILL spoold and every stage it started: a crash of the whole pipeline."""
    pids = p.pids_using_conf()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.proc.wait()
    harness.wait_for(lambda: not p.pids_using_conf(), timeout=10, what="the killed stages to go")
    return len(pids)


def killed_mid_run(strategy):
    p = pipeline(strategy).start()
    sent = drop_clean(p, "kill " + strategy, 30)
    # Kill once some mail is through and some is not: the commits of both kinds are cut.
    harness.wait_for(lambda: len(p.finals()) >= 3, timeout=60, what="the first deliveries")
    n = kill_all(p)
    assert n >= 4, "expected spoold and its stages to be running, killed %d" % n
    p.start_again()
    p.wait_final(len(sent), timeout=120)
    p.check_invariant(sent)
    assert sorted(f[0] for f in p.finals()) == ["outbox/smtp"] * len(sent), p.finals()


@test
def syncfs_survives_kill_9_mid_run():
    killed_mid_run("syncfs")


@test
def files_survives_kill_9_mid_run():
    killed_mid_run("files")


def strace_calls(p, stage):
    """Run one pass of stage under strace; {syscall: count} of the sync calls it made."""
    out = os.path.join(p.dir, "strace.%s" % stage)
    argv = ["strace", "-qq", "-o", out, "-e", "trace=syncfs,fdatasync,fsync",
            harness.bin_path(stage), "-c", p.conf, "--once"]
    # LeakSanitizer cannot run under ptrace: without this the ASan build exits 1 at the
    # end of every traced pass. The leak check runs in every other test.
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ":".join(x for x in (env.get("ASAN_OPTIONS"), "detect_leaks=0") if x)
    kw = {"env": env}
    if p.separated:
        from lib import privsep
        prefix, umask = privsep.become_stage(stage)
        argv = argv[:6] + prefix + argv[6:]
        kw["preexec_fn"] = umask
    r = harness.run(argv, timeout=120, **kw)
    assert r.returncode == 0, "%s under strace exited %d: %s" % (stage, r.returncode, r.out[-1500:])
    calls = {}
    with open(out) as f:
        for line in f:
            name = line.split("(", 1)[0].strip()
            if name in ("syncfs", "fdatasync", "fsync") and "= -1" not in line:
                calls[name] = calls.get(name, 0) + 1
    return calls


def traced_pass(strategy, before=None, n=1):
    """n messages through splitter, scanner-runner and router, each a traced --once pass;
    returns {stage: calls} and checks the messages reached the outbox."""
    p = pipeline(strategy)
    for i in range(n):
        p.drop("m%d" % i, msgs.clean(subject="traced %s %d" % (strategy, i)))
    res = {}
    for s in ("splitter", "scanner-runner", "router"):
        if before:
            before()
        res[s] = strace_calls(p, s)
    assert [f[0] for f in p.finals()] == ["outbox/smtp"] * n, p.finals()
    return res


def which_strace():
    if subprocess.run(["sh", "-c", "command -v strace"], stdout=subprocess.DEVNULL).returncode:
        raise AssertionError("strace is not installed (conf/deps.sh --test installs it)")


@test
def files_fdatasyncs_and_never_calls_syncfs():
    which_strace()
    for stage, calls in traced_pass("files").items():
        assert calls.get("syncfs", 0) == 0, \
            "%s called syncfs with spool_sync files: %s" % (stage, calls)
        assert calls.get("fdatasync", 0) >= 1, "%s made no fdatasync: %s" % (stage, calls)


@test
def syncfs_calls_syncfs_and_no_fdatasync():
    which_strace()
    for stage, calls in traced_pass("syncfs").items():
        assert calls.get("syncfs", 0) >= 1, "%s never called syncfs: %s" % (stage, calls)
        assert calls.get("fdatasync", 0) == 0, "%s fdatasynced with syncfs: %s" % (stage, calls)


def dirty_kb():
    with open("/proc/meminfo") as f:
        v = {l.split(":")[0]: int(l.split()[1]) for l in f if l.rstrip().endswith("kB")}
    return v["Dirty"] + v["Writeback"]


WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
blk = os.urandom(1 << 20)
n = 0
while True:
    os.pwrite(fd, blk, (n % 256) << 20)
    n += 1
    if n % 64 == 0:
        time.sleep(0.005)
"""


@test
def auto_syncs_per_file_under_a_foreign_writer():
    """With another writer keeping hundreds of MB dirty, auto syncs per file: it would
    otherwise wait for the other writer's data. Every stage must make fdatasyncs, which
    syncfs never does (above). A syncfs now and then is allowed: other programs' syncfs
    calls on the same filesystem can empty the page cache for a moment, so each stage
    gets several messages (the splitter syncs once per message)."""
    which_strace()
    big = os.path.join(harness.tmpdir("foreign"), "big")
    w = subprocess.Popen([sys.executable, "-c", WRITER, big])
    harness.cleanup(lambda: os.path.exists(big) and os.unlink(big))
    harness.cleanup(lambda: (w.kill(), w.wait()))
    harness.wait_for(lambda: dirty_kb() > 2 * AUTO_DIRTY_KB, timeout=30,
                     what="the writer to dirty %d kB" % (2 * AUTO_DIRTY_KB))
    seen = []
    for stage, calls in traced_pass("auto", lambda: seen.append(dirty_kb()), n=5).items():
        assert calls.get("fdatasync", 0) >= 1, \
            "%s made no fdatasync with %s kB dirty: %s" % (stage, seen, calls)


if __name__ == "__main__":
    harness.main()
