#!/usr/bin/env python3
"""Re-injection over a Unix socket (issue 14, M7): connector-smtp with unix_socket set
delivers through that socket (libcurl CURLOPT_UNIX_SOCKET_PATH), never over TCP; and the
Postfix side as docs/postfix.md describes it - the master.cf, main.cf, usermod and
spoold.conf snippets are read from the doc, so the recipe cannot drift from what is
tested - takes the re-injected mail from the socket in public/ and delivers it, while a
user outside the postdrop group cannot reach the socket. The Postfix test needs root,
postfix and swaks, and says so when it skips."""
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402


@test
def connector_delivers_over_a_unix_socket():
    d = harness.tmpdir("sock")
    os.chmod(d, 0o700)
    path = os.path.join(d, "smtp")
    sink = SmtpSink(unix_path=path)
    harness.cleanup(sink.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://localhost", unix_socket=path,
                                  helo="spoold-test", retry_min=1, retry_max=2)]).start()
    m = msgs.clean(subject="over the socket")
    qid = p.inject("from@example.org", ["a@example.net"], m)
    wait_for(lambda: sink.messages, timeout=60,
             what="delivery over the Unix socket\n" + p.logtext()[-2000:])
    mail, rcpts, data = sink.messages[0]
    assert mail == "<from@example.org>" and rcpts == ["<a@example.net>"], (mail, rcpts)
    assert data.replace(b"\r\n", b"\n") == m, data[:300]
    wait_for(lambda: p.outbox() == [], timeout=20, what="outbox entry removed")
    assert "via " + path in p.logtext(), p.logtext()[-2000:]
    assert qid


@test
def a_missing_socket_defers_and_never_falls_back_to_tcp():
    d = harness.tmpdir("sock")
    path = os.path.join(d, "absent")
    # A TCP sink on the relay URL's port: it must see nothing.
    tcp = SmtpSink()
    harness.cleanup(tcp.stop)
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % tcp.port, unix_socket=path,
                                  retry_min=1, retry_max=2)]).start()
    p.drop("m", msgs.clean())
    wait_for(lambda: p.outbox() and os.path.exists(
        os.path.join(p.spool, "outbox", "smtp", p.outbox()[0][1], "deliver")), timeout=60,
        what="a deferred outbox entry\n" + p.logtext()[-2000:])
    assert tcp.lines == [] and not p.entries("badmail"), (tcp.lines, p.entries("badmail"))


# ---- Postfix, configured from docs/postfix.md ------------------------------------------
DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "postfix.md")

# The services every Postfix needs, which the doc does not repeat.
BASE_SERVICES = """\
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
"""

MAIN = """\
compatibility_level = 3.6
queue_directory = {q}
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
virtual_alias_maps = texthash:{d}/valias
always_bcc = archive@test.example
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
maillog_file = {d}/maillog
maillog_file_prefixes = /tmp, /var, {d}
smtputf8_enable = no
biff = no
relayhost =
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


def doc_blocks():
    with open(DOC) as f:
        return re.findall(r"^```\n(.*?)^```", f.read(), re.S | re.M)


def doc_block(pred, what):
    found = [b for b in doc_blocks() if pred(b)]
    assert len(found) == 1, "docs/postfix.md: want one %s block, found %d" % (what, len(found))
    return found[0]


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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


def _can_connect(path, user, groups=()):
    """Can a process of this user, with its primary group and groups, connect to it?"""
    pw = pwd.getpwnam(user)
    r = subprocess.run(["/usr/bin/python3", "-c",
                        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                        "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n"
                        " print(e); sys.exit(1)\n", path],
                       user=pw.pw_uid, group=pw.pw_gid, extra_groups=list(groups),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return r.returncode == 0


@test(timeout=600)
def postfix_takes_the_reinjection_on_the_documented_unix_socket():
    if os.geteuid() != 0:
        harness.skip("needs root (a Postfix instance and a pipe transport user)")
    for tool in ("postfix", "swaks", "postqueue"):
        if not shutil.which(tool):
            harness.skip("%s not installed (Debian packages postfix, swaks)" % tool)
    master_doc = doc_block(lambda b: "spoold-reinject" in b and " pipe" in b, "master.cf")
    group_doc = doc_block(lambda b: b.startswith("usermod "), "usermod")
    main_doc = doc_block(lambda b: "spoold_destination_recipient_limit" in b, "main.cf")
    conf_doc = doc_block(lambda b: "connectors = (" in b, "spoold.conf")
    # The recipe as written: a unix smtpd service in public/, no loopback TCP re-injection.
    svc = re.search(r"^(\S+)\s+unix\s+n\s+.*\bsmtpd$", master_doc, re.M)
    assert svc, master_doc
    assert "10026" not in master_doc and "127.0.0.1:" not in master_doc, master_doc
    relay = re.search(r'relay = "([^"]+)";', conf_doc).group(1)
    sock_doc = re.search(r'unix_socket = "([^"]+)";', conf_doc).group(1)
    assert sock_doc == "/var/spool/postfix/public/" + svc.group(1), (sock_doc, svc.group(1))
    m = re.match(r"usermod -a -G (\S+) spoold\n?$", group_doc)
    assert m, group_doc
    group = grp.getgrnam(m.group(1))

    nobody = pwd.getpwnam("nobody")
    base = harness.tmpdir("pf")
    for path in (os.path.dirname(base), base):
        os.chmod(path, 0o755)
    d = os.path.join(base, "postfix")
    q = os.path.join(d, "queue")
    mail = os.path.join(base, "mail")
    for x in (d, q, mail, os.path.join(d, "data")):
        os.makedirs(x)
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    pf = pwd.getpwnam("postfix")
    os.chown(os.path.join(d, "data"), pf.pw_uid, pf.pw_gid)
    # The doc's /var/spool/postfix is the test's queue directory; the spool user is
    # nobody, given the doc's group when it acts as the spool user.
    sock = sock_doc.replace("/var/spool/postfix", q)

    pin = _free_port()
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp", relay=relay,
                                  unix_socket=sock, helo="spoold-test",
                                  retry_min=1, retry_max=2)])
    os.chmod(p.dir, 0o755)
    os.chmod(p.conf, 0o644)
    p.start()
    for root, dirs, files in os.walk(p.spool):
        for x in [root] + [os.path.join(root, f) for f in files]:
            os.chown(x, nobody.pw_uid, nobody.pw_gid)
    master = master_doc.replace("/usr/local/bin/spoolctl", harness.bin_path("spoolctl"))
    master = master.replace("/etc/spoold/spoold.conf", p.conf).replace("user=spoold",
                                                                       "user=nobody")
    # The doc leaves the smtp service as Postfix ships it; here it listens on a free port.
    master = "%d inet n - n - - smtpd\n" % pin + master
    with open(os.path.join(d, "main.cf"), "w") as f:
        f.write(MAIN.format(q=q, d=d, mail=mail, uid=nobody.pw_uid, gid=nobody.pw_gid))
        f.write(main_doc)
    with open(os.path.join(d, "master.cf"), "w") as f:
        f.write(master + BASE_SERVICES)
    with open(os.path.join(d, "vmailbox"), "w") as f:
        f.write("bob@test.example bob/\ncarol@test.example carol/\n"
                "archive@test.example archive/\n")
    # A virtual alias that expands to two addresses, and always_bcc: each mapping must
    # happen once, after the filter (receive_override_options in the doc's main.cf).
    with open(os.path.join(d, "valias"), "w") as f:
        f.write("team@test.example bob@test.example, carol@test.example\n")

    def postfix(*args, check=True):
        r = harness.run(["postfix", "-c", d] + list(args), timeout=60)
        assert not check or r.returncode == 0, "postfix %s: %s\n%s" % (
            " ".join(args), r.out, _maillog(d)[-1500:])
        return r
    postfix("set-permissions", "create-missing", check=False)
    postfix("start")
    harness.cleanup(lambda: postfix("stop", check=False))
    def queue_empty():
        r = harness.run(["postqueue", "-c", d, "-p"], timeout=30)
        return "Mail queue is empty" in r.out

    wait_for(lambda: _listening(pin) and os.path.exists(sock), timeout=30,
             what="postfix to listen on %d and %s\n%s" % (pin, sock, _maillog(d)[-1500:]))
    # The spool user, in the doc's group, can reach the socket; a user without it cannot.
    assert _can_connect(sock, "nobody", [group.gr_gid]), "the spool user cannot reach " + sock
    assert not _can_connect(sock, "nobody"), "nobody without %s reached %s" % (group.gr_name, sock)
    assert not _can_connect(sock, "daemon"), "daemon reached %s" % sock

    eicar = os.path.join(base, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(msgs.eicar())
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: clean one",
                     "--body", "hello over the socket"], timeout=60)
    assert r.returncode == 0, r.out
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: infected one",
                     "--attach", "@" + eicar], timeout=60)
    assert r.returncode == 0, r.out
    newdir = os.path.join(mail, "bob", "new")
    wait_for(lambda: os.path.isdir(newdir) and os.listdir(newdir), timeout=120,
             what="the clean message in the Maildir\n%s\n%s" % (p.logtext()[-2000:],
                                                                 _maillog(d)[-2000:]))
    got = open(os.path.join(newdir, os.listdir(newdir)[0]), "rb").read()
    assert b"hello over the socket" in got and b"Subject: clean one" in got, got[:500]
    wait_for(lambda: p.entries("quarantine"), timeout=60, what="EICAR in quarantine")
    time.sleep(1)
    assert len(os.listdir(newdir)) == 1, "the infected message must not be delivered"

    # One message to the alias: bob and carol get it once each, the archive once (for
    # the bcc of this message; it has the two earlier ones already).
    def count(box):
        nd = os.path.join(mail, box, "new")
        return len(os.listdir(nd)) if os.path.isdir(nd) else 0
    before = {b: count(b) for b in ("bob", "carol", "archive")}
    assert before["archive"] == 1, before  # the clean message above; EICAR went nowhere
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "team@test.example", "--header", "Subject: to the team",
                     "--body", "for both of you"], timeout=60)
    assert r.returncode == 0, r.out
    wait_for(lambda: count("carol") >= 1 and count("archive") >= 2 and
             count("bob") >= before["bob"] + 1, timeout=120,
             what="the alias expanded after the filter\n%s" % _maillog(d)[-2000:])
    wait_for(lambda: queue_empty(), timeout=60, what="Postfix's queue to empty")
    time.sleep(2)
    after = {b: count(b) for b in ("bob", "carol", "archive")}
    assert after == {"bob": before["bob"] + 1, "carol": 1, "archive": 2}, (before, after)
    # Everything that reached a mailbox, rescanned whole and re-split, is clean.
    delivered = []
    for box in ("bob", "carol", "archive"):
        nd = os.path.join(mail, box, "new")
        for n in sorted(os.listdir(nd)):
            with open(os.path.join(nd, n), "rb") as f:
                delivered.append(("%s/%s" % (box, n), f.read()))
    p.assert_delivered_clean(delivered)
    log = _maillog(d)
    # Postfix took the re-injection from a client on the Unix socket (smtpd names it
    # localhost[127.0.0.1]; the TCP listener's clients are unknown[127.0.0.1] here).
    assert re.search(r"client=localhost\[127\.0\.0\.1\]", log), log[-2000:]
    wait_for(lambda: p.outbox() == [], timeout=60, what="the outbox to empty")


def _maillog(d):
    try:
        return open(os.path.join(d, "maillog"), errors="replace").read()
    except FileNotFoundError:
        return ""


if __name__ == "__main__":
    harness.main()
