#!/usr/bin/env python3
"""Postfix in, lmtpd, spoold, connector-smtp, Postfix out (issue 19): the "advanced"
content filter set-up, configured from the recipe in docs/postfix.md itself.

The code blocks under "## The LMTP intake (advanced content filter)" are parsed and used
with the few changes a throwaway instance needs (each one is in _recipe()): loopback
ports for the smtp and re-injection listeners, the test spool's socket path, no chroot
(the instance has no chroot tree). swaks sends a clean and an EICAR message; the clean
one reaches the Maildir once, EICAR is quarantined. Skipped, with the reason, where there
is no root, no postfix or no swaks."""
import os
import pwd
import re
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

# ---- a throwaway Postfix, as tests/py runs one (copied: importing that file
# would register its tests here too) ----
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



HEADING = "## The LMTP intake (advanced content filter)"
DOC_SOCKET = "/var/spool/spoold/run/lmtp"

# The services every Postfix instance needs (t_postfix's list without its listeners and
# its pipe filter): the recipe's master.cf lines come on top.
BASE_SERVICES = "\n".join(
    ln for ln in MASTER.splitlines()
    if ln and not ln.startswith(("{", " ", "spoold "))) + "\n"


def recipe_blocks():
    """{subheading: code} of the fenced blocks under HEADING in docs/postfix.md."""
    with open(os.path.join(harness.ROOT, "docs", "postfix.md"), encoding="utf-8") as f:
        text = f.read()
    assert HEADING in text, "docs/postfix.md has no section %r" % HEADING
    section = text.split(HEADING, 1)[1]
    section = re.split(r"^## ", section, flags=re.M)[0]
    res = {}
    for m in re.finditer(r"^### (.+?)\n(.*?)(?=^### |\Z)", section, re.S | re.M):
        code = re.findall(r"^```\n(.*?)^```", m.group(2), re.S | re.M)
        if code:
            res[m.group(1).strip()] = "".join(code)
    for k in ("spoold.conf", "master.cf", "main.cf"):
        assert k in res, "no %s code block under %r: %s" % (k, HEADING, sorted(res))
    return res


def _recipe(blocks, pin, pout, sock):
    """The recipe's master.cf and main.cf with this instance's ports and socket."""
    master = blocks["master.cf"]
    assert DOC_SOCKET in master and re.search(r"^smtp\s+inet", master, re.M), master
    assert re.search(r"^127\.0\.0\.1:10026\s+inet", master, re.M), master
    master = master.replace(DOC_SOCKET, sock)
    # The public smtp listener becomes a loopback port, without chroot.
    master = re.sub(r"^smtp(\s+inet\s+\S+\s+\S+\s+)y(\s)", r"127.0.0.1:%d\1n\2" % pin, master,
                    flags=re.M)
    master = re.sub(r"^127\.0\.0\.1:10026", "127.0.0.1:%d" % pout, master, flags=re.M)
    assert "10026" not in master and DOC_SOCKET not in master, master
    main = blocks["main.cf"]
    return master, main


@test(timeout=600)
def postfix_lmtp_spoold_postfix_from_the_documented_recipe():
    blocks = recipe_blocks()  # the recipe parses even where Postfix cannot run
    if os.geteuid() != 0:
        harness.skip("needs root (a Postfix instance)")
    for tool in ("postfix", "swaks", "postqueue"):
        if not shutil.which(tool):
            harness.skip("%s not installed (Debian packages postfix, swaks)" % tool)
    nobody = pwd.getpwnam("nobody")
    pf = pwd.getpwnam("postfix")
    base = harness.tmpdir("pfl")
    for path in (os.path.dirname(base), base):
        os.chmod(path, 0o755)
    pin, pout = free_port(), free_port()
    # spoold.conf's lmtp group exactly as documented, but for the socket's path.
    lmtp_conf = blocks["spoold.conf"]
    assert DOC_SOCKET in lmtp_conf, lmtp_conf
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp",
                                  relay="smtp://127.0.0.1:%d" % pout, helo="spoold-test",
                                  retry_min=1, retry_max=2)],
                 extra="PLACEHOLDER")
    sock = os.path.join(p.spool, "run", "lmtp")
    with open(p.conf) as f:
        text = f.read().replace("PLACEHOLDER", lmtp_conf.replace(DOC_SOCKET, sock))
    with open(p.conf, "w") as f:
        f.write(text)
    os.chmod(p.dir, 0o755)
    p.start()
    wait_for(lambda: os.path.exists(sock), timeout=30, what="lmtpd's socket")
    # "usermod -a -G spoold postfix": here spoold runs as root, so the spool's group (and
    # the socket's) becomes postfix's group; the modes stay as spoold made them.
    for path in (p.spool, os.path.join(p.spool, "run"), sock):
        os.chown(path, -1, pf.pw_gid)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660", oct(os.stat(sock).st_mode)

    d = os.path.join(base, "postfix")
    mail = os.path.join(base, "mail")
    os.makedirs(d)
    os.makedirs(mail)
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    master, main = _recipe(blocks, pin, pout, sock)
    main_base = "\n".join(ln for ln in MAIN.splitlines()
                          if not ln.startswith("spoold_destination"))
    with open(os.path.join(d, "main.cf"), "w") as f:
        f.write(main_base.format(d=d, mail=mail, uid=nobody.pw_uid, gid=nobody.pw_gid) +
                "\n" + main)
    with open(os.path.join(d, "master.cf"), "w") as f:
        f.write(BASE_SERVICES + master)
    with open(os.path.join(d, "vmailbox"), "w") as f:
        f.write("bob@test.example bob/\n")
    syslog_catch()
    os.makedirs(os.path.join(d, "queue"))
    os.makedirs(os.path.join(d, "data"))
    os.chown(os.path.join(d, "data"), pf.pw_uid, pf.pw_gid)
    postfix(d, "set-permissions", "create-missing", check=False)
    postfix(d, "check", check=False)
    postfix(d, "start")
    harness.cleanup(lambda: postfix(d, "stop", check=False))
    wait_for(lambda: _listening(pin) and _listening(pout), timeout=30,
             what="postfix to listen")

    eicar = os.path.join(base, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(msgs.eicar())
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: clean over lmtp",
                     "--body", "hello through lmtpd\n.leading dot line"], timeout=60)
    assert r.returncode == 0, r.out
    r = harness.run(["swaks", "--server", "127.0.0.1:%d" % pin, "--from", "alice@example.org",
                     "--to", "bob@test.example", "--header", "Subject: infected over lmtp",
                     "--attach", "@" + eicar], timeout=60)
    assert r.returncode == 0, r.out
    newdir = os.path.join(mail, "bob", "new")
    wait_for(lambda: os.path.isdir(newdir) and os.listdir(newdir), timeout=120,
             what="the clean message in the Maildir; maillog:\n%s\nspoold log:\n%s"
             % (_maillog(d)[-2000:], p.logtext()[-2000:]))
    got = open(os.path.join(newdir, os.listdir(newdir)[0]), "rb").read()
    assert b"hello through lmtpd" in got and b"Subject: clean over lmtp" in got, got[:500]
    assert b"\n.leading dot line" in got, "dot-stuffing was not undone once: %r" % got[-200:]
    wait_for(lambda: p.entries("quarantine"), timeout=60, what="EICAR in quarantine")
    wait_for(lambda: queue_empty(d), timeout=60, what="Postfix's queue to empty")
    assert len(os.listdir(newdir)) == 1, "delivered %d times" % len(os.listdir(newdir))
    maillog = _maillog(d)
    assert re.search(r"relay=spoold-lmtp\b|relay=.*lmtp.*status=sent", maillog), maillog[-2000:]
    # Both went through lmtpd (not a pipe), XFORWARD told it the original client.
    log = p.logtext()
    queued = [ln for ln in log.splitlines() if "lmtpd" in ln and " queued " in ln]
    assert len(queued) == 2 and all("addr=127.0.0.1" in ln for ln in queued), queued
    assert p.outbox() == [], "outbox entries left: %s" % p.outbox()
    # What reached the mailbox, through Postfix, rescanned whole and re-split, is clean.
    p.assert_delivered_clean([("Maildir/" + n, open(os.path.join(newdir, n), "rb").read())
                              for n in sorted(os.listdir(newdir))])


@test
def the_recipe_is_complete():
    """Without Postfix: the section exists and its blocks carry what the set-up needs."""
    blocks = recipe_blocks()
    master, main = _recipe(blocks, 20025, 20026, "/x/run/lmtp")
    assert "content_filter=spoold-lmtp:unix:/x/run/lmtp" in master, master
    assert re.search(r"^spoold-lmtp\s+unix\s.*\slmtp$", master, re.M), master
    assert "spoold-lmtp_destination_recipient_limit" in main, main
    assert re.search(r"enabled\s*=\s*true", blocks["spoold.conf"]), blocks["spoold.conf"]


if __name__ == "__main__":
    harness.main()
