#!/usr/bin/env python3
"""Deployable by the book (issue 20): `make install` into a temporary root puts the
programs, units, sysusers.d and tmpfiles.d files and the production config in place; the
installed spoold, started the way spoold.service's ExecStart starts it, with the
installed production config (its paths moved under the temporary root), delivers clean
mail once and quarantines EICAR; `make uninstall` removes the programs and keeps the
config and the spool."""
import os
import pwd
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import assert_delivered_clean  # noqa: E402

PREFIX = "/usr/local"  # make install's default, so the build make test made is reused


def _make(*args, timeout=600):
    r = harness.run(["make", "--no-print-directory", "-C", harness.ROOT] + list(args),
                    timeout=timeout)
    assert r.returncode == 0, "make %s failed:\n%s" % (" ".join(args), r.out[-3000:])
    return r


def _installed(root, *path):
    return os.path.join(root, *[p.lstrip("/") for p in path])


def _unit_exec_start(root, unit):
    with open(_installed(root, PREFIX, "lib/systemd/system", unit)) as f:
        text = f.read()
    m = re.search(r"^ExecStart=(.+)$", text, re.M)
    assert m, unit
    return m.group(1).split()


def _moved_conf(root, clamd, reinject, user):
    """The installed production config with its paths moved under root, clamd and the
    next hop pointed at the test's own, as a site would edit it."""
    path = _installed(root, "/etc/spoold/spoold.conf")
    with open(path) as f:
        text = f.read()
    assert 'spool_dir = "/var/spool/spoold";' in text, text[:2000]
    assert 'user = "spoold";' in text, "the production config must drop to spoold"
    text = text.replace('"/var/spool/spoold', '"' + _installed(root, "/var/spool/spoold"))
    text = text.replace('"unix:/run/clamav/clamd.ctl"', '"%s"' % clamd.unix_addr)
    assert 'unix_socket = "/var/spool/postfix/public/spoold-reinject";' in text, \
        "the production config re-injects over Postfix's Unix socket"
    text = text.replace('"/var/spool/postfix/public/spoold-reinject"', '"%s"' % reinject)
    text = text.replace('user = "spoold";', 'user = "%s";' % user)
    with open(path, "w") as f:
        f.write(text)
    return path


def _start_installed(root, conf):
    """The installed spoold, started as spoold.service's ExecStart starts it, with conf;
    returns (stop, log): stop() ends it (also a cleanup), log() its log's tail."""
    argv = _unit_exec_start(root, "spoold.service")
    assert argv == [PREFIX + "/sbin/spoold", "-c", "/etc/spoold/spoold.conf"], argv
    with open(os.path.join(root, "spoold.log"), "ab") as log:
        proc = subprocess.Popen([_installed(root, argv[0]), "-c", conf], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    harness.cleanup(stop)

    def log_tail():
        with open(os.path.join(root, "spoold.log"), errors="replace") as f:
            return f.read()[-3000:]
    return stop, log_tail


@test(timeout=600)
def make_install_then_run_as_the_unit_does():
    if harness.LABEL.endswith("asan"):
        harness.skip("make install installs the production build; it runs once, with prod")
    root = harness.tmpdir("root")
    _make("install", "DESTDIR=" + root)
    for rel in ("sbin/spoold", "bin/spoolctl", "libexec/spoold/splitter",
                "libexec/spoold/scanner-runner", "libexec/spoold/router", "libexec/spoold/lmtpd",
                "libexec/spoold/connector-smtp", "libexec/spoold/connector-maildir",
                "lib/systemd/system/spoold.service", "lib/systemd/system/spoold-stage@.service",
                "lib/systemd/system/spoold-smtp@.service",
                "lib/systemd/system/spoold-maildir@.service",
                "lib/sysusers.d/spoold.conf", "lib/tmpfiles.d/spoold.conf",
                "share/man/man8/spoold.8", "share/man/man8/spoolctl.8",
                "share/man/man5/spoold.conf.5", "share/spoold/postfix/master.cf",
                "share/spoold/postfix/main.cf"):
        assert os.path.exists(_installed(root, PREFIX, rel)), rel
    assert os.path.exists(_installed(root, "/etc/spoold/spoold.conf.dist"))
    argv = _unit_exec_start(root, "spoold.service")
    assert argv == [PREFIX + "/sbin/spoold", "-c", "/etc/spoold/spoold.conf"], argv
    r = harness.run([_installed(root, argv[0]), "--version"])
    assert r.returncode == 0 and r.out.startswith("spoold (spoold) "), r.out

    sink = SmtpSink(unix_path=os.path.join(harness.tmpdir("sink"), "reinject"))
    harness.cleanup(sink.stop)
    # The user and the spool, from the installed sysusers.d and tmpfiles.d files, as the
    # package (or make install into the running system) makes them.
    if os.geteuid() == 0:
        r = harness.run(["systemd-sysusers", _installed(root, PREFIX, "lib/sysusers.d/spoold.conf")])
        assert r.returncode == 0, r.out
        user = "spoold"
        pw = pwd.getpwnam(user)
        # systemd-tmpfiles --root resolves users from the root's own passwd database:
        # give it the machine's, as an image build would have.
        import shutil
        for db in ("passwd", "group"):
            shutil.copy("/etc/" + db, _installed(root, "/etc", db))
        r = harness.run(["systemd-tmpfiles", "--create", "--root=" + root,
                         _installed(root, PREFIX, "lib/tmpfiles.d/spoold.conf")])
        assert r.returncode == 0, r.out
        st = os.stat(_installed(root, "/var/spool/spoold"))
        assert (st.st_uid, st.st_mode & 0o777) == (pw.pw_uid, 0o750), st
        # The installed sysusers.d file put spoold into postdrop, for Postfix's socket.
        import grp
        assert "spoold" in grp.getgrnam("postdrop").gr_mem, grp.getgrnam("postdrop")
        # The stages, as spoold, must reach the temp root, the signatures and the sink.
        for d in (os.path.dirname(root), root, os.path.dirname(harness.sigdir()),
                  os.path.dirname(sink.unix_path)):
            os.chmod(d, 0o755)
        os.chmod(sink.unix_path, 0o666)
    else:
        user = ""
        os.makedirs(_installed(root, "/var/spool/spoold"))

    clamd = Clamd(harness.tmpdir("clamd"), harness.sigdir())
    harness.cleanup(clamd.stop)
    conf = _moved_conf(root, clamd, sink.unix_path, user)
    stop, spoold_log = _start_installed(root, conf)
    spool = _installed(root, "/var/spool/spoold")
    wait_for(lambda: os.path.exists(os.path.join(spool, "run", "status")), timeout=30,
             what="the installed spoold to start; its log:\n" + spoold_log())
    ctl = [_installed(root, PREFIX, "bin/spoolctl"), "-c", conf]
    clean = msgs.clean(subject="installed relay")
    for data in (clean, msgs.eicar_attachment()):
        r = harness.run(ctl + ["inject", "-f", "alice@example.org", "bob@example.com"],
                        input=data, stdin=None, timeout=30)
        assert r.returncode == 0, r.out
    wait_for(lambda: len(sink.messages) >= 1 and os.listdir(os.path.join(spool, "quarantine")),
             timeout=120, what="delivery and quarantine; log:\n" +
             open(os.path.join(root, "spoold.log"), errors="replace").read()[-3000:])
    time.sleep(1)
    assert len(sink.messages) == 1, "delivered more than once: %d" % len(sink.messages)
    frm, rcpts, data = sink.messages[0]
    assert rcpts == ["<bob@example.com>"] and b"installed relay" in data, sink.messages[0]
    assert_delivered_clean([("sink", data)], spool=spool)
    r = harness.run(ctl + ["status"], timeout=30)
    assert r.returncode == 0, r.out
    stop()

    _make("uninstall", "DESTDIR=" + root)
    assert not os.path.exists(_installed(root, PREFIX, "sbin/spoold"))
    assert not os.path.exists(_installed(root, PREFIX, "libexec/spoold"))
    assert os.path.exists(conf) and os.path.isdir(os.path.join(spool, "quarantine"))


@test(timeout=900)
def installed_relay_behind_postfix_by_the_book():
    """The whole recipe at once: make install into a temp root; the user and the spool
    from the installed sysusers.d and tmpfiles.d files; the installed spoold started as
    its unit starts it, with the installed production config (paths moved under the
    root, clamd and the re-injection socket pointed at the test's own); a throwaway
    Postfix built from docs/postfix.md's master.cf and main.cf, with the installed
    spoolctl in the pipe filter running as spoold. Then: clean mail to a virtual alias
    with always_bcc reaches each mailbox once; EICAR is quarantined; a typo in the config
    defers the mail (Postfix keeps it) and it arrives once the file is mended; spoolctl
    run as root queues mail the stages can read."""
    import grp
    import shutil
    from lib.postfix import Postfix, free_port, listening, need_postfix, section_blocks
    if harness.LABEL.endswith("asan"):
        harness.skip("make install installs the production build; it runs once, with prod")
    need_postfix()
    master_doc = section_blocks("## master.cf")[0]
    main_doc = section_blocks("## main.cf")[0]
    root = harness.tmpdir("root")
    _make("install", "DESTDIR=" + root)
    r = harness.run(["systemd-sysusers", _installed(root, PREFIX, "lib/sysusers.d/spoold.conf")])
    assert r.returncode == 0, r.out
    for db in ("passwd", "group"):
        shutil.copy("/etc/" + db, _installed(root, "/etc", db))
    r = harness.run(["systemd-tmpfiles", "--create", "--root=" + root,
                     _installed(root, PREFIX, "lib/tmpfiles.d/spoold.conf")])
    assert r.returncode == 0, r.out
    assert "spoold" in grp.getgrnam("postdrop").gr_mem, grp.getgrnam("postdrop")
    for d in (os.path.dirname(root), root, os.path.dirname(harness.sigdir())):
        os.chmod(d, 0o755)

    base = harness.tmpdir("pfi")
    os.chmod(base, 0o755)
    queue = os.path.join(base, "postfix", "queue")
    svc = re.search(r"^(\S+)\s+unix\s+n\s+.*\bsmtpd$", master_doc, re.M).group(1)
    reinject = os.path.join(queue, "public", svc)
    clamd = Clamd(harness.tmpdir("clamd"), harness.sigdir())
    harness.cleanup(clamd.stop)
    conf = _moved_conf(root, clamd, reinject, "spoold")
    spoolctl = _installed(root, PREFIX, "bin/spoolctl")
    master = master_doc.replace(PREFIX + "/bin/spoolctl", spoolctl)
    master = master.replace("/etc/spoold/spoold.conf", conf)
    pin = free_port()
    master = "%d inet n - n - - smtpd\n" % pin + master  # the smtp service, on loopback
    pf = Postfix(base, master, main_doc + "always_bcc = archive@test.example\n",
                 boxes=("bob", "carol", "archive"),
                 aliases={"team@test.example": ["bob@test.example", "carol@test.example"]})
    pf.start()
    stop, spoold_log = _start_installed(root, conf)
    spool = _installed(root, "/var/spool/spoold")
    wait_for(lambda: os.path.exists(os.path.join(spool, "run", "status")) and listening(pin)
             and os.path.exists(reinject), timeout=30,
             what="spoold and postfix to start\n%s\n%s" % (spoold_log(), pf.maillog()[-1500:]))

    eicar = os.path.join(base, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(msgs.eicar())
    pf.send(pin, "team@test.example", "to the team", body="for both of you")
    pf.send(pin, "bob@test.example", "infected", attach=eicar)
    wait_for(lambda: pf.mailbox("bob") and pf.mailbox("carol") and pf.mailbox("archive")
             and os.listdir(os.path.join(spool, "quarantine")), timeout=120,
             what="delivery and quarantine\n%s\n%s" % (spoold_log(), pf.maillog()[-2000:]))
    wait_for(pf.queue_empty, timeout=60, what="Postfix's queue to empty")
    time.sleep(2)
    counts = {b: len(pf.mailbox(b)) for b in ("bob", "carol", "archive")}
    assert counts == {"bob": 1, "carol": 1, "archive": 1}, counts

    # An administrator's typo: Postfix defers (inject exits 75), nothing bounces.
    with open(conf) as f:
        good = f.read()
    with open(conf, "a") as f:
        f.write("router = { hold_retry_min = ; };\n")
    pf.send(pin, "bob@test.example", "during the typo", body="wait for me")
    wait_for(lambda: "status=deferred" in pf.maillog(), timeout=60,
             what="postfix to defer\n" + pf.maillog()[-2000:])
    assert "status=bounced" not in pf.maillog(), pf.maillog()[-2000:]
    with open(conf, "w") as f:
        f.write(good)
    pf.flush()
    wait_for(lambda: len(pf.mailbox("bob")) == 2, timeout=120,
             what="the deferred message once the config is mended\n" + pf.maillog()[-2000:])

    # spoolctl run as root: the queue file belongs to spoold, the stages read it.
    r = harness.run([spoolctl, "-c", conf, "inject", "-f", "root@example.org",
                     "bob@test.example"], input=msgs.clean(subject="injected by root"),
                    stdin=None, timeout=30)
    assert r.returncode == 0, r.out
    wait_for(lambda: len(pf.mailbox("bob")) == 3, timeout=120,
             what="the root-injected message delivered\n" + spoold_log())
    assert not os.listdir(os.path.join(spool, "badmail")), os.listdir(os.path.join(spool, "badmail"))
    # Everything that reached a mailbox, rescanned whole and re-split, is clean.
    assert_delivered_clean(pf.mailbox("bob") + pf.mailbox("carol") + pf.mailbox("archive"),
                           spool=spool)
    stop()


if __name__ == "__main__":
    harness.main()
