#!/usr/bin/env python3
"""make run in both modes (issue 15): as a plain user every program runs as that user; as
root the stages run separated, each as a user of dist/spoold.sysusers (made by conf/run.sh
if missing). make run is `deps all` and then conf/run.sh; the test runs conf/run.sh in a
copy of the tree's run-time files (bin/, conf/, dist/, build/sigs), reachable by other
users, and sends mail through it."""
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, skip, wait_for  # noqa: E402
from lib import msgs  # noqa: E402


def _tree(owner=None):
    """A copy of what conf/run.sh needs, in a directory every user may enter."""
    top = harness.tmpdir("tree")
    for d in (harness._base(), top):
        os.chmod(d, 0o755)
    src_bin = harness.BIN
    shutil.copytree(src_bin, os.path.join(top, "bin"))
    for d in ("conf", "dist"):
        shutil.copytree(os.path.join(harness.ROOT, d), os.path.join(top, d))
    shutil.copytree(harness.sigdir(), os.path.join(top, "build", "sigs"))
    for root, dirs, files in os.walk(top):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
        for n in files:
            p = os.path.join(root, n)
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
        if owner:
            os.chown(root, owner.pw_uid, owner.pw_gid)
            for n in files:
                os.chown(os.path.join(root, n), owner.pw_uid, owner.pw_gid)
    return top


def _run(top, preexec=None):
    log = open(os.path.join(top, "run.log"), "wb")
    proc = subprocess.Popen(["sh", os.path.join(top, "conf", "run.sh")], cwd=top,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                            start_new_session=True)

    def stop():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    harness.cleanup(stop)
    return proc, stop


def _logtext(top):
    with open(os.path.join(top, "run.log"), errors="replace") as f:
        return f.read()


def _stage_uids(top):
    """{program: uid} of the processes run from this tree's bin/ (spoold: the first one;
    the others of that name are its keepers)."""
    out = {}
    for d in sorted((d for d in os.listdir("/proc") if d.isdigit()), key=int):
        try:
            exe = os.readlink("/proc/%s/exe" % d)
            st = os.stat("/proc/" + d)
        except OSError:
            continue
        if exe.startswith(os.path.join(top, "bin") + "/"):
            out.setdefault(os.path.basename(exe), st.st_uid)
    return out


def _mail_through(top):
    """A clean message and an EICAR one, dropped in spool/inbound: one in the smtp outbox,
    one in quarantine."""
    spool = os.path.join(top, "spool")
    wait_for(lambda: os.path.exists(os.path.join(spool, "run", "status")), timeout=60,
             what="the pipeline up\n" + _logtext(top)[-2000:])
    for name, data in (("clean", msgs.clean()), ("virus", msgs.eicar_attachment())):
        tmp = os.path.join(spool, "inbound", "." + name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.rename(tmp, os.path.join(spool, "inbound", name))

    def done():
        ob = os.path.join(spool, "outbox", "smtp")
        n_out = len(os.listdir(ob)) if os.path.isdir(ob) else 0
        n_q = len(os.listdir(os.path.join(spool, "quarantine")))
        return n_out == 1 and n_q == 1
    wait_for(done, timeout=90, what="one in the outbox, one quarantined\n" + _logtext(top)[-3000:])


@test
def make_run_as_root_runs_the_stages_separated():
    if os.geteuid() != 0:
        skip("needs root: make run separates the stages only when started as root")
    top = _tree()
    proc, stop = _run(top)
    try:
        _mail_through(top)
    except AssertionError:
        subprocess.run(["sh", "-c", "cp %s/run.log /tmp/makerun-root.log" % top])
        raise
    uids = _stage_uids(top)
    want = {"splitter": "spoold-split", "scanner-runner": "spoold-scan", "router": "spoold-route",
            "spoold": "spoold"}
    for prog, user in want.items():
        assert uids.get(prog) == pwd.getpwnam(user).pw_uid, (prog, uids, _logtext(top)[-2000:])
    assert "stages separated" in _logtext(top), _logtext(top)[-2000:]
    stop()


@test
def make_run_as_a_plain_user_runs_everything_as_that_user():
    if os.geteuid() != 0:
        # Already a plain user: the tree is ours.
        top = _tree()
        proc, stop = _run(top)
        me = os.geteuid()
    else:
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            skip("no user nobody")
        top = _tree(owner=user)

        def become():
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        proc, stop = _run(top, preexec=become)
        me = user.pw_uid
    _mail_through(top)
    uids = _stage_uids(top)
    for prog in ("spoold", "splitter", "scanner-runner", "router"):
        assert uids.get(prog) == me, (prog, uids, _logtext(top)[-2000:])
    stop()


if __name__ == "__main__":
    harness.main()
