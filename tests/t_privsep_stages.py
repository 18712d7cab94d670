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

SPOOL_USER = "spt-spool"
ROLES = {"splitter_user": "spt-split", "runner_user": "spt-scan",
         "router_user": "spt-route", "connector_user": "spt-deliver"}


def _need_root():
    if os.geteuid() != 0:
        skip("needs root: spoold must start as root to run each stage as its own user")


def _user(name, groups=()):
    try:
        pwd.getpwnam(name)
    except KeyError:
        r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                            name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert r.returncode == 0, r.stdout
    for g in groups:
        if name not in grp.getgrnam(g).gr_mem:
            r = subprocess.run(["usermod", "-a", "-G", g, name],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert r.returncode == 0, r.stdout
    return pwd.getpwnam(name)


def _users():
    """The spool's user and one user per stage, as dist/spoold.sysusers makes them: every
    stage user in the spool user's group; the router and the spool's user in the
    connectors' group (outbox/)."""
    _user(SPOOL_USER)
    _user(ROLES["connector_user"], [SPOOL_USER])
    _user(ROLES["splitter_user"], [SPOOL_USER])
    _user(ROLES["runner_user"], [SPOOL_USER])
    _user(ROLES["router_user"], [SPOOL_USER, ROLES["connector_user"]])
    _user(SPOOL_USER, [ROLES["connector_user"]])
    return {k: pwd.getpwnam(v) for k, v in list(ROLES.items()) + [("user", SPOOL_USER)]}


def separated(extra="", **kw):
    """A pipeline whose spoold starts as root and runs each stage as its own user."""
    _need_root()
    users = _users()
    text = 'user = "%s";\n' % SPOOL_USER
    text += "".join('%s = "%s";\n' % kv for kv in ROLES.items())
    p = Pipeline(extra=text + extra, **kw)
    # Every stage user reads the config and reaches the spool; the signatures are read by
    # the scanner-runner's user (clamscan runs as it).
    for d in (harness._base(), os.path.dirname(p.dir), p.dir,
              os.path.dirname(harness.sigdir()), harness.sigdir()):
        os.chmod(d, 0o755)
    for f in os.listdir(harness.sigdir()):
        os.chmod(os.path.join(harness.sigdir(), f), 0o644)
    os.chmod(p.conf, 0o644)
    return p, users


def _stage_pids(p):
    """{stage name: [pid]} of the stages spoold runs, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if p.conf.encode() in argv and int(d) != p.proc.pid:
            out.setdefault(os.path.basename(argv[0].decode()), []).append(int(d))
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
    return ids


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
    sp = _ids(p.proc.pid)
    assert sp["Uid"] == (users["user"].pw_uid,) * 4, sp
    # Keepers: one process per stage user besides spoold's own, children of spoold.
    p.drop("clean", msgs.clean())
    p.drop("virus", msgs.eicar_attachment())
    wait_for(lambda: len(_maildir_messages(md)) == 1 and
             len(os.listdir(os.path.join(p.spool, "quarantine"))) == 1,
             timeout=60, what="one delivered, one quarantined\n" + p.logtext()[-3000:])
    p.stop()


if __name__ == "__main__":
    harness.main()
