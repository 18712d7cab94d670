#!/usr/bin/env python3
"""Logs (issue 6): one line per event with the queue ID and key=value fields, on stderr
or, selected in the config, on syslog (facility mail)."""
import fcntl
import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


@test
def stderr_lines_carry_the_queue_id():
    p = Pipeline(scanners=[clamscan()])
    p.stage("splitter")  # creates the spool
    qid = p.inject("a@example.org", ["b@example.org"], msgs.eicar_attachment())
    outs = [r.out for r in p.pass_all()]
    lines = [l for o in outs for l in o.splitlines() if qid in l]
    assert lines, outs
    for l in lines:
        assert re.match(r"^(splitter|scanner-runner|router)\[\d+\]: \w+: qid=%s " % qid, l), l
    assert any("virus=Spoold.Test.EICAR" in l for l in lines), lines


DEVLOG_LOCK = "/run/lock/spoold-test-devlog.lock"


def _syslog_socket():
    """A datagram socket standing in for /dev/log, and the environment that points the
    programs at it. The test build sends syslog messages to $SPOOLD_TEST_SYSLOG_SOCKET
    (lib/log.c), so no syslog daemon is displaced and the test runs on any host. The
    production build always sends to /dev/log: it is tested there only where /dev/log is
    free to bind (as root, with no syslog daemon)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if "asan" in (harness.BIN or ""):
        path = os.path.join(harness.tmpdir("syslog"), "log")
        sock.bind(path)
        os.chmod(path, 0o666)  # any stage user may connect, as to clamd, /dev/log
        harness.cleanup(sock.close)
        env = {"SPOOLD_TEST_SYSLOG_SOCKET": path}
    elif os.geteuid() != 0:
        sock.close()
        harness.skip("production build: binding /dev/log needs root; the ASan build runs "
                     "this with its own socket")
    else:
        # /dev/log is one for the machine, and run.py runs this file for two passes side
        # by side: each holds the lock from bind to unlink.
        lock = os.open(DEVLOG_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        harness.cleanup(os.close, lock)
        if os.path.exists("/dev/log"):
            sock.close()
            harness.skip("production build: /dev/log is a syslog daemon's; the ASan build "
                         "runs this with its own socket")
        sock.bind("/dev/log")
        harness.cleanup(lambda: (sock.close(), os.unlink("/dev/log")))
        os.chmod("/dev/log", 0o666)  # as a syslog daemon's: every stage user may send
        env = {}
    sock.settimeout(0.2)
    return sock, env


def _syslog_read(sock):
    got = []
    try:
        while True:
            got.append(sock.recv(8192).decode(errors="replace"))
    except socket.timeout:
        pass
    return got


@test
def syslog_target_sends_to_the_syslog_socket_with_facility_mail():
    sock, env = _syslog_socket()
    p = Pipeline(scanners=[clamscan()])
    with open(p.conf) as f:
        text = f.read().replace('log = { level = "debug"; };', 'log = { target = "syslog"; level = "info"; };')
    with open(p.conf, "w") as f:
        f.write(text)
    p.stage("splitter", env=env)  # creates the spool
    qid = p.inject("a@example.org", ["b@example.org"], msgs.clean())
    r = p.stage("splitter", env=env)
    assert r.returncode == 0 and qid not in r.out, "logged to stderr instead: " + r.out
    got = _syslog_read(sock)
    mine = [g for g in got if qid in g]
    assert mine, "no syslog line with the queue ID: %s" % got
    # <PRI> = facility mail (2) * 8 + severity info (6) = 22, then what syslog(3) sends:
    # "Mmm dd hh:mm:ss splitter[pid]: info: qid=..."
    for g in mine:
        assert re.match(r"^<22>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d splitter\[\d+\]: info: qid=%s " % qid,
                        g), g
    # Nothing of the message went to stderr, and nothing but syslog lines to the socket.
    assert all(re.match(r"^<\d+>", g) for g in got), got


@test
def audit_lines_reach_syslog_when_logging_to_stderr():
    """An operator's action (spoolctl) logs to the terminal and also to the mail log, with
    facility mail, severity notice and the operator's uid."""
    sock, env = _syslog_socket()
    p = Pipeline(scanners=[clamscan()])
    p.stage("splitter", env=env)  # creates the spool
    qid = p.inject("a@example.org", ["b@example.org"], msgs.clean())
    p.stage("splitter", env=env)  # to scan/: deleting it there is an audited action
    r = harness.run([harness.bin_path("spoolctl"), "-c", p.conf, "delete", qid], env=dict(os.environ, **env),
                    timeout=30)
    assert r.returncode == 0, r.out
    got = [g for g in _syslog_read(sock) if qid in g]
    # <PRI> = mail (2) * 8 + notice (5) = 21
    assert got and all(re.match(r"^<21>.* spoolctl\[\d+\]: info: qid=%s uid=%d " % (qid, os.getuid()), g)
                       for g in got), got


if __name__ == "__main__":
    harness.main()
