#!/usr/bin/env python3
"""Privilege separation, one user per stage (issue 15): spoold starts as root, each stage
runs as its own user through a keeper, and a stage trusts a file only when the user of
the stage that writes it owns it. The compromised-stage tests act as one stage's user
(a child process that setuid()s to it) and try to get mail out by forging another
stage's files: every attempt ends held or out of an outbox, never delivered.

Needs root (spoold must start as root to switch users); the throwaway users are made
with useradd once and kept (names spt-*)."""
import os
import pwd
import grp
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, skip, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402
from lib import privsep  # noqa: E402
from lib.privsep import ROLES, SPOOL_USER  # noqa: E402

def _need_root():
    if os.geteuid() != 0:
        skip("needs root: spoold must start as root to run each stage as its own user")


def separated(extra="", without=(), **kw):
    """A pipeline whose spoold starts as root and runs each stage as its own user (the
    roles in without as the spool's user)."""
    _need_root()
    us = privsep.users()
    text = "".join(l for l in privsep.separated_config().splitlines(True)
                   if l.split(" ", 1)[0] not in without)
    p = Pipeline(extra=text + extra, **kw)
    privsep.open_paths(p.dir, p.conf)
    return p, us


def _stage_pids(p):
    """{stage name: [pid]} of the stages spoold runs, from /proc."""
    out = {}
    for pid in p.pids_using_conf():
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if pid != p.proc.pid:
            out.setdefault(os.path.basename(argv0.decode()), []).append(pid)
    return out


def _ids(pid):
    """(real, effective, saved, fs) uids and the same gids, and the groups, of pid."""
    ids = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid"):
                ids[k] = tuple(int(x) for x in v.split())
            elif k == "Groups":
                ids[k] = sorted(int(x) for x in v.split())
            elif k in ("CapEff", "CapPrm", "CapAmb"):
                ids[k] = int(v, 16)
    return ids


CAP_LEASE = 1 << 28

STAGE_ROLE = {"splitter": "splitter_user", "scanner-runner": "runner_user",
              "router": "router_user", "connector-maildir": "connector_user"}


def _maildir_pipeline(**kw):
    """separated(), with the bundled Maildir connector, so that every stage runs."""
    md = harness.tmpdir("maildir")
    os.chmod(md, 0o755)
    p, users = separated(connectors=[dict(name="local", type="maildir", domains=["*"],
                                          maildir=os.path.join(md, "Maildir"))], **kw)
    os.chown(md, users["connector_user"].pw_uid, users["connector_user"].pw_gid)
    return p, users, os.path.join(md, "Maildir")


def _maildir_messages(md):
    new = os.path.join(md, "new")
    return sorted(os.listdir(new)) if os.path.isdir(new) else []


@test
def each_stage_runs_as_its_own_user_for_good():
    p, users, md = _maildir_pipeline()
    p.start()
    pids = wait_for(lambda: (lambda s: s if all(k in s for k in STAGE_ROLE) else None)(
        _stage_pids(p)), timeout=20, what="every stage running")
    for stage, role in STAGE_ROLE.items():
        u = users[role]
        for pid in pids[stage]:
            ids = _ids(pid)
            # Real, effective, saved and filesystem ids are all the stage's user: no way
            # back to root or to another stage's user.
            assert ids["Uid"] == (u.pw_uid,) * 4, (stage, ids)
            assert ids["Gid"] == (u.pw_gid,) * 4, (stage, ids)
            assert grp.getgrnam(SPOOL_USER).gr_gid in ids["Groups"], (stage, ids)
            # No capability, but CAP_LEASE for the splitter (leases on files other users
            # drop into inbound/; lib/user.h).
            want = CAP_LEASE if stage == "splitter" else 0
            assert (ids["CapEff"], ids["CapPrm"], ids["CapAmb"]) == (want,) * 3, (stage, ids)
    sp = _ids(p.proc.pid)
    assert sp["CapEff"] == sp["CapPrm"] == 0, sp
    assert sp["Uid"] == (users["user"].pw_uid,) * 4, sp
    # Keepers: one process per stage user besides spoold's own, children of spoold.
    p.drop("clean", msgs.clean())
    p.drop("virus", msgs.eicar_attachment())
    wait_for(lambda: len(_maildir_messages(md)) == 1 and
             len(os.listdir(os.path.join(p.spool, "quarantine"))) == 1,
             timeout=60, what="one delivered, one quarantined\n" + p.logtext()[-3000:])
    p.stop()



@test
def a_restarted_spoold_answers_on_its_control_socket():
    # The second start finds the separated spool's run/ set-group-ID (3770): the private
    # directory it binds the control socket in inherits that bit, and must still be used.
    p, users, md = _maildir_pipeline()
    for n in range(2):
        p.start()
        r = p.ctl("status")
        assert r.returncode == 0 and "router" in r.out, (n, r.out)
        r = p.ctl("stop", "router")
        assert r.returncode == 0, (n, r.out)
        assert "cannot listen" not in p.logtext(), p.logtext()[-2000:]
        p.stop()
    st = os.stat(os.path.join(p.spool, "run"))
    assert st.st_mode & 0o7777 == 0o3770, oct(st.st_mode)


@test
def a_file_another_user_writes_in_place_into_inbound_is_split_when_closed():
    # cp into inbound/ (written in place, not renamed in) by a user who is not the
    # splitter's: the splitter leases it (CAP_LEASE), so it waits while the file is open
    # for writing and splits it when it is closed, without a rest or a rescan (30 s here).
    p, users, md = _maildir_pipeline()
    p.start()
    data = msgs.clean(subject="written slowly")
    half = len(data) // 2
    path = os.path.join(p.spool, "inbound", "slow-cp")
    with open(path, "wb") as f:
        f.write(data[:half])
        f.flush()
        os.utime(path, (time.time() - 60, time.time() - 60))  # no rest would help it
        time.sleep(2)
        # Still being written: not taken.
        assert os.path.exists(path), "split while still open for writing"
        f.write(data[half:])
    closed = time.monotonic()
    wait_for(lambda: len(_maildir_messages(md)) == 1, timeout=60,
             what="the copied file delivered\n" + p.logtext()[-3000:])
    took = time.monotonic() - closed
    # Prompt: on its close, not after a 3 s rest and the next 30 s rescan.
    assert took < 15, took
    with open(os.path.join(md, "new", _maildir_messages(md)[0]), "rb") as f:
        assert f.read().endswith(data)


@test
def an_entry_a_stage_may_not_write_is_set_aside_and_the_mail_flows():
    # A compromised splitter closes one of its entries to the other stages (mode 0700).
    # The router cannot write into it nor move it (moving a directory needs write on it):
    # it sets it aside with a badmail/ record and goes on with the other mail, instead of
    # exiting on it again and again.
    p, users, md = _maildir_pipeline()
    p.start()
    qa, qb = _stopped_before(p, "router", msgs.clean(subject="closed"), msgs.clean(subject="open"))
    entry = os.path.join(p.spool, "route", qa)
    assert as_user(ROLES["splitter_user"], lambda: os.chmod(entry, 0o700)) == 0
    r = p.ctl("start", "router")
    assert r.returncode == 0, r.out
    wait_for(lambda: len(_maildir_messages(md)) == 1 and p.entries("badmail"), timeout=60,
             what="the other message delivered, a badmail record\n" + p.logtext()[-3000:])
    aside = [n for n in os.listdir(os.path.join(p.spool, "route")) if n.startswith(".unclaimable.")]
    assert len(aside) == 1 and p.entries("route") == [], os.listdir(os.path.join(p.spool, "route"))
    bad, = p.entries("badmail")
    assert aside[0] == ".unclaimable." + bad, (aside, bad)
    with open(os.path.join(p.spool, "badmail", bad, "reason")) as f:
        reason = f.read()
    assert "mode 0700" in reason and "route/" + aside[0] in reason, reason
    assert "cannot move" in p.logtext() and "exited" not in p.logtext().split("closed")[-1], \
        p.logtext()[-3000:]
    with open(os.path.join(md, "new", _maildir_messages(md)[0]), "rb") as f:
        assert b"Subject: open" in f.read()


@test
def an_entry_closed_to_the_scanner_runner_is_set_aside_and_the_rest_is_scanned():
    # The scanning path: the splitter's user closes one entry in scan/ to the other
    # stages (mode 0700). The scanner-runner may not copy its parts nor move it on: it is
    # set aside with a badmail/ record, never scanned from what it could half read and
    # never delivered; an EICAR message behind it is still quarantined and a clean one
    # delivered (the delivery check rescans and re-splits what reached the Maildir).
    p, users, md = _maildir_pipeline()
    p.start()
    qa, qv, qc = _stopped_before(p, "scanner-runner", msgs.eicar_attachment(filename="a.bin"),
                                 msgs.eicar_attachment(filename="v.bin"),
                                 msgs.clean(subject="after"))
    entry = os.path.join(p.spool, "scan", qa)
    assert as_user(ROLES["splitter_user"], lambda: os.chmod(entry, 0o700)) == 0
    r = p.ctl("start", "scanner-runner")
    assert r.returncode == 0, r.out
    wait_for(lambda: qv in p.entries("quarantine") and len(_maildir_messages(md)) == 1
             and p.entries("badmail"), timeout=90,
             what="quarantined, delivered and set aside\n" + p.logtext()[-3000:])
    aside = [n for n in os.listdir(os.path.join(p.spool, "scan"))
             if n.startswith(".unclaimable.")]
    assert len(aside) == 1 and p.entries("scan") == [], os.listdir(os.path.join(p.spool, "scan"))
    assert qa not in p.entries("route") + p.entries("quarantine"), p.finals()
    with open(os.path.join(md, "new", _maildir_messages(md)[0]), "rb") as f:
        assert b"Subject: after" in f.read()
    assert "scanner-runner[0] died" not in p.logtext(), p.logtext()[-3000:]


@test
def a_directory_another_user_drops_is_set_aside_and_leaves_nothing_behind():
    # The splitter may not move root's directory out of inbound/: it is set aside under
    # a dot-name with a badmail/ record, and the claim that failed leaves no work
    # directory in incoming/ for a later pass to take for a dead splitter's.
    p, users, md = _maildir_pipeline()
    p.start()
    d = os.path.join(p.dir, "adir")  # made whole, then renamed in
    os.mkdir(d)
    with open(os.path.join(d, "f"), "wb") as f:
        f.write(b"x\n")
    os.rename(d, os.path.join(p.spool, "inbound", "adir"))
    wait_for(lambda: p.entries("badmail"), timeout=30, what="a badmail record\n" + p.logtext()[-2000:])
    bad, = p.entries("badmail")
    assert os.path.isdir(os.path.join(p.spool, "inbound", ".unclaimable." + bad))
    assert os.listdir(os.path.join(p.spool, "incoming")) == [], os.listdir(
        os.path.join(p.spool, "incoming"))
    p.drop("after", msgs.clean(subject="after the directory"))
    wait_for(lambda: len(_maildir_messages(md)) == 1, timeout=60, what="delivered")
    assert "left by a dead splitter" not in p.logtext(), p.logtext()[-2000:]


@test
def a_trace_the_router_may_not_link_does_not_stop_delivery():
    # The trace is every stage's record (0660) and trusted by none. The splitter's user
    # closes one entry's trace to the router (a hard link then needs write access:
    # protected_hardlinks) and removes another's: both are delivered, with a trace of
    # their own that says so, and the router never exits on them.
    p, users, md = _maildir_pipeline()
    p.start()
    q1, q2 = _stopped_before(p, "router", msgs.clean(subject="one"), msgs.clean(subject="two"))
    route = os.path.join(p.spool, "route")
    assert as_user(ROLES["splitter_user"],
                   lambda: os.chmod(os.path.join(route, q1, "trace"), 0o600)) == 0
    assert as_user(ROLES["splitter_user"],
                   lambda: os.unlink(os.path.join(route, q2, "trace"))) == 0
    r = p.ctl("start", "router")
    assert r.returncode == 0, r.out
    wait_for(lambda: len(_maildir_messages(md)) == 2, timeout=60,
             what="both delivered\n" + p.logtext()[-3000:])
    assert "router[0] died" not in p.logtext(), p.logtext()[-3000:]


@test
def file_copied_in_by_another_user_is_split_when_its_quiet_time_ends_without_cap_lease():
    """A file the splitter may not lease (it belongs to another user: here root, and this
    splitter runs as the spool's user, without the CAP_LEASE its own keeper would give
    it) is split only once it has not changed for 3 s (splitter.c, SPLITTER_QUIET_S),
    since no lease can tell whether its writer is done. No event marks the end of that
    rest, so the stage must look again when it ends: not at the next rescan (five
    minutes here)."""
    p, users, md = _maildir_pipeline(rescan_interval=300, without=("splitter_user",))
    p.start()
    wait_for(lambda: "started, watching %s/inbound" % p.spool in p.logtext(), timeout=20,
             what="the splitter watching inbound/")
    src = os.path.join(harness.tmpdir("src"), "copied.eml")
    with open(src, "wb") as f:
        f.write(msgs.clean())
    dst = os.path.join(p.spool, "inbound", "copied.eml")
    t0 = time.monotonic()
    # cp writes the name in place (IN_CLOSE_WRITE), as root: not the splitter's file.
    subprocess.run(["cp", src, dst], check=True)
    assert os.stat(dst).st_uid == 0
    time.sleep(1)
    assert os.path.exists(dst), "split before its quiet time ended\n" + p.logtext()[-2000:]
    wait_for(lambda: not os.path.exists(dst), timeout=30, interval=0.05,
             what="the copied file claimed\n" + p.logtext()[-2000:])
    took = time.monotonic() - t0
    # Quiet time 3 s (2 s to 3 s after the copy, by the clock's second) plus 1 s; the
    # rescan would take 300 s.
    assert 1.5 <= took <= 7, "claimed %.2f s after the copy" % took
    wait_for(lambda: len(_maildir_messages(md)) == 1, timeout=60,
             what="the copied file delivered\n" + p.logtext()[-2000:])
    p.stop()


# ---- the compromised stage ------------------------------------------------------------
#
# A test helper acts as one stage's user (a forked child that becomes it, with its groups,
# as the keeper makes the stage) and does one thing a compromised stage would do. The
# stage that would act next is stopped meanwhile, so that the forgery is in place when it
# looks. Every attempt must end held or quarantined, with nothing in the Maildir.

def as_user(user, fn, *args):
    """Run fn(*args) in a child that has become user for good; its return value (an
    errno, 0 for success) comes back through the exit status."""
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = fn(*args) or 0
        except OSError as e:
            code = e.errno or 98
        except BaseException:
            import traceback
            traceback.print_exc()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    return os.WEXITSTATUS(status)


def _write(path, data):
    tmp = path + ".forged"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def _held_at(p, stage, qids, md, timeout=60):
    """Restart stage; every qid ends in hold/ or quarantine/, none in the Maildir."""
    r = p.ctl("start", stage)
    assert r.returncode == 0, r.out
    wait_for(lambda: all(q in p.entries("hold") + p.entries("quarantine") for q in qids),
             timeout=timeout, what="%s held or quarantined\n%s" % (qids, p.logtext()[-3000:]))
    time.sleep(0.5)
    assert _maildir_messages(md) == [], _maildir_messages(md)
    return p.logtext()


def _stopped_before(p, stage, *messages):
    """The pipeline with stage stopped and the messages waiting in front of it: their
    queue IDs, in the order given."""
    r = p.ctl("stop", stage)
    assert r.returncode == 0, r.out
    state = {"router": "route", "scanner-runner": "scan"}[stage]
    for i, m in enumerate(messages):
        p.drop("m%d" % i, m)
    wait_for(lambda: len(p.entries(state)) == len(messages), timeout=60,
             what="%d entries in %s/\n%s" % (len(messages), state, p.logtext()[-2000:]))
    wait_for(lambda: all(os.path.exists(os.path.join(p.spool, state, q, "manifest"))
                         for q in p.entries(state)), timeout=10, what="complete entries")

    def dropped_as(q):
        with open(os.path.join(p.spool, state, q, "origin")) as f:
            return int(f.read().strip()[1:])
    return sorted(p.entries(state), key=dropped_as)


# Attachments are named eicar.bin, not eicar.com: a banned name would be quarantined
# whatever the verdicts say, and each forgery here must be what stops the message.


def _clean_verdicts(qid):
    return ("scan part=- scanner=clamscan verdict=clean virus= exit=0 ms=1 backup=0 "
            "version= argv= output=\nmessage qid=%s\nend 1\n" % qid).encode()


@test
def compromised_splitter_cannot_write_verdicts_release_or_fanout():
    p, users, md = _maildir_pipeline()
    p.start()
    q1, q2, q3 = _stopped_before(p, "router", msgs.eicar_attachment(filename="eicar.bin"),
                                  msgs.eicar_attachment(filename="eicar.bin"), msgs.eicar_attachment(filename="eicar.bin"))
    route = os.path.join(p.spool, "route")
    split = ROLES["splitter_user"]
    # verdicts that call an infected message clean
    assert as_user(split, lambda: _write(os.path.join(route, q1, "verdicts"),
                                         _clean_verdicts(q1))) == 0
    # the administrator's release marker
    assert as_user(split, lambda: _write(os.path.join(route, q2, "release"), b"")) == 0
    # the router's fan-out plan, with a prepared outbox entry
    def fanout():
        d = os.path.join(route, q3)
        os.mkdir(os.path.join(d, "out.local"))
        with open(os.path.join(d, "message"), "rb") as f:
            _write(os.path.join(d, "out.local", "message"), f.read())
        with open(os.path.join(d, "envelope"), "rb") as f:
            _write(os.path.join(d, "out.local", "envelope"), f.read())
        _write(os.path.join(d, "fanout"), b"local\nend\n")
    assert as_user(split, fanout) == 0
    log = _held_at(p, "router", [q1, q2, q3], md)
    for q, name in ((q1, "verdicts"), (q2, "release"), (q3, "fanout")):
        assert q in p.entries("hold"), (q, p.entries("hold"), p.entries("quarantine"))
        assert os.path.exists(os.path.join(p.spool, "hold", q, "untrusted." + name)), q
    assert "treated as not written" in log, log[-3000:]


@test
def compromised_splitter_cannot_skip_the_scan_or_reach_an_outbox():
    p, users, md = _maildir_pipeline()
    p.start()
    q1, q2 = _stopped_before(p, "scanner-runner", msgs.eicar_attachment(filename="eicar.bin"),
                             msgs.eicar_attachment(filename="eicar.bin"))
    split = ROLES["splitter_user"]
    scan = os.path.join(p.spool, "scan")

    # Straight into an outbox: the directory is the connectors' group's.
    def to_outbox():
        os.rename(os.path.join(scan, q1), os.path.join(p.spool, "outbox", "local", q1))
    assert as_user(split, to_outbox) == 13  # EACCES

    # Past the scanner, into route/ with verdicts of its own.
    def to_route():
        _write(os.path.join(scan, q2, "verdicts"), _clean_verdicts(q2))
        os.rename(os.path.join(scan, q2), os.path.join(p.spool, "route", q2))
    assert as_user(split, to_route) == 0
    _held_at(p, "scanner-runner", [q1, q2], md)
    assert q1 in p.entries("quarantine"), (p.entries("quarantine"), p.entries("hold"))
    assert q2 in p.entries("hold"), (p.entries("quarantine"), p.entries("hold"))


@test
def compromised_splitter_cannot_change_the_message_after_the_scan():
    p, users, md = _maildir_pipeline()
    p.start()
    clean = msgs.clean()
    q, = _stopped_before(p, "router", clean)
    path = os.path.join(p.spool, "route", q, "message")

    # In place (the file is the splitter's: it may write it) ...
    def rewrite():
        os.chmod(path, 0o640)
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(msgs.eicar_attachment(filename="eicar.bin"))
    assert as_user(ROLES["splitter_user"], rewrite) == 0
    log = _held_at(p, "router", [q], md)
    assert q in p.entries("hold"), p.entries("quarantine")
    assert "changed after it was scanned" in log, log[-3000:]


def _att_with(entry_dir, needle):
    """The .ATT part of an entry whose bytes contain needle."""
    for n in sorted(os.listdir(entry_dir)):
        if n.endswith(".ATT"):
            with open(os.path.join(entry_dir, n), "rb") as f:
                if needle in f.read():
                    return os.path.join(entry_dir, n)
    raise AssertionError("no part of %s holds %r: %s" % (entry_dir, needle, os.listdir(entry_dir)))


@test
def compromised_splitter_cannot_use_a_part_replaced_after_the_scan():
    # The parts are the splitter's files: its user may rewrite them after the scan. The
    # verdicts stand for the bytes the runner copied and scanned, and the router delivers
    # the message it checked against the runner's hash, never a part: an infected message
    # whose part is made clean is still quarantined, and a clean message whose part is
    # made EICAR is delivered as it was scanned (the delivery invariant rescans and
    # re-splits what reached the Maildir).
    p, users, md = _maildir_pipeline()
    p.start()
    qi, qc = _stopped_before(p, "router", msgs.eicar_attachment(filename="eicar.bin"),
                             msgs.with_attachment(b"harmless notes\n", "notes.bin"))
    route = os.path.join(p.spool, "route")
    infected = _att_with(os.path.join(route, qi), b"EICAR")
    harmless = _att_with(os.path.join(route, qc), b"harmless notes")
    eicar = msgs.eicar_attachment(filename="x.bin")
    # Replaced by a new file (rename) and rewritten in place.
    assert as_user(ROLES["splitter_user"], lambda: _write(infected, b"nothing here\n")) == 0

    def rewrite():
        with open(harmless, "r+b") as f:
            f.truncate(0)
            f.write(eicar)
    assert as_user(ROLES["splitter_user"], rewrite) == 0
    r = p.ctl("start", "router")
    assert r.returncode == 0, r.out
    wait_for(lambda: qi in p.entries("quarantine") and len(_maildir_messages(md)) == 1,
             timeout=60, what="quarantined and delivered\n" + p.logtext()[-3000:])
    with open(os.path.join(md, "new", _maildir_messages(md)[0]), "rb") as f:
        got = f.read()
    assert b"harmless notes" in got or b"aGFybWxlc3Mgbm90ZXMK" in got, got[-1500:]
    assert b"EICAR" not in got, got[-1500:]


@test
def compromised_splitter_cannot_change_the_message_while_it_is_scanned():
    # The scanning path of a separated spool: the runner scans private copies it hashed
    # as it made them. Here the splitter's user rewrites the message (clean) to EICAR while
    # the scanner runs (a clamscan wrapper that announces itself, then waits): the scan saw
    # the clean copy, the router sees other bytes than the ones scanned, and holds. The
    # outbox stays empty; the delivery invariant (Pipeline) rescans whatever is in it.
    d = harness.tmpdir("slowscan")
    os.chmod(d, 0o1777)
    mark = os.path.join(d, "scanning")
    wrapper = os.path.join(d, "clamscan-slow")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\n: > %s\nsleep 3\nexec "$@"\n' % mark)
    os.chmod(wrapper, 0o755)
    sc = clamscan()
    sc["argv"] = [wrapper] + sc["argv"]
    sc["timeout"] = 60
    p, users = separated(scanners=[sc])
    p.start()
    # The canary at the runner's start runs the wrapper too: wait until it is done, and
    # only then take the mark as the sign that the message's scan began (the splitter may
    # hand the message on before the runner is ready).
    wait_for(lambda: "started, watching %s/scan" % p.spool in p.logtext(), timeout=60,
             what="the scanner-runner ready\n" + p.logtext()[-2000:])
    if os.path.exists(mark):
        os.unlink(mark)
    p.drop("m0", msgs.clean())
    wait_for(lambda: os.path.exists(mark) and p.entries("scan"), timeout=60,
             what="a scan in progress\n" + p.logtext()[-2000:])
    q, = p.entries("scan")
    path = os.path.join(p.spool, "scan", q, "message")

    def rewrite():
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(msgs.eicar_attachment(filename="eicar.bin"))
    assert as_user(ROLES["splitter_user"], rewrite) == 0
    wait_for(lambda: q in p.entries("hold") + p.entries("quarantine"), timeout=90,
             what="held\n" + p.logtext()[-3000:])
    assert q in p.entries("hold"), p.entries("quarantine")
    assert p.outbox() == [], p.outbox()
    assert "changed after it was scanned" in p.logtext(), p.logtext()[-3000:]


@test
def compromised_splitter_cannot_stall_the_router_with_a_fifo_for_the_message():
    """The router copies a separated spool's message into a file of its own, hashing it as
    it copies: a FIFO put in the message's place (by the splitter's user, who owns the
    entry's files) must not block that copy, must never pass for the scanned bytes, and
    must not stop the next message. What is delivered, rescanned whole, is clean."""
    p, users, md = _maildir_pipeline()
    p.start()
    bad_msg, good_msg = msgs.clean(subject="to be swapped"), msgs.clean(subject="next one")
    qa, qb = _stopped_before(p, "router", bad_msg, good_msg)
    path = os.path.join(p.spool, "route", qa, "message")

    def to_fifo():
        os.unlink(path)
        os.mkfifo(path, 0o640)
    assert as_user(ROLES["splitter_user"], to_fifo) == 0
    r = p.ctl("start", "router")
    assert r.returncode == 0, r.out
    # Held, and the router went on: the other message is delivered.
    wait_for(lambda: qa in p.entries("hold") and len(_maildir_messages(md)) == 1,
             timeout=60, what="held and the next delivered\n" + p.logtext()[-3000:])
    assert "changed after it was scanned" in p.logtext(), p.logtext()[-3000:]
    name, = _maildir_messages(md)
    with open(os.path.join(md, "new", name), "rb") as f:
        got = f.read()
    assert b"Subject: next one" in got and b"Subject: to be swapped" not in got, got[:500]
    p.assert_delivered_clean([("maildir " + name, got)])


@test
def moved_or_linked_verdicts_of_another_message_are_not_its_own():
    p, users, md = _maildir_pipeline()
    p.start()
    # The same shape (text, one attachment, the raw part): A's verdicts cover every part
    # of B and call them clean.
    # (Names that are not banned: a .com would be quarantined whatever the verdicts.)
    qa, qb = _stopped_before(p, "router", msgs.with_attachment(b"harmless\n", "notes.bin"),
                             msgs.eicar_attachment(filename="eicar.bin"))
    route = os.path.join(p.spool, "route")
    a, b = os.path.join(route, qa, "verdicts"), os.path.join(route, qb, "verdicts")
    split = ROLES["splitter_user"]
    # A hard link to the runner's file: protected_hardlinks refuses it (not the owner, no
    # write access).
    assert as_user(split, lambda: os.link(a, b + ".linked")) == 1  # EPERM
    # Moved: the file is the runner's, but it names the other message.
    assert as_user(split, lambda: os.rename(a + "", b)) == 0
    log = _held_at(p, "router", [qb], md)
    assert qb in p.entries("hold"), p.entries("quarantine")
    # Bound by the hash of the message the runner scanned (the qid changes when a commit
    # rename meets a taken name; the hash does not).
    assert "changed after it was scanned" in log, log[-3000:]


@test
def compromised_router_cannot_write_verdicts():
    p, users, md = _maildir_pipeline()
    p.start()
    q, = _stopped_before(p, "router", msgs.eicar_attachment(filename="eicar.bin"))
    v = os.path.join(p.spool, "route", q, "verdicts")
    assert as_user(ROLES["router_user"], lambda: _write(v, _clean_verdicts(q))) == 0
    _held_at(p, "router", [q], md)
    assert q in p.entries("hold"), p.entries("quarantine")
    assert os.path.exists(os.path.join(p.spool, "hold", q, "untrusted.verdicts"))


@test
def spoolctl_refuses_to_change_the_spool_for_a_stage_user():
    p, users, md = _maildir_pipeline()
    p.start()
    q, = _stopped_before(p, "router", msgs.eicar_attachment(filename="eicar.bin"))
    p.ctl("start", "router")
    wait_for(lambda: q in p.entries("quarantine"), timeout=30, what="quarantined")
    spoolctl = harness.bin_path("spoolctl")
    for argv in (["quarantine", "release", q], ["requeue", "--all", "hold"], ["delete", q]):
        r = subprocess.run(["setpriv", "--reuid", ROLES["splitter_user"], "--regid",
                            ROLES["splitter_user"], "--init-groups", spoolctl, "-c", p.conf]
                           + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert r.returncode == 77 and b"run it as root or as the spool's user" in r.stdout, \
            (argv, r.returncode, r.stdout)
    # Reading stays open to whoever may read.
    r = subprocess.run(["setpriv", "--reuid", ROLES["splitter_user"], "--regid",
                        ROLES["splitter_user"], "--init-groups", spoolctl, "-c", p.conf,
                        "quarantine", "list"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout
    # Root releases: spoolctl becomes the spool's user, whose marker the router trusts.
    r = p.ctl("quarantine", "release", q)
    assert r.returncode == 0, r.out
    wait_for(lambda: len(_maildir_messages(md)) == 1, timeout=30,
             what="the released message delivered\n" + p.logtext()[-2000:])


if __name__ == "__main__":
    harness.main()
