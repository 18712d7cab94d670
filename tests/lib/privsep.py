"""Throwaway users for the separated-spool tests (issue 15): the spool's user and one user
per stage, made with useradd once and kept (names spt-*), grouped as dist/spoold.sysusers
groups the production ones."""
import fcntl
import grp
import os
import pwd
import subprocess

from . import _base, sigdir

SPOOL_USER = "spt-spool"
ROLES = {"splitter_user": "spt-split", "runner_user": "spt-scan",
         "router_user": "spt-route", "connector_user": "spt-deliver"}


# run.py runs test files side by side: two of them may make the same user at once, and
# the second useradd would fail ("already exists"). One machine-wide lock orders them.
USERS_LOCK = "/run/lock/spoold-test-users.lock"


def user_make(name, groups=()):
    fd = os.open(USERS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _user_make_locked(name, groups)
    finally:
        os.close(fd)


def _user_make_locked(name, groups):
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


def users():
    """The spool's user and one user per stage, as dist/spoold.sysusers makes them: every
    stage user in the spool user's group; the router and the spool's user in the
    connectors' group (outbox/)."""
    user_make(SPOOL_USER)
    user_make(ROLES["connector_user"], [SPOOL_USER])
    user_make(ROLES["splitter_user"], [SPOOL_USER])
    user_make(ROLES["runner_user"], [SPOOL_USER])
    user_make(ROLES["router_user"], [SPOOL_USER, ROLES["connector_user"]])
    user_make(SPOOL_USER, [ROLES["connector_user"]])
    return {k: pwd.getpwnam(v) for k, v in list(ROLES.items()) + [("user", SPOOL_USER)]}


def separated_config():
    """The config lines that separate a pipeline's stages (as root)."""
    text = 'user = "%s";\n' % SPOOL_USER
    text += "".join('%s = "%s";\n' % kv for kv in ROLES.items())
    return text


def open_paths(pipeline_dir, conf):
    """Every stage user reads the config and reaches the spool; the signatures are read by
    the scanner-runner's user (clamscan runs as it)."""
    for d in (_base(), os.path.dirname(pipeline_dir), pipeline_dir,
              os.path.dirname(sigdir()), sigdir()):
        os.chmod(d, 0o755)
    for f in os.listdir(sigdir()):
        os.chmod(os.path.join(sigdir(), f), 0o644)
    os.chmod(conf, 0o644)


STAGE_ROLE = {"splitter": "splitter_user", "lmtpd": "splitter_user",
              "scanner-runner": "runner_user", "router": "router_user",
              "connector-smtp": "connector_user", "connector-maildir": "connector_user"}

STATE_DIRS = ("inbound", "incoming", "scan", "route", "outbox", "quarantine", "hold",
              "badmail", "tmp", "trash", "slots", "run")


def prepare_spool(spool):
    """The spool skeleton as spoold makes it for separated stages (spoold/privs.c), for
    tests that run a stage by hand without a spoold started first."""
    us = users()
    u = us["user"]
    os.makedirs(spool, exist_ok=True)
    os.chown(spool, u.pw_uid, u.pw_gid)
    os.chmod(spool, 0o750)
    for d in STATE_DIRS:
        path = os.path.join(spool, d)
        os.makedirs(path, exist_ok=True)
        gid = us["connector_user"].pw_gid if d == "outbox" else u.pw_gid
        os.chown(path, u.pw_uid, gid)
        os.chmod(path, 0o3770 if d == "run" else 0o2770)


def become_stage(stage):
    """(argv prefix, preexec_fn) that run a stage as its keeper starts it: as the stage's
    user for good, with its groups and umask 007, and CAP_LEASE alone for the splitter and
    lmtpd (lib/user.h: user_become_with_lease)."""
    name = ROLES[STAGE_ROLE[stage]]
    argv = ["setpriv", "--reuid=" + name, "--regid=" + name, "--init-groups"]
    if STAGE_ROLE[stage] == "splitter_user":
        argv += ["--inh-caps=+lease", "--ambient-caps=+lease"]
    else:
        argv += ["--inh-caps=-all"]

    def fn():
        os.umask(0o007)
    return argv, fn
