#!/usr/bin/env python3
"""Privilege separation, first slice (issue 15): what root does at start cannot be turned
against it by the spool's owner; the control socket cannot be stalled; connector-maildir
cannot be redirected by a symlink; the splitter is confined by Landlock.

The spool's owner (the configured user, or anything running as it: a stage, a scanner) is
the attacker here: it can write every spool directory before spoold starts as root again.
Most tests need root (spoold must start as root to show what root does)."""
import os
import pwd
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, skip, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


def _need_root():
    if os.geteuid() != 0:
        skip("needs root: spoold must start as root to show what root does at start")


def _test_build():
    return "asan" in (harness.BIN or "")


def _outside_file(name, data=b"root's own file\n", mode=0o600):
    """A root-owned file outside the spool, for the spool's owner to aim at."""
    path = os.path.join(harness.tmpdir("outside"), name)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    st = os.stat(path)
    return path, (data, st.st_uid, st.st_gid, st.st_mode, st.st_ino)


def _unchanged(path, before):
    with open(path, "rb") as f:
        data = f.read()
    st = os.stat(path)
    now = (data, st.st_uid, st.st_gid, st.st_mode, st.st_ino)
    assert now == before, "outside file %s changed: %r -> %r" % (path, before, now)


def _nobody_pipeline(extra="", **kw):
    """A pipeline whose spoold starts as root with user = "nobody" (started by the caller)."""
    _need_root()
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        skip("no user nobody")
    p = Pipeline(extra='user = "nobody";\n' + extra, **kw)
    # The stages run as nobody: the config, the signatures and the spool's parents must
    # be reachable for it.
    for d in (harness._base(), os.path.dirname(p.dir), p.dir,
              os.path.dirname(harness.sigdir())):
        os.chmod(d, 0o755)
    os.chmod(p.conf, 0o644)
    return p, nobody


def _skeleton(p):
    """The spool as its owner left it before this start of spoold."""
    for d in ("inbound", "run", "tmp", "scan"):
        os.makedirs(os.path.join(p.spool, d), exist_ok=True)


# ---- run/spoold.lock ------------------------------------------------------------------

@test
def lock_symlink_or_hard_link_to_an_outside_file_is_replaced_not_followed():
    _need_root()
    for kind in ("symlink", "hardlink"):
        p = Pipeline(scanners=[clamscan()])
        _skeleton(p)
        target, before = _outside_file("lock-target-" + kind)
        lock = os.path.join(p.spool, "run", "spoold.lock")
        if kind == "symlink":
            os.symlink(target, lock)
        else:
            os.link(target, lock)
        p.start()
        # Before: root opened the name with O_CREAT and no O_NOFOLLOW, truncated it and
        # wrote its pid into it: the outside file lost its content.
        _unchanged(target, before)
        st = os.lstat(lock)
        assert os.path.isfile(lock) and not os.path.islink(lock) and st.st_nlink == 1, st
        with open(lock) as f:
            assert f.read().strip() == str(p.proc.pid)
        assert "run/spoold.lock is a" in p.logtext(), p.logtext()[-2000:]
        p.drop("m", msgs.clean())
        (place, _, _), = p.wait_final(1)
        assert place == "outbox/smtp", place
        p.stop()


# ---- run/control ----------------------------------------------------------------------

@test
def control_socket_planted_symlink_or_directory_is_not_followed():
    _need_root()
    for kind in ("symlink-file", "symlink-dir", "empty-dir"):
        p = Pipeline(scanners=[clamscan()])
        _skeleton(p)
        ctl = os.path.join(p.spool, "run", "control")
        target, before = _outside_file("control-target", mode=0o644)
        outdir = harness.tmpdir("control-outdir")
        if kind == "symlink-file":
            os.symlink(target, ctl)
        elif kind == "symlink-dir":
            os.symlink(outdir, ctl)
        else:
            os.mkdir(ctl)  # before: unlink failed (EISDIR) and there was no control socket
        # What a spoold killed between bind and rename leaves: ours (root, 0700), swept.
        stale = os.path.join(p.spool, "run", ".ctl.0123456789abcdef")
        os.mkdir(stale, 0o700)
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(os.path.join(stale, "control"))
        # One that is not ours (the spool's owner made it) is left alone.
        foreign = os.path.join(p.spool, "run", ".ctl.fedcba9876543210")
        os.mkdir(foreign, 0o700)
        os.chown(foreign, 65534, 65534)
        p.start()
        _unchanged(target, before)
        assert os.listdir(outdir) == [], os.listdir(outdir)
        st = os.lstat(ctl)
        import stat
        assert stat.S_ISSOCK(st.st_mode) and (st.st_mode & 0o777) == 0o600, (kind, oct(st.st_mode))
        r = p.ctl("pause", "router")
        assert r.returncode == 0, (kind, r.out, p.logtext()[-1500:])
        assert p.ctl("resume", "router").returncode == 0
        # The private directory the socket was bound in is gone, and so is the stale one.
        assert [n for n in os.listdir(os.path.join(p.spool, "run"))
                if n.startswith(".ctl.")] == [os.path.basename(foreign)]
        p.stop()


@test
def control_socket_belongs_to_the_user_with_its_mode_before_listen():
    p, nobody = _nobody_pipeline('control_group = "nogroup";\n', scanners=[clamscan()])
    import grp
    try:
        g = grp.getgrnam("nogroup")
    except KeyError:
        skip("no group nogroup")
    p.start()
    st = os.stat(os.path.join(p.spool, "run", "control"))
    assert st.st_uid == nobody.pw_uid and st.st_gid == g.gr_gid, (st.st_uid, st.st_gid)
    assert (st.st_mode & 0o777) == 0o660, oct(st.st_mode)
    assert p.ctl("restart", "router").returncode == 0


@test
def fchmod_on_a_socket_descriptor_does_not_change_the_socket_file():
    """Why lib/control.c sets the socket's mode by name, in its private directory: on Linux
    fchmod/fchown on the socket's descriptor change the sockfs inode, not the file bind()
    made. If this ever changes, the by-name step could become fchmod on the fd."""
    import stat
    d = harness.tmpdir("sockmode")
    path = os.path.join(d, "s")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    before = stat.S_IMODE(os.lstat(path).st_mode)
    assert before == 0o700, oct(before)  # 0777 less the umask
    try:
        os.fchmod(s.fileno(), 0o666)
    except OSError:
        pass
    assert stat.S_IMODE(os.lstat(path).st_mode) == before, oct(os.lstat(path).st_mode)
    s.close()


@test
def slow_control_client_does_not_stall_spoold():
    p = Pipeline(scanners=[clamscan()]).start()
    path = os.path.join(p.spool, "run", "control")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(path)
    stop = threading.Event()

    def dribble():
        # One byte every 0.3 s and never a newline. Before: each read waited up to 2 s
        # (SO_RCVTIMEO) and spoold read up to 255 bytes: over a minute of nothing else.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        try:
            while not stop.is_set():
                s.send(b"p")
                time.sleep(0.3)
        except OSError:
            pass
        finally:
            s.close()
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        r = p.ctl("pause", "router")
        took = time.monotonic() - t0
        assert r.returncode == 0, r.out
        assert took < 2.5, "a control request waited %.1f s behind slow clients" % took
        # Each slow client is cut off at its deadline, and the log names its peer.
        wait_for(lambda: p.logtext().count("sent no complete request within") >= 2,
                 timeout=10, what="both slow clients to be cut off at the deadline")
        assert "control: uid %d pid " % os.getuid() in p.logtext(), p.logtext()[-1500:]
        assert "control: request from uid %d pid " % os.getuid() in p.logtext()
        assert p.ctl("resume", "router").returncode == 0
    finally:
        stop.set()
        t.join(5)
        silent.close()


# ---- the chown at start ---------------------------------------------------------------

@test
def hard_link_in_the_spool_to_an_outside_file_keeps_its_owner():
    p, nobody = _nobody_pipeline(scanners=[clamscan()])
    _skeleton(p)
    target, before = _outside_file("hardlinked")
    # The spool's owner cannot make these links (fs.protected_hardlinks); they stand for
    # what an older root-run version or a careless admin could leave. Root makes them here.
    os.link(target, os.path.join(p.spool, "inbound", "linked"))
    os.link(target, os.path.join(p.spool, "tmp", "linked"))
    # A file root dropped into inbound/: not chowned either (inbound/ is not walked).
    dropped = os.path.join(p.spool, "inbound", "rootdrop")
    with open(dropped, "wb") as f:
        f.write(msgs.clean())
    os.chmod(dropped, 0o600)
    p.start()
    wait_for(lambda: os.stat(os.path.join(p.spool, "inbound")).st_uid == nobody.pw_uid,
             timeout=20, what="spoold to hand the spool to nobody")
    # Before: privs_chown_tree chowned every inode in the tree to the user, these too.
    _unchanged(target, before)
    # The splitter (nobody) cannot read what only root may: a clear error, and badmail/.
    finals = p.wait_final(2)
    assert sorted(f[0] for f in finals) == ["badmail", "badmail"], finals
    for f in finals:
        assert "Permission denied" in p.read(f[2], "reason").decode(), f
    _unchanged(target, before)
    # The spool's own directories did go to the user.
    for d in ("", "inbound", "run", "scan", "tmp"):
        assert os.stat(os.path.join(p.spool, d)).st_uid == nobody.pw_uid, d


@test
def root_start_refuses_without_protected_hardlinks():
    _need_root()
    if not _test_build():
        skip("fs.protected_hardlinks is machine-wide and may not be flipped on a shared "
             "machine: the test build reads SPOOLD_TEST_PROTECTED_HARDLINKS instead")
    p = Pipeline(scanners=[clamscan()])
    fake_sysctl = os.path.join(p.dir, "protected_hardlinks")
    for value, want in ((b"0\n", 78), (b"1\n", None)):
        with open(fake_sysctl, "wb") as f:
            f.write(value)
        env = dict(os.environ, SPOOLD_TEST_PROTECTED_HARDLINKS=fake_sysctl)
        if want is not None:
            r = harness.run([harness.bin_path("spoold"), "-c", p.conf], env=env, timeout=30)
            assert r.returncode == want and "protected_hardlinks is not 1" in r.out, \
                (r.returncode, r.out)
            assert not os.path.exists(os.path.join(p.spool, "run", "spoold.lock")), \
                "refused only after touching the spool"
        else:
            os.environ["SPOOLD_TEST_PROTECTED_HARDLINKS"] = fake_sysctl
            try:
                p.start()
            finally:
                del os.environ["SPOOLD_TEST_PROTECTED_HARDLINKS"]
            assert p.ctl("status").returncode == 0


# ---- the privilege drop ---------------------------------------------------------------

def _ids(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups", "NoNewPrivs"):
                out[k] = [int(x) for x in v.split()]
    return out


@test
def every_process_runs_as_the_user_with_only_its_group():
    p, nobody = _nobody_pipeline(scanners=[clamscan()])
    p.start()
    wait_for(lambda: len([x for x in p.stage_pids().values() if x]) == 3,
             timeout=20, what="three stages running")
    pids = [p.proc.pid] + [x for x in p.stage_pids().values() if x]
    for pid in pids:
        ids = _ids(pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4, (pid, ids)
        assert ids["Gid"] == [nobody.pw_gid] * 4, (pid, ids)
        assert ids["Groups"] == [nobody.pw_gid], (pid, ids)
    p.drop("m", msgs.clean())
    (place, _, _), = p.wait_final(1)
    assert place == "outbox/smtp", place


@test
def root_with_no_user_refuses_unless_allow_root():
    _need_root()
    md = os.path.join(harness.tmpdir("md"), "Maildir")
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="local", domains=["*"], type="maildir", maildir=md)])
    with open(p.conf) as f:
        text = f.read()
    assert "allow_root = true;" in text
    with open(p.conf, "w") as f:
        f.write(text.replace("allow_root = true;\n", ""))
    # Before: each of them ran as root, the MIME parser and the scanners included.
    for argv in (["spoold"], ["splitter", "--once"], ["scanner-runner", "--once"],
                 ["router", "--once"], ["connector-maildir", "-n", "local", "--once"]):
        r = harness.run([harness.bin_path(argv[0]), "-c", p.conf] + argv[1:], timeout=30)
        assert r.returncode == 78 and "allow_root" in r.out and "refusing to run as root" in r.out, \
            (argv, r.returncode, r.out)
    assert not os.path.exists(p.spool), "refused only after making the spool"
    with open(p.conf, "w") as f:
        f.write(text)
    p.start()
    wait_for(lambda: p.logtext().count("RUNNING AS ROOT") >= 5, timeout=20,
             what="spoold, each stage and the connector to warn that they run as root")
    p.drop("m", msgs.clean())
    wait_for(lambda: os.path.isdir(os.path.join(md, "new")) and os.listdir(os.path.join(md, "new")),
             timeout=60, what="the message in the Maildir")


# ---- connector-maildir ----------------------------------------------------------------

@test
def maildir_new_swapped_for_a_symlink_is_never_followed():
    md = os.path.join(harness.tmpdir("md"), "Maildir")
    elsewhere = harness.tmpdir("elsewhere")
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="local", domains=["*"], type="maildir", maildir=md,
                                  retry_min=1, retry_max=2)]).start()
    p.drop("m1", msgs.clean(subject="first"))
    new = os.path.join(md, "new")
    wait_for(lambda: os.path.isdir(new) and len(os.listdir(new)) == 1,
             timeout=60, what="the first message in the Maildir")
    # The Maildir's owner swaps new/ for a symlink, after the connector opened the Maildir.
    os.rename(new, new + ".real")
    os.symlink(elsewhere, new)
    p.drop("m2", msgs.clean(subject="second"))
    wait_for(lambda: "deferred connector=local" in p.logtext(), timeout=60,
             what="the delivery to be deferred")
    time.sleep(2)  # a retry or two
    # Before: the rename went by path, through the symlink, into elsewhere/.
    assert os.listdir(elsewhere) == [], os.listdir(elsewhere)
    assert len(os.listdir(new + ".real")) == 1
    assert len(p.outbox()) == 1, p.outbox()
    # new/ is back: the deferred message arrives, in the real Maildir.
    os.unlink(new)
    os.rename(new + ".real", new)
    wait_for(lambda: len(os.listdir(new)) == 2, timeout=30,
             what="the deferred message in the real Maildir")
    assert os.listdir(elsewhere) == []


# ---- systemd units --------------------------------------------------------------------

UNITS = ("spoold.service", "spoold-stage@.service", "spoold-smtp@.service",
         "spoold-maildir@.service")


def _unit_settings(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@test
def units_are_sandboxed_and_verify():
    import shutil
    dist = os.path.join(harness.ROOT, "dist")
    d = harness.tmpdir("units")
    for unit in UNITS:
        with open(os.path.join(dist, unit)) as f:
            text = f.read()
        st = _unit_settings(text)
        for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("PrivateTmp", "yes"), ("SystemCallErrorNumber", "EPERM")):
            assert st.get(key) == [want], (unit, key, st.get(key))
        assert st["ReadWritePaths"][0] == "/var/spool/spoold", (unit, st["ReadWritePaths"])
        assert all(p.startswith("-") for p in st["ReadWritePaths"][1:]), (unit, st["ReadWritePaths"])
        assert st["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"], unit
        filt = st["SystemCallFilter"][0].split()
        assert filt[0] == "@system-service", (unit, filt)
        # spoold starts its stages, the splitter among them; the stage template may be one.
        if unit in ("spoold.service", "spoold-stage@.service"):
            assert {"landlock_create_ruleset", "landlock_add_rule",
                    "landlock_restrict_self"} <= set(filt), (unit, filt)
        text = text.replace("/usr/sbin/spoold", harness.bin_path("spoold"))
        text = text.replace("/usr/libexec/spoold", harness.BIN)
        with open(os.path.join(d, unit), "w") as f:
            f.write(text)
    sa = shutil.which("systemd-analyze")
    if not sa:
        skip("systemd-analyze not installed (the settings above were checked)")
    # What spoold does before it drops, and the splitter's no_new_privs, are in the set.
    r = harness.run([sa, "syscall-filter"], timeout=30)
    groups, cur = {}, None
    for line in r.out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), set())
        elif cur is not None and line.strip() and not line.strip().startswith("#"):
            cur.add(line.strip())

    def expand(name, seen=()):
        out = set()
        for x in groups.get(name, ()):
            out |= expand(x, seen + (name,)) if x.startswith("@") and x not in seen else {x}
        return out
    allowed = expand("@system-service")
    for call in ("setgroups", "setgid", "setuid", "fchownat", "fchown", "flock", "prctl",
                 "renameat", "mkdirat", "bind", "listen", "accept4", "getsockopt"):
        assert call in allowed, (call, sorted(allowed)[:50])
    links = {"spoold-stage@.service": "spoold-stage@splitter.service",
             "spoold-smtp@.service": "spoold-smtp@out.service",
             "spoold-maildir@.service": "spoold-maildir@local.service"}
    for unit, inst in links.items():
        os.symlink(os.path.join(d, unit), os.path.join(d, inst))
    man = os.path.join(d, "man")
    for sec in ("5", "8"):
        os.makedirs(os.path.join(man, "man" + sec))
    for page in ("spoold.8", "spoolctl.8", "spoold.conf.5"):
        shutil.copy(os.path.join(harness.ROOT, "docs", "man", page),
                    os.path.join(man, "man" + page[-1], page))
    r = harness.run([sa, "verify", os.path.join(d, "spoold.service")] +
                    [os.path.join(d, i) for i in links.values()], timeout=60,
                    env=dict(os.environ, MANPATH=man))
    if r.returncode != 0 and "Failed to" in r.out and "bus" in r.out.lower():
        skip("systemd-analyze cannot run here: %s" % r.out.strip()[-200:])
    bad = [l for l in r.out.splitlines() if "Unknown" in l or "Invalid" in l
           or "Failed to parse" in l or "bad-setting" in l or "Ignoring" in l]
    assert r.returncode == 0 and not bad, r.out


# ---- Landlock -------------------------------------------------------------------------

def _landlock_abi():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(.., VERSION)


@test
def splitter_under_landlock_still_splits_and_catches():
    if _landlock_abi() < 2:
        skip("the kernel has no Landlock ABI 2 (Linux 5.19+): the splitter runs unconfined")
    p = Pipeline(scanners=[clamscan()]).start()
    wait_for(lambda: "file access restricted to 7 spool directories" in p.logtext(),
             timeout=20, what="the splitter to confine itself")
    p.drop("clean", msgs.clean())
    p.drop("eicar", msgs.eicar_attachment())
    # A charset the C library loads an iconv module for, late (from /usr, allowed).
    p.drop("koi8", b"From: a@example.org\nTo: b@example.org\nSubject: =?koi8-r?B?8NLJ18XU?=\n"
           b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
           b"Content-Type: text/plain; charset=koi8-r\n\n\xf0\xd2\xc9\xd7\xc5\xd4\n--b\n"
           b"Content-Type: application/octet-stream\nContent-Disposition: attachment; "
           b"filename=\"=?koi8-r?B?8NLJ18XU?=\"\n\nhello\n--b--\n")
    finals = p.wait_final(3)
    places = sorted(f[0] for f in finals)
    assert places == ["outbox/smtp", "outbox/smtp", "quarantine"], (places, p.logtext()[-2000:])


@test
def splitter_under_landlock_cannot_open_a_file_outside_the_spool():
    if not _test_build():
        skip("the probe hook (SPOOLD_TEST_LANDLOCK_PROBE) is compiled into the test build only")
    if _landlock_abi() < 2:
        skip("the kernel has no Landlock ABI 2 (Linux 5.19+): the splitter runs unconfined")
    os.environ["SPOOLD_TEST_LANDLOCK_PROBE"] = "/etc/passwd"
    try:
        p = Pipeline(scanners=[clamscan()]).start()
    finally:
        del os.environ["SPOOLD_TEST_LANDLOCK_PROBE"]
    wait_for(lambda: "landlock probe:" in p.logtext(), timeout=20, what="the probe")
    assert "landlock probe: cannot open /etc/passwd: Permission denied" in p.logtext(), \
        p.logtext()[-2000:]
    # The same process (root, here) could read it before the restriction.
    assert os.access("/etc/passwd", os.R_OK)
    p.drop("eicar", msgs.eicar_attachment())
    (place, _, _), = p.wait_final(1)
    assert place == "quarantine", place


if __name__ == "__main__":
    harness.main()
