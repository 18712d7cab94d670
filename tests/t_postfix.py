#!/usr/bin/env python3
"""Postfix in, spoold, Postfix out, configured from docs/postfix.md itself (issues 9, 14,
20): the master.cf, main.cf, usermod and spoold.conf blocks of the doc are used as
written, with only what a throwaway instance needs changed (a loopback smtp listener, the
test's paths, the spool user nobody). Mail goes in over SMTP, through the pipe(8) filter
(spoolctl inject -q), spoold, and back through the Unix-socket re-injection service into
Maildirs: clean mail arrives once, also through always_bcc and a virtual alias that
expands to two addresses (the doc's no_address_mappings); EICAR is quarantined; only the
postdrop group reaches the re-injection socket; an unwritable spool makes Postfix defer,
and the mail arrives once the spool is back. Everything that reached a mailbox, rescanned
whole and re-split, is clean. Skipped, with the reason, without root, postfix or swaks."""
import grp
import os
import pwd
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.postfix import (Postfix, can_connect, free_port, listening, need_postfix,  # noqa: E402
                         section_blocks)
from lib.spool import Pipeline, clamscan  # noqa: E402


def recipe():
    """The doc's blocks: master.cf (spoold's two services), the usermod line, main.cf,
    and the connector of spoold.conf."""
    master, usermod = section_blocks("## master.cf")[:2]
    (main,) = section_blocks("## main.cf")[:1]
    conf = section_blocks("## spoold.conf")[0]
    return master, usermod, main, conf


@test
def the_recipe_filters_every_way_in_and_reinjects_over_a_socket():
    """Without Postfix: what the blocks must say."""
    master, usermod, main, conf = recipe()
    assert "content_filter = spoold:dummy" in main, main
    assert "receive_override_options = no_address_mappings" in main, main
    assert re.search(r"inject -q \$\{queue_id\}", master), master
    svc = re.search(r"^(\S+)\s+unix\s+n\s+.*\bsmtpd$", master, re.M)
    assert svc and "-o content_filter=\n" in master + "\n", master
    assert "10026" not in master and "127.0.0.1:" not in master, master
    sock = re.search(r'unix_socket = "([^"]+)";', conf).group(1)
    assert sock == "/var/spool/postfix/public/" + svc.group(1), (sock, svc.group(1))
    assert re.match(r"usermod -a -G postdrop spoold\n?$", usermod), usermod


@test(timeout=600)
def postfix_spoold_postfix_from_the_documented_recipe():
    master_doc, usermod, main_doc, conf_doc = recipe()
    need_postfix()
    svc = re.search(r"^(\S+)\s+unix\s+n\s+.*\bsmtpd$", master_doc, re.M).group(1)
    relay = re.search(r'relay = "([^"]+)";', conf_doc).group(1)
    group = grp.getgrnam(re.match(r"usermod -a -G (\S+) spoold", usermod).group(1))
    nobody = pwd.getpwnam("nobody")
    base = harness.tmpdir("pf")
    for path in (os.path.dirname(base), base):
        os.chmod(path, 0o755)
    # The doc's /var/spool/postfix is this instance's queue; its spool user is nobody
    # (in the doc's group when it acts as the spool user).
    q = os.path.join(base, "postfix", "queue")
    sock = os.path.join(q, "public", svc)
    pin = free_port()
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp", relay=relay,
                                  unix_socket=sock, helo="spoold-test",
                                  retry_min=1, retry_max=2)])
    os.chmod(p.dir, 0o755)
    os.chmod(p.conf, 0o644)
    spool_user = "nobody"
    if p.separated:
        # The spool is the throwaway spool user's; the connectors run as their own user,
        # which the doc puts into the group instead (dist/spoold.sysusers does it).
        from lib import privsep
        spool_user = privsep.SPOOL_USER
        harness.run(["usermod", "-a", "-G", group.gr_name, privsep.ROLES["connector_user"]],
                    check=True)
    p.start()
    if not p.separated:
        for root, dirs, files in os.walk(p.spool):
            for x in [root] + [os.path.join(root, f) for f in files]:
                try:
                    os.chown(x, nobody.pw_uid, nobody.pw_gid)
                except FileNotFoundError:
                    pass  # a running stage's temporary file (run/status.tmp), renamed away

    master = master_doc.replace("/usr/local/bin/spoolctl", harness.bin_path("spoolctl"))
    master = master.replace("/etc/spoold/spoold.conf", p.conf).replace("user=spoold",
                                                                       "user=" + spool_user)
    # The doc leaves the smtp service as Postfix ships it; here it is a loopback port.
    master = "%d inet n - n - - smtpd\n" % pin + master
    pf = Postfix(base, master, main_doc, boxes=("bob", "carol", "archive"),
                 aliases={"team@test.example": ["bob@test.example", "carol@test.example"]})
    with open(os.path.join(pf.d, "main.cf"), "a") as f:
        f.write("always_bcc = archive@test.example\n")
    pf.start()
    wait_for(lambda: listening(pin) and os.path.exists(sock), timeout=30,
             what="postfix to listen on %d and %s\n%s" % (pin, sock, pf.maillog()[-1500:]))
    # The spool user, in the doc's group, reaches the socket; users without it do not.
    assert can_connect(sock, "nobody", [group.gr_gid]), "the spool user cannot reach " + sock
    assert not can_connect(sock, "nobody"), "nobody without %s reached %s" % (group.gr_name, sock)
    assert not can_connect(sock, "daemon"), "daemon reached %s" % sock

    eicar = os.path.join(base, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(msgs.eicar())
    pf.send(pin, "bob@test.example", "clean one", body="hello through spoold")
    pf.send(pin, "bob@test.example", "infected one", attach=eicar)
    wait_for(lambda: pf.mailbox("bob"), timeout=120,
             what="the clean message in the Maildir\n%s\n%s" % (p.logtext()[-2000:],
                                                                 pf.maillog()[-2000:]))
    got = pf.mailbox("bob")[0][1]
    assert b"hello through spoold" in got and b"Subject: clean one" in got, got[:500]
    wait_for(lambda: p.entries("quarantine"), timeout=60, what="EICAR in quarantine")
    time.sleep(1)
    assert len(pf.mailbox("bob")) == 1, "the infected message must not be delivered"
    # Postfix took the re-injection from a client on the Unix socket.
    assert re.search(r"client=localhost\[127\.0\.0\.1\]", pf.maillog()), pf.maillog()[-2000:]

    # One message to the alias: bob and carol once each, the archive once for it (it has
    # the clean one above already). Without no_address_mappings the archive got three.
    pf.send(pin, "team@test.example", "to the team", body="for both of you")
    wait_for(lambda: pf.mailbox("carol") and len(pf.mailbox("archive")) >= 2 and
             len(pf.mailbox("bob")) >= 2, timeout=120,
             what="the alias expanded after the filter\n%s" % pf.maillog()[-2000:])
    wait_for(pf.queue_empty, timeout=60, what="Postfix's queue to empty")
    time.sleep(2)
    counts = {b: len(pf.mailbox(b)) for b in ("bob", "carol", "archive")}
    assert counts == {"bob": 2, "carol": 1, "archive": 2}, counts

    # The spool becomes unwritable: spoolctl exits 75, Postfix defers and keeps the mail.
    os.chmod(os.path.join(p.spool, "tmp"), 0o500)
    pf.send(pin, "bob@test.example", "deferred one", body="held back by postfix")
    wait_for(lambda: "status=deferred" in pf.maillog(), timeout=60,
             what="postfix to defer:\n" + pf.maillog()[-2000:])
    assert not pf.queue_empty()
    os.chmod(os.path.join(p.spool, "tmp"), 0o755)
    pf.flush()
    wait_for(lambda: len(pf.mailbox("bob")) == 3, timeout=120,
             what="the deferred message delivered once the spool is back")
    wait_for(pf.queue_empty, timeout=60, what="Postfix's queue to empty")
    wait_for(lambda: p.outbox() == [], timeout=60, what="the outbox to empty")
    # Everything that reached a mailbox, rescanned whole and re-split, is clean.
    p.assert_delivered_clean(pf.mailbox("bob") + pf.mailbox("carol") + pf.mailbox("archive"))


if __name__ == "__main__":
    harness.main()
