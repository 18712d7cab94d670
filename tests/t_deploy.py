#!/usr/bin/env python3
"""Operating a relay (issue 20): an administrator's config typo defers mail instead of
bouncing it and is loud in spoolctl status, the log and the metrics; spoolctl run as root
acts as the spool's user, so the stages can read what it writes."""
import os
import pwd
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


def _metric(p, name):
    try:
        with open(os.path.join(p.spool, "run", "metrics.prom")) as f:
            for line in f:
                if line.startswith(name + " "):
                    return line.split()[1]
    except FileNotFoundError:
        pass
    return None


@test
def config_typo_defers_inject_and_is_loud():
    p = Pipeline(scanners=[clamscan()], extra="metrics = { interval = 1; };\n").start()
    good = open(p.conf).read()
    assert p.ctl("status").returncode == 0
    wait_for(lambda: _metric(p, "spoold_config_ok") == "1", timeout=20,
             what="spoold_config_ok 1 in the metrics")
    with open(p.conf, "a") as f:
        f.write("router = { hold_retry_min = ; };\n")  # the typo
    # Postfix's pipe(8) defers on 75 and bounces on 78: a typo must defer.
    r = p.ctl("inject", "-f", "a@example.org", "b@example.org", stdin=msgs.clean())
    assert r.returncode == 75, (r.returncode, r.out)
    assert "config file is broken" in r.out and "deferring" in r.out, r.out
    r = p.ctl("status")
    assert r.returncode == 78 and "config file is broken" in r.out, (r.returncode, r.out)
    # spoold keeps the config in force, says so, and shows it in its status and metrics.
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "new config rejected" in p.logtext(), timeout=20, what="the rejection")
    wait_for(lambda: _metric(p, "spoold_config_ok") == "0", timeout=20,
             what="spoold_config_ok 0 in the metrics")
    # The file is mended, but not yet reloaded: status still says the one in force is
    # not the file on disk, and exits 1.
    with open(p.conf, "w") as f:
        f.write(good)
    r = p.ctl("status")
    assert r.returncode == 1 and "CONFIG REJECTED" in r.out, (r.returncode, r.out)
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: p.ctl("status").returncode == 0, timeout=20, what="status 0 again")
    wait_for(lambda: _metric(p, "spoold_config_ok") == "1", timeout=20,
             what="spoold_config_ok 1 after the good reload")
    # Mail injected once the config is good flows.
    r = p.ctl("inject", "-f", "a@example.org", "b@example.org", stdin=msgs.clean())
    assert r.returncode == 0, r.out
    finals = p.wait_final(1)
    assert finals[0][0] == "outbox/smtp", finals


@test
def status_exits_3_when_spoold_is_not_running():
    p = Pipeline(scanners=[clamscan()]).start()
    assert p.ctl("status").returncode == 0
    p.stop()
    r = p.ctl("status")
    assert r.returncode == 3 and "not running" in r.out and "stale" in r.out, \
        (r.returncode, r.out)


def _nobody_pipeline(extra=""):
    if os.geteuid() != 0:
        harness.skip("needs root: spoolctl drops from root to the configured user")
    nobody = pwd.getpwnam("nobody")
    p = Pipeline(scanners=[clamscan()], extra='user = "nobody";\n' + extra)
    # The stages run as nobody: the config, the signatures and the spool's parents must
    # be reachable for it.
    for d in (os.path.dirname(p.dir), p.dir, os.path.dirname(harness.sigdir())):
        os.chmod(d, 0o755)
    os.chmod(p.conf, 0o644)
    p.start()
    wait_for(lambda: os.stat(os.path.join(p.spool, "inbound")).st_uid == nobody.pw_uid,
             timeout=20, what="spoold to hand the spool to nobody")
    return p, nobody


@test
def spoolctl_as_root_writes_as_the_spool_user():
    p, nobody = _nobody_pipeline()
    qids = []
    for data in (msgs.clean(subject="root inject"), msgs.eicar_attachment()):
        r = p.ctl("inject", "-f", "alice@example.org", "bob@example.com", stdin=data)
        assert r.returncode == 0, r.out
        qids.append(r.out.strip())
    finals = p.wait_final(2)
    places = sorted(f[0] for f in finals)
    # Before: both went to badmail with "Permission denied" (a root-owned 0640 file).
    assert places == ["outbox/smtp", "quarantine"], (places, p.logtext()[-2000:])
    for place, q, path in finals:
        for name in os.listdir(path):
            st = os.lstat(os.path.join(path, name))
            assert st.st_uid == nobody.pw_uid, (place, name, st.st_uid)
    # requeue as root: the entry moves and stays readable for the stages.
    q = [f for f in finals if f[0] == "quarantine"][0][1]
    r = p.ctl("quarantine", "delete", q)
    assert r.returncode == 0, r.out


def _as(uid, gid, groups):
    def become():
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    return become


@test
def control_group_member_controls_stages_but_reads_no_mail():
    import grp
    users = grp.getgrnam("users")
    p, nobody = _nobody_pipeline('control_group = "users";\n')
    r = p.ctl("inject", "-f", "alice@example.org", "bob@example.com", stdin=msgs.eicar_attachment())
    assert r.returncode == 0, r.out
    p.wait_final(1)
    daemon = pwd.getpwnam("daemon")
    member = _as(daemon.pw_uid, daemon.pw_gid, [users.gr_gid])
    outsider = _as(daemon.pw_uid, daemon.pw_gid, [])
    argv = [harness.bin_path("spoolctl"), "-c", p.conf]
    # Before: the spool and run/ were 0750, and a member got "Permission denied".
    r = harness.run(argv + ["pause", "router"], preexec_fn=member, timeout=30)
    assert r.returncode == 0, r.out
    r = harness.run(argv + ["resume", "router"], preexec_fn=member, timeout=30)
    assert r.returncode == 0, r.out
    r = harness.run(argv + ["pause", "router"], preexec_fn=outsider, timeout=30)
    assert r.returncode != 0 and "Permission denied" in r.out, r.out
    # The group reaches the socket, and no mail: listing or reading a state directory fails.
    for state in ("inbound", "quarantine", "outbox"):
        r = harness.run(["ls", os.path.join(p.spool, state)], preexec_fn=member, timeout=10)
        assert r.returncode != 0 and "Permission denied" in r.out, (state, r.out)
    q = p.entries("quarantine")[0]
    r = harness.run(["cat", os.path.join(p.spool, "quarantine", q, "message")],
                    preexec_fn=member, timeout=10)
    assert r.returncode != 0, r.out


@test
def spoolctl_as_root_with_unknown_user_refuses():
    if os.geteuid() != 0:
        harness.skip("needs root: spoolctl drops from root to the configured user")
    p = Pipeline(scanners=[clamscan()], extra='user = "no-such-user-spoold";\n')
    r = p.ctl("inject", "-f", "a@example.org", "b@example.org", stdin=msgs.clean())
    assert r.returncode == 78 and "no such user" in r.out, (r.returncode, r.out)


@test
def reload_that_changes_user_says_it_needs_a_restart():
    p = Pipeline(scanners=[clamscan()]).start()
    with open(p.conf) as f:
        # The separated pass already names a user: change it, as an administrator would.
        text = "".join(l for l in f if not l.startswith("user ="))
    with open(p.conf, "w") as f:
        f.write(text + 'user = "nobody";\n')
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "takes effect only when spoold itself restarts" in p.logtext(),
             timeout=20, what="the reload to say that user needs a restart")


@test
def every_program_has_version():
    for prog in ("spoold", "spoolctl", "splitter", "scanner-runner", "router", "lmtpd",
                 "connector-smtp", "connector-maildir"):
        r = harness.run([harness.bin_path(prog), "--version"], timeout=10)
        assert r.returncode == 0 and r.out.startswith("%s (spoold) " % prog), (prog, r.out)
    with open(os.path.join(harness.ROOT, "VERSION")) as f:
        release = f.read().strip()
    assert release in r.out, (release, r.out)


@test
def logs_fit_the_journal_and_join_the_next_hop():
    from lib.smtpsink import SmtpSink
    sink = SmtpSink(data_replies=["250 2.0.0 Ok: queued as 4Xy7Zq1aBc"])
    harness.cleanup(sink.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % sink.port, retry_min=1,
                                  retry_max=2)])
    # spoold's stderr is the log file; JOURNAL_STREAM names it as journald would.
    open(p.log, "ab").close()
    st = os.stat(p.log)
    os.environ["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
    harness.cleanup(os.environ.pop, "JOURNAL_STREAM", None)
    p.start()
    r = p.ctl("inject", "-f", "a@example.org", "b@example.org", stdin=msgs.clean())
    assert r.returncode == 0, r.out
    wait_for(lambda: sink.messages and not p.outbox(), timeout=60, what="delivery")
    wait_for(lambda: "queued as" in p.logtext(), timeout=10, what="the delivery log line")
    log = p.logtext()
    lines = log.splitlines()
    # Every line has its syslog priority for journald: journalctl -p err finds errors.
    assert lines and all(re.match(r"<[3-7]>", l) for l in lines), lines[:5]
    assert any(l.startswith("<6>spoold[") for l in lines), lines[:5]
    # The reply reads as text (no \x20 for every space) and names the next hop's ID.
    (d,) = [l for l in lines if "delivered connector=smtp" in l]
    assert 'reply="250 2.0.0 Ok: queued as 4Xy7Zq1aBc' in d, d
    assert "\\x20" not in d, d
    # Without JOURNAL_STREAM (a terminal, a file), no prefix.
    r = p.ctl("quarantine", "delete", "00000000000000-000000-0000")
    assert not r.out.startswith("<"), r.out


@test
def status_shows_a_degraded_reason_once_escaped():
    p = Pipeline(scanners=[clamscan()]).start()
    with open(os.path.join(p.spool, "run", "scanners"), "w") as f:
        f.write("scanner name=clamscan state=degraded since=1700000000 "
                "reason=canary\\x20missed\\x20EICAR\\x1b[31m\nend\n")
    out = p.ctl("status").out
    assert "health degraded (canary missed EICAR\\x1b[31m)" in out, out


@test
def flush_hold_retries_held_mail_now_but_not_manual_holds():
    from lib.spool import fake
    p = Pipeline(scanners=[fake("exit7", name="av")]).start()  # hold_retry_min 3600
    qids = [p.inject("a@example.org", ["b@example.org"], msgs.clean(subject="s%d" % i))
            for i in range(3)]
    wait_for(lambda: len(p.entries("hold")) == 3, timeout=60, what="three held messages")
    r = p.ctl("hold", qids[0])  # the operator's own hold stays put
    assert r.returncode == 0, r.out
    # The scanner is mended; without a flush, the held mail would wait an hour.
    with open(p.conf) as f:
        text = f.read()
    with open(p.conf, "w") as f:
        f.write(text.replace(os.path.join(harness.FAKE, "exit7"), os.path.join(harness.FAKE, "av")))
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in p.logtext(), timeout=20, what="the reload")
    r = p.ctl("flush", "hold")
    assert r.returncode == 0 and "flushed 2 held" in r.out and "1 held by hand" in r.out, r.out
    wait_for(lambda: len(p.outbox()) == 2, timeout=60, what="the two flushed messages delivered")
    assert p.entries("hold") == [qids[0]], p.entries("hold")


@test
def flush_outbox_retries_deferred_deliveries_now():
    from lib.smtpsink import SmtpSink
    sink = SmtpSink(data_replies=["451 4.3.0 try later", "250 2.0.0 Ok: queued as X1"])
    harness.cleanup(sink.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % sink.port, retry_min=3600,
                                  retry_max=7200)]).start()
    r = p.ctl("inject", "-f", "a@example.org", "b@example.org", stdin=msgs.clean())
    assert r.returncode == 0, r.out
    wait_for(lambda: "deferred connector=smtp" in p.logtext(), timeout=60, what="a deferral")
    assert len(p.outbox()) == 1 and not sink.messages
    r = p.ctl("flush", "outbox/smtp")
    assert r.returncode == 0 and "flushed 1 message(s) in outbox/smtp" in r.out, r.out
    wait_for(lambda: sink.messages and not p.outbox(), timeout=20,
             what="the deferred message delivered at once")
    r = p.ctl("flush", "outbox/nosuch")
    assert r.returncode == 64, r.out


@test
def requeue_all_with_filters():
    from lib.spool import fake
    p = Pipeline(scanners=[fake("exit7", name="av")]).start()
    for i, to in enumerate(("x@example.org", "y@example.net", "z@example.org")):
        p.inject("a%d@example.com" % i, [to], msgs.clean(subject="r%d" % i))
    wait_for(lambda: len(p.entries("hold")) == 3, timeout=60, what="three held messages")
    with open(p.conf) as f:
        text = f.read()
    with open(p.conf, "w") as f:
        f.write(text.replace(os.path.join(harness.FAKE, "exit7"), os.path.join(harness.FAKE, "av")))
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in p.logtext(), timeout=20, what="the reload")
    r = p.ctl("requeue", "--all", "hold", "--to", "*@example.org", "--reason", "*not scanned clean*")
    assert r.returncode == 0 and "requeued 2 from hold/; 1 did not match" in r.out, r.out
    wait_for(lambda: len(p.outbox()) == 2, timeout=60, what="the two requeued delivered")
    assert len(p.entries("hold")) == 1
    r = p.ctl("requeue", "--all", "outbox")
    assert r.returncode == 64, r.out


def _metrics(p):
    res = {}
    try:
        with open(os.path.join(p.spool, "run", "metrics.prom")) as f:
            for line in f:
                if not line.startswith("#") and " " in line:
                    k, v = line.rsplit(" ", 1)
                    res[k] = float(v)
    except FileNotFoundError:
        pass
    return res


@test
def metrics_count_outcomes_and_scanner_health():
    from lib.smtpsink import SmtpSink
    sink = SmtpSink()
    harness.cleanup(sink.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % sink.port)],
                 extra="metrics = { interval = 1; };\n").start()
    for data in (msgs.clean(subject="one"), msgs.clean(subject="two"), msgs.eicar_attachment()):
        assert p.ctl("inject", "-f", "a@example.org", "b@example.org", stdin=data).returncode == 0
    p.drop("empty", b"")
    want = {'spoold_messages_total{outcome="delivered"}': 2,
            'spoold_messages_total{outcome="quarantined"}': 1,
            'spoold_messages_total{outcome="badmail"}': 1,
            'spoold_scanner_healthy{scanner="clamscan"}': 1}
    wait_for(lambda: all(_metrics(p).get(k) == v for k, v in want.items()), timeout=60,
             what="the counters %s in metrics.prom:\n%s" % (want, _metrics(p)))


@test
def metrics_file_is_readable_by_the_chosen_group_only():
    import grp
    users = grp.getgrnam("users")
    p, nobody = _nobody_pipeline('metrics = { interval = 1; group = "users"; };\n')
    path = os.path.join(p.spool, "run", "metrics.prom")
    wait_for(lambda: os.path.exists(path) and os.stat(path).st_gid == users.gr_gid,
             timeout=20, what="metrics.prom with group users")
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o640 and st.st_uid == nobody.pw_uid, (oct(st.st_mode), st)


if __name__ == "__main__":
    harness.main()
