#!/usr/bin/env python3
"""Real MTA integration (issue 9): Postfix in, Postfix out, on loopback only.

A throwaway Postfix instance (own config directory and queue in a temp dir) listens on two
loopback ports: IN hands every message to `spoolctl inject` through a pipe(8) content
filter; OUT takes the re-injection from connector-smtp and delivers test.example into a
Maildir. swaks sends a clean and an EICAR message into IN. Skipped, with the reason,
where there is no root, no postfix or no swaks."""
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

MASTER = """\
{inp} inet n - n - - smtpd -o content_filter=spoold:dummy
{out} inet n - n - - smtpd -o content_filter= -o smtpd_recipient_restrictions=permit_mynetworks,reject
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
spoold unix - n n - 10 pipe
  flags=Rq user=nobody argv={spoolctl} -c {conf} inject -f ${{sender}} -- ${{recipient}}
"""

MAIN = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = spoold-test.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
virtual_mailbox_domains = test.example
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{d}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
maillog_file = {d}/maillog
maillog_file_prefixes = /tmp, /var, {d}
smtputf8_enable = no
biff = no
relayhost =
spoold_destination_recipient_limit = 1
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


SYSLOG = []


def syslog_catch():
    """Postfix reports fatal start-up errors only to syslog; where nothing listens on
    /dev/log (containers, CI), listen there for the length of the test."""
    if os.path.exists("/dev/log"):
        return
    import threading
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    sock.settimeout(0.5)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                SYSLOG.append(sock.recv(8192).decode(errors="replace"))
            except socket.timeout:
                pass

    th = threading.Thread(target=loop, daemon=True)
    th.start()

    def done():
        stop.set()
        th.join()
        sock.close()
        os.unlink("/dev/log")
    harness.cleanup(done)


def postfix(d, *args, check=True):
    r = harness.run(["postfix", "-c", d] + list(args), timeout=60)
    if check:
        time.sleep(0.2)
        assert r.returncode == 0, "postfix %s: %s %s %s" % (" ".join(args), r.out, SYSLOG[-5:],
                                                            _maillog(d)[-1500:])
    return r


def queue_empty(d):
    r = harness.run(["postqueue", "-c", d, "-p"], timeout=30)
    return "Mail queue is empty" in r.out


@test(timeout=600)
def postfix_in_spoold_postfix_out():
    if os.geteuid() != 0:
        harness.skip("needs root (a Postfix instance and a pipe transport user)")
    for tool in ("postfix", "swaks", "postqueue"):
        if not shutil.which(tool):
            harness.skip("%s not installed (Debian packages postfix, swaks)" % tool)
    nobody = pwd.getpwnam("nobody")
    base = harness.tmpdir("pf")
    # The pipe transport runs spoolctl as nobody: it must reach the config and the spool.
    p_dir = os.path.dirname(base)
    for path in (p_dir, base):
        os.chmod(path, 0o755)
    pin, pout = free_port(), free_port()
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % pout, helo="spoold-test",
                                  retry_min=1, retry_max=2)])
    os.chmod(p.dir, 0o755)
    os.chmod(p.conf, 0o644)
    p.start()
    # The pipe transport runs as the spool's owner (here nobody; in production the
    # spoold user, see docs/postfix.md).
    for root, dirs, files in os.walk(p.spool):
        for x in [root] + [os.path.join(root, f) for f in files]:
            os.chown(x, nobody.pw_uid, nobody.pw_gid)
    conn = p.stage("connector-smtp", once=False, args=["-n", "smtp"])
    d = os.path.join(base, "postfix")
    mail = os.path.join(base, "mail")
    os.makedirs(d)
    os.makedirs(mail)
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    with open(os.path.join(d, "main.cf"), "w") as f:
        f.write(MAIN.format(d=d, mail=mail, uid=nobody.pw_uid, gid=nobody.pw_gid))
    with open(os.path.join(d, "master.cf"), "w") as f:
        f.write(MASTER.format(inp=pin, out=pout, spoolctl=harness.bin_path("spoolctl"), conf=p.conf))
    with open(os.path.join(d, "vmailbox"), "w") as f:
        f.write("bob@test.example bob/\n")
    syslog_catch()
    os.makedirs(os.path.join(d, "queue"))
    os.makedirs(os.path.join(d, "data"))
    pf = pwd.getpwnam("postfix")
    os.chown(os.path.join(d, "data"), pf.pw_uid, pf.pw_gid)
    postfix(d, "set-permissions", "create-missing", check=False)
    postfix(d, "check", check=False)
    postfix(d, "start")
    harness.cleanup(lambda: postfix(d, "stop", check=False))
    wait_for(lambda: _listening(pin) and _listening(pout), timeout=30, what="postfix to listen")

    eicar = os.path.join(base, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(msgs.eicar())
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: clean one",
                     "--body", "hello through spoold"], timeout=60)
    assert r.returncode == 0, r.out
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: infected one",
                     "--attach", "@" + eicar], timeout=60)
    assert r.returncode == 0, r.out
    newdir = os.path.join(mail, "bob", "new")
    wait_for(lambda: os.path.isdir(newdir) and os.listdir(newdir), timeout=120,
             what="the clean message in the Maildir; spoold log:\n" + p.logtext()[-2000:])
    got = open(os.path.join(newdir, os.listdir(newdir)[0]), "rb").read()
    assert b"hello through spoold" in got and b"Subject: clean one" in got, got[:500]
    wait_for(lambda: p.entries("quarantine"), timeout=60, what="EICAR in quarantine")
    assert len(os.listdir(newdir)) == 1, "the infected message must not be delivered"
    wait_for(lambda: queue_empty(d), timeout=60, what="Postfix's queue to empty")

    # The spool becomes unwritable: spoolctl exits 75, Postfix defers and keeps the mail.
    os.chmod(os.path.join(p.spool, "tmp"), 0o500)
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: deferred one",
                     "--body", "held back by postfix"], timeout=60)
    assert r.returncode == 0, r.out
    wait_for(lambda: "status=deferred" in _maillog(d), timeout=60,
             what="postfix to defer:\n" + _maillog(d)[-2000:])
    assert not queue_empty(d)
    os.chmod(os.path.join(p.spool, "tmp"), 0o755)
    harness.run(["postqueue", "-c", d, "-f"], timeout=30)
    wait_for(lambda: len(os.listdir(newdir)) == 2, timeout=120,
             what="the deferred message delivered once the spool is back")
    wait_for(lambda: queue_empty(d), timeout=60, what="Postfix's queue to empty")
    assert p.outbox() == [], "outbox entries left: %s" % p.outbox()
    # What reached the mailbox, through Postfix, rescanned whole and re-split, is clean.
    p.assert_delivered_clean([("Maildir/" + n, open(os.path.join(newdir, n), "rb").read())
                              for n in sorted(os.listdir(newdir))])
    conn.terminate()


def _listening(port):
    s = socket.socket()
    try:
        s.settimeout(1)
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _maillog(d):
    try:
        return open(os.path.join(d, "maillog"), errors="replace").read()
    except FileNotFoundError:
        return ""


if __name__ == "__main__":
    harness.main()
