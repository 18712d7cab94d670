"""A throwaway Postfix instance for the tests, configured from docs/postfix.md.

    blocks = section_blocks("## master.cf")          # fenced code under a heading
    pf = Postfix(base, master=..., main=..., boxes=("bob",), aliases={...}).start()
    pf.send(port, "bob@test.example", "Subject", body="..." | attach=path)
    pf.mailbox("bob") -> [(name, bytes)]; pf.maillog(); pf.queue_empty()

Its own config directory and queue under a temp dir, loopback only, mail for
test.example into Maildirs owned by nobody. Needs root and Debian's postfix and swaks:
need_postfix() skips (with the reason) where they are missing. The services every
instance needs are here (BASE_SERVICES); a test adds the recipe's and its own listeners.
"""
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time

import lib as harness

DOC = os.path.join(harness.ROOT, "docs", "postfix.md")

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


def doc_text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def section_blocks(heading, text=None):
    """The fenced code blocks of the section that starts with the line heading, up to
    the next heading of the same level."""
    text = doc_text() if text is None else text
    assert heading + "\n" in text, "docs/postfix.md has no %r" % heading
    level = heading.split(" ", 1)[0]
    rest = text.split(heading + "\n", 1)[1]
    rest = re.split(r"^%s " % re.escape(level), rest, flags=re.M)[0]
    return re.findall(r"^```\w*\n(.*?)^```", rest, re.S | re.M)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port):
    s = socket.socket()
    try:
        s.settimeout(1)
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def can_connect(path, user, groups=()):
    """Can a process of this user, with its primary group and groups, connect to path?"""
    pw = pwd.getpwnam(user)
    r = subprocess.run(["/usr/bin/python3", "-c",
                        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                        "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n"
                        " print(e); sys.exit(1)\n", path],
                       user=pw.pw_uid, group=pw.pw_gid, extra_groups=list(groups),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return r.returncode == 0


def need_postfix():
    if os.geteuid() != 0:
        harness.skip("needs root (a Postfix instance and a pipe transport user)")
    for tool in ("postfix", "swaks", "postqueue"):
        if not shutil.which(tool):
            harness.skip("%s not installed (Debian packages postfix, swaks)" % tool)


SYSLOG = []


def syslog_catch():
    """Postfix reports fatal start-up errors only to syslog; where nothing listens on
    /dev/log (containers, CI), listen there for the length of the test."""
    if os.path.exists("/dev/log"):
        return
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


class Postfix:
    def __init__(self, base, master, main="", boxes=("bob",), aliases=None):
        """master: the service lines beyond BASE_SERVICES; main: lines after MAIN;
        boxes: Maildirs of test.example; aliases: {address: [targets]}."""
        self.nobody = pwd.getpwnam("nobody")
        self.d = os.path.join(base, "postfix")
        self.queue = os.path.join(self.d, "queue")
        self.mail = os.path.join(base, "mail")
        for x in (self.d, self.queue, self.mail, os.path.join(self.d, "data")):
            os.makedirs(x)
        os.chown(self.mail, self.nobody.pw_uid, self.nobody.pw_gid)
        pf = pwd.getpwnam("postfix")
        os.chown(os.path.join(self.d, "data"), pf.pw_uid, pf.pw_gid)
        with open(os.path.join(self.d, "main.cf"), "w") as f:
            f.write(MAIN.format(q=self.queue, d=self.d, mail=self.mail,
                                uid=self.nobody.pw_uid, gid=self.nobody.pw_gid))
            f.write(main)
        with open(os.path.join(self.d, "master.cf"), "w") as f:
            f.write(master + BASE_SERVICES)
        with open(os.path.join(self.d, "vmailbox"), "w") as f:
            f.write("".join("%s@test.example %s/\n" % (b, b) for b in boxes))
        with open(os.path.join(self.d, "valias"), "w") as f:
            f.write("".join("%s %s\n" % (a, ", ".join(t)) for a, t in (aliases or {}).items()))

    def postfix(self, *args, check=True):
        r = harness.run(["postfix", "-c", self.d] + list(args), timeout=60)
        if check:
            time.sleep(0.2)
            assert r.returncode == 0, "postfix %s: %s %s %s" % (
                " ".join(args), r.out, SYSLOG[-5:], self.maillog()[-1500:])
        return r

    def start(self):
        syslog_catch()
        self.postfix("set-permissions", "create-missing", check=False)
        self.postfix("check", check=False)
        self.postfix("start")
        harness.cleanup(lambda: self.postfix("stop", check=False))
        return self

    def maillog(self):
        try:
            with open(os.path.join(self.d, "maillog"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def queue_empty(self):
        r = harness.run(["postqueue", "-c", self.d, "-p"], timeout=30)
        return "Mail queue is empty" in r.out

    def flush(self):
        harness.run(["postqueue", "-c", self.d, "-f"], timeout=30)

    def mailbox(self, box):
        nd = os.path.join(self.mail, box, "new")
        res = []
        for n in sorted(os.listdir(nd)) if os.path.isdir(nd) else []:
            with open(os.path.join(nd, n), "rb") as f:
                res.append(("%s/%s" % (box, n), f.read()))
        return res

    def send(self, port, to, subject, body=None, attach=None, sender="alice@example.org"):
        argv = ["swaks", "--server", "127.0.0.1:%d" % port, "--from", sender, "--to", to,
                "--header", "Subject: " + subject]
        if body is not None:
            argv += ["--body", body]
        if attach is not None:
            argv += ["--attach", "@" + attach]
        r = harness.run(argv, timeout=60)
        assert r.returncode == 0, r.out
        return r
