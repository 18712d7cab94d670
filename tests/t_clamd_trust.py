#!/usr/bin/env python3
"""Whom the clamd scanner trusts, and what it never sends (scanner-runner/clamd.c).

A rogue clamd (lib/clamd.py RogueClamd) answers OK to everything but the 68-byte EICAR
file, which it calls FOUND: it passes the canary, and its OK would deliver any other
infected part. The messages here carry EICAR with a trailer (not 68 bytes), which the
real clamd detects and the rogue calls clean; so mail that reached an outbox through the
rogue fails the delivery invariant as well as the test's own check.

  - a unix socket whose listener runs as a user not in peer_user is refused: the mail
    is held, the log names the peer's uid, and the rogue receives no request;
  - a unix socket that is down is never failed over to a tcp address: held, and the
    tcp listener sees nothing, not even a VERSION;
  - no shipped config fails over from a unix socket to loopback tcp, and the shipped
    clamd example, run with its unix socket down, sends nothing to a listener on the
    loopback address it used to name;
  - max_file_size holds over FILDES: a larger part is unscannable (held), never clean.
"""
import glob
import os
import pwd
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd, RogueClamd  # noqa: E402
from lib.spool import Pipeline  # noqa: E402

ONE_PART = dict(scan_raw_message=False)
# EICAR with a trailer: the real clamd finds it, the rogue (exact 68 bytes only) does not.
EICAR_PADDED = msgs.eicar() + b"\r\ntrailer after the test file\r\n"


def clamd_scanner(addrs, **kw):
    d = dict(name="clamd", type="clamd", addresses=addrs, stream_max_length=10 << 20,
             timeout=5, max_concurrent=2)
    d.update(kw)
    return d


def infected_mail():
    # Not a banned extension or type: the router would quarantine it on that alone.
    return msgs.with_attachment(EICAR_PADDED, filename="data.bin")


def places(finals):
    return sorted(f[0] for f in finals)


def rogue_user():
    """(user to run the rogue as, peer_user for the config or None for the default).
    As root: the rogue runs as nobody and the default (root, clamav, our uid) must refuse
    it. Otherwise it runs as us, and peer_user names root, whom we are not."""
    if os.geteuid() == 0:
        # The rogue must reach its directory: open the private test base for traversal.
        os.chmod(os.path.dirname(harness.tmpdir("probe")), 0o711)
        return "nobody", None
    return None, "root"


@test
def rogue_unix_socket_of_wrong_user_is_refused():
    user, peer = rogue_user()
    with RogueClamd(harness.tmpdir("rogue"), user=user) as rogue:
        sc = clamd_scanner([rogue.addr])
        if peer is not None:
            sc["peer_user"] = peer
        p = Pipeline(scanners=[sc], splitter=ONE_PART).start()
        p.drop("virus", infected_mail())
        p.drop("clean", msgs.clean())
        finals = p.wait_final(2, timeout=90)
        assert places(finals) == ["hold", "hold"], (finals, p.logtext()[-3000:])
        log = p.logtext()
        assert re.search(r"untrusted peer on \S*rogue\.sock: uid %d " % rogue.uid, log), \
            log[-3000:]
        assert rogue.requests() == [], "the rogue was sent %s" % rogue.requests()
        p.stop()


@test
def unix_socket_down_holds_and_never_fails_over_to_tcp():
    down = "unix:" + os.path.join(harness.tmpdir("noclamd"), "clamd.sock")
    with RogueClamd(harness.tmpdir("rogue"), unix=False) as rogue:
        p = Pipeline(scanners=[clamd_scanner([down, rogue.addr])], splitter=ONE_PART).start()
        p.drop("virus", infected_mail())
        p.drop("clean", msgs.clean())
        finals = p.wait_final(2, timeout=90)
        assert places(finals) == ["hold", "hold"], (finals, p.logtext()[-3000:])
        for _, _, path in finals:
            with open(os.path.join(path, "verdicts")) as f:
                v = f.read()
            assert "verdict=error" in v and "output=connect:" in v, v
        assert rogue.connections() == 0, "the tcp listener got %d connection(s): %s" % (
            rogue.connections(), rogue.requests())
        p.stop()


def shipped_configs():
    return sorted(glob.glob(os.path.join(harness.ROOT, "conf", "*.conf"))
                  + glob.glob(os.path.join(harness.ROOT, "conf", "examples", "*.conf")))


def config_addresses(path):
    """Every addresses = [ ... ] list of a config file, as lists of strings (comments
    stripped; the lists in our files are on one line)."""
    res = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0]
            m = re.search(r"\baddresses\s*=\s*\[(.*)\]", line)
            if m:
                res.append(re.findall(r'"([^"]*)"', m.group(1)))
    return res


@test
def shipped_configs_never_fail_over_from_unix_to_tcp():
    lists = {p: config_addresses(p) for p in shipped_configs()}
    assert any(lists.values()), "no addresses list found in %s" % list(lists)
    bad = ["%s: %s" % (os.path.relpath(p, harness.ROOT), a) for p, ls in lists.items()
           for a in ls if any(x.startswith("unix:") for x in a)
           and any(x.startswith("tcp:") for x in a)]
    assert not bad, "unix-to-tcp failover in a shipped config:\n" + "\n".join(bad)


@test
def shipped_clamd_example_with_socket_down_sends_nothing_to_loopback():
    # The example's own address list, with its unix socket pointed at a dead path and any
    # loopback tcp address pointed at a rogue listener (tests use no fixed ports).
    example = os.path.join(harness.ROOT, "conf", "examples", "clamd.conf")
    (addrs,) = config_addresses(example)
    down = "unix:" + os.path.join(harness.tmpdir("noclamd"), "clamd.sock")
    with RogueClamd(harness.tmpdir("rogue"), unix=False) as rogue:
        mapped = [down if a.startswith("unix:") else
                  rogue.addr if re.match(r"tcp:(127\.|localhost|\[::1\])", a) else a
                  for a in addrs]
        p = Pipeline(scanners=[clamd_scanner(mapped)], splitter=ONE_PART).start()
        p.drop("virus", infected_mail())
        finals = p.wait_final(1, timeout=90)
        assert places(finals) == ["hold"], (addrs, finals, p.logtext()[-3000:])
        assert rogue.connections() == 0, "the loopback listener got %s (example: %s)" % (
            rogue.requests(), addrs)
        p.stop()


@test
def trusted_peer_user_scans_normally():
    # The real clamd runs as us: peer_user naming us (by name, then by uid) lets it judge.
    me = pwd.getpwuid(os.geteuid()).pw_name
    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as cd:
        for peer in (me, str(os.geteuid())):
            p = Pipeline(scanners=[clamd_scanner([cd.unix_addr], peer_user=peer)],
                         splitter=ONE_PART).start()
            p.drop("virus", infected_mail())
            p.drop("clean", msgs.clean())
            finals = p.wait_final(2, timeout=90)
            assert places(finals) == ["outbox/smtp", "quarantine"], \
                (peer, finals, p.logtext()[-3000:])
            p.stop()


@test
def unknown_peer_user_is_a_config_error():
    p = Pipeline(scanners=[clamd_scanner(["unix:/nonexistent/clamd.sock"],
                                         peer_user="no-such-user-spoold")])
    r = harness.run([harness.bin_path("scanner-runner"), "-c", p.conf, "--once"], timeout=30)
    assert r.returncode == 78, (r.returncode, r.out)
    assert "peer_user 'no-such-user-spoold' is not a user" in r.out, r.out


@test
def max_file_size_makes_a_larger_part_unscannable_over_fildes():
    # 4 KB parts, max_file_size 2 KB: clamd (FILDES, no StreamMaxLength) would scan the
    # file; spoold must not send it and must not call it clean.
    big_clean = (b"clean line of text, nothing to see here\n" * 120)[:4096]
    small_clean = b"short and clean\n"
    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as cd:
        p = Pipeline(scanners=[clamd_scanner([cd.unix_addr], max_file_size=2048)],
                     splitter=ONE_PART).start()
        p.drop("big", msgs.with_attachment(big_clean, filename="big.txt",
                                           ctype="text/plain"))
        p.drop("small", msgs.with_attachment(small_clean, filename="small.txt",
                                             ctype="text/plain"))
        finals = p.wait_final(2, timeout=90)
        assert places(finals) == ["hold", "outbox/smtp"], (finals, p.logtext()[-3000:])
        held = [path for place, _, path in finals if place == "hold"][0]
        with open(os.path.join(held, "verdicts")) as f:
            v = f.read()
        assert re.search(r"verdict=unscannable .*over(\\x20| )max_file_size", v), v
        wait_for(lambda: "over max_file_size" in p.logtext(), timeout=10,
                 what="the unscannable part in the log")
        p.stop()


if __name__ == "__main__":
    harness.main()
