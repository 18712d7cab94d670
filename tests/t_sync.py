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
AUTO_DIRTY_KB = 8192  # lib/spool_sync.c SPOOL_SYNC_AUTO_DIRTY_KB


def pipeline(strategy, **kw):
    return Pipeline(extra='spool_sync = "%s";\n' % strategy, **kw)


def end_to_end(strategy):
    p = pipeline(strategy).start()
    sent = [msgs.clean(subject="sync %s %d" % (strategy, i), to=["u%d@example.org" % i])
            for i in range(8)]
    for i, m in enumerate(sent):
        p.drop("m%d" % i, m)
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
    sent = [msgs.clean(subject="kill %s %d" % (strategy, i), to=["u%d@example.org" % i])
            for i in range(30)]
    for i, m in enumerate(sent):
        p.drop("m%d" % i, m)
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
    kw = {}
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


def traced_pass(strategy, before=None):
    """One message through splitter, scanner-runner and router, each a traced --once pass;
    returns {stage: calls} and checks the message reached the outbox."""
    p = pipeline(strategy)
    p.drop("m", msgs.clean(subject="traced %s" % strategy))
    res = {}
    for s in ("splitter", "scanner-runner", "router"):
        if before:
            before()
        res[s] = strace_calls(p, s)
    assert [f[0] for f in p.finals()] == ["outbox/smtp"], p.finals()
    return res


def which_strace():
    if subprocess.run(["sh", "-c", "command -v strace"], stdout=subprocess.DEVNULL).returncode:
        raise AssertionError("strace is not installed (conf/deps.sh --test installs it)")


@test
def files_fdatasyncs_and_never_calls_syncfs():
    which_strace()
    for stage, calls in traced_pass("files").items():
        assert calls.get("syncfs", 0) == 0, "%s called syncfs with spool_sync files: %s" % (stage, calls)
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


@test
def auto_syncs_per_file_under_a_foreign_writer():
    """With another writer's pages dirty on the machine, auto must not syncfs: that would
    write the other writer's data before the mail's."""
    which_strace()
    big = os.path.join(harness.tmpdir("foreign"), "big")
    fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    harness.cleanup(os.unlink, big)
    harness.cleanup(os.close, fd)
    blk = os.urandom(1 << 20)
    seen = []

    def dirty_more():
        # Keep pages dirty before each stage's pass (a stage's own files may be few).
        for i in range(64):
            os.pwrite(fd, blk, i << 20)
        seen.append(dirty_kb())

    for stage, calls in traced_pass("auto", before=dirty_more).items():
        assert calls.get("syncfs", 0) == 0, \
            "%s called syncfs with %s kB dirty: %s" % (stage, seen, calls)
        assert calls.get("fdatasync", 0) >= 1, "%s made no fdatasync: %s" % (stage, calls)
    assert min(seen) > AUTO_DIRTY_KB, "the writer did not dirty enough pages: %s kB" % seen


if __name__ == "__main__":
    harness.main()
