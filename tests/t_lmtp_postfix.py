#!/usr/bin/env python3
"""Postfix in, lmtpd, spoold, connector-smtp, Postfix out (issue 19): the "advanced"
content filter set-up, configured from docs/postfix.md itself. The code blocks of the
section "## The LMTP intake (advanced content filter)" and the re-injection service and
connector of the main recipe are used as written, with only what a throwaway instance
needs changed: a loopback smtp listener, the test's socket paths, no chroot. swaks sends
a clean and an EICAR message; the clean one reaches the Maildir once, EICAR is
quarantined, and what was delivered, rescanned whole and re-split, is clean. Skipped,
with the reason, where there is no root, no postfix or no swaks."""
import os
import pwd
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.postfix import Postfix, free_port, listening, need_postfix, section_blocks  # noqa: E402
from lib.spool import Pipeline, clamscan  # noqa: E402

DOC_SOCKET = "/var/spool/spoold/run/lmtp"


def recipe():
    """The LMTP section's spoold.conf, master.cf and main.cf blocks, and the main
    recipe's re-injection service (its master.cf without the pipe filter) and connector."""
    (lmtp_conf,) = section_blocks("### spoold.conf")
    (master,) = section_blocks("### master.cf")
    (main,) = section_blocks("### main.cf")
    main_master = section_blocks("## master.cf")[0]
    reinject = re.search(r"^(spoold-reinject\s+unix.*?)(?=^\S|\Z)", main_master,
                         re.S | re.M).group(1)
    conn = section_blocks("## spoold.conf")[0]
    return lmtp_conf, master + reinject, main, conn


@test
def the_recipe_is_complete():
    """Without Postfix: the section exists and its blocks carry what the set-up needs."""
    lmtp_conf, master, main, conn = recipe()
    assert re.search(r"^spoold-lmtp\s+unix\s.*\slmtp$", master, re.M), master
    assert re.search(r"^spoold-reinject\s+unix\s+n\s.*\bsmtpd$", master, re.M), master
    assert "content_filter = spoold-lmtp:unix:" + DOC_SOCKET in main, main
    assert "receive_override_options = no_address_mappings" in main, main
    assert "spoold-lmtp_destination_recipient_limit" in main, main
    assert "10026" not in master + main, "no loopback TCP re-injection"
    assert re.search(r"enabled\s*=\s*true", lmtp_conf) and DOC_SOCKET in lmtp_conf, lmtp_conf


@test(timeout=600)
def postfix_lmtp_spoold_postfix_from_the_documented_recipe():
    lmtp_conf, master_doc, main_doc, conn_doc = recipe()
    need_postfix()
    pf_user = pwd.getpwnam("postfix")
    base = harness.tmpdir("pfl")
    for path in (os.path.dirname(base), base):
        os.chmod(path, 0o755)
    pin = free_port()
    q = os.path.join(base, "postfix", "queue")
    rsock_doc = re.search(r'unix_socket = "([^"]+)";', conn_doc).group(1)
    rsock = rsock_doc.replace("/var/spool/postfix", q)
    relay = re.search(r'relay = "([^"]+)";', conn_doc).group(1)
    # spoold.conf's lmtp group exactly as documented, but for the socket's path.
    p = Pipeline(scanners=[clamscan()],
                 connectors=[dict(name="smtp", domains=["*"], type="smtp", relay=relay,
                                  unix_socket=rsock, helo="spoold-test",
                                  retry_min=1, retry_max=2)],
                 extra="PLACEHOLDER")
    sock = os.path.join(p.spool, "run", "lmtp")
    with open(p.conf) as f:
        text = f.read().replace("PLACEHOLDER", lmtp_conf.replace(DOC_SOCKET, sock))
    with open(p.conf, "w") as f:
        f.write(text)
    os.chmod(p.dir, 0o755)
    if p.separated:
        # The documented steps for the throwaway users: postfix into the spool's group,
        # the connectors' user into postdrop (dist/spoold.sysusers makes both).
        from lib import privsep
        for user, group in (("postfix", privsep.SPOOL_USER),
                            (privsep.ROLES["connector_user"], "postdrop")):
            harness.run(["usermod", "-a", "-G", group, user], check=True)
            if user == "postfix":
                harness.cleanup(harness.run, ["gpasswd", "-d", user, group])
    p.start()
    wait_for(lambda: os.path.exists(sock), timeout=30, what="lmtpd's socket")
    if not p.separated:
        # "usermod -a -G spoold postfix": here spoold runs as root, so the spool's group
        # (and the socket's) becomes postfix's group; the modes stay as spoold made them.
        for path in (p.spool, os.path.join(p.spool, "run"), sock):
            os.chown(path, -1, pf_user.pw_gid)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660", oct(os.stat(sock).st_mode)
    master = master_doc.replace(DOC_SOCKET, sock)
    main = main_doc.replace(DOC_SOCKET, sock)
    master = "%d inet n - n - - smtpd\n" % pin + master
    pf = Postfix(base, master, main).start()
    wait_for(lambda: listening(pin) and os.path.exists(rsock), timeout=30,
             what="postfix to listen\n" + pf.maillog()[-1500:])

    eicar = os.path.join(base, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(msgs.eicar())
    pf.send(pin, "bob@test.example", "clean over lmtp",
            body="hello through lmtpd\n.leading dot line")
    pf.send(pin, "bob@test.example", "infected over lmtp", attach=eicar)
    wait_for(lambda: pf.mailbox("bob"), timeout=120,
             what="the clean message in the Maildir; maillog:\n%s\nspoold log:\n%s"
             % (pf.maillog()[-2000:], p.logtext()[-2000:]))
    got = pf.mailbox("bob")[0][1]
    assert b"hello through lmtpd" in got and b"Subject: clean over lmtp" in got, got[:500]
    assert b"\n.leading dot line" in got, "dot-stuffing was not undone once: %r" % got[-200:]
    wait_for(lambda: p.entries("quarantine"), timeout=60, what="EICAR in quarantine")
    wait_for(pf.queue_empty, timeout=60, what="Postfix's queue to empty")
    assert len(pf.mailbox("bob")) == 1, "delivered %d times" % len(pf.mailbox("bob"))
    maillog = pf.maillog()
    assert re.search(r"relay=spoold-lmtp\b|relay=.*lmtp.*status=sent", maillog), maillog[-2000:]
    # Both went through lmtpd (not a pipe), XFORWARD told it the original client.
    queued = [ln for ln in p.logtext().splitlines() if "lmtpd" in ln and " queued " in ln]
    assert len(queued) == 2 and all("addr=127.0.0.1" in ln for ln in queued), queued
    # ... and the quarantined message's own trace records that client (the X record of
    # the queue file, copied by the splitter), as Postfix forwarded it.
    (qq,) = p.entries("quarantine")
    trace = p.read(os.path.join(p.spool, "quarantine", qq), "trace").decode()
    xf = [ln.split(" xforward ", 1)[1] for ln in trace.splitlines() if " xforward " in ln]
    assert len(xf) == 1 and " addr=127.0.0.1 " in " %s " % xf[0], trace
    assert re.search(r"(^| )proto=E?SMTP( |$)", xf[0]) and "helo=" in xf[0], xf
    assert p.outbox() == [], "outbox entries left: %s" % p.outbox()
    # What reached the mailbox, through Postfix, rescanned whole and re-split, is clean.
    p.assert_delivered_clean(pf.mailbox("bob"))


if __name__ == "__main__":
    harness.main()
