#!/usr/bin/env python3
"""Fail-closed scanner results, scan budgets and slots (issue 14: item 2, M6, L2, L10),
through the real binaries.

- per-message mode: a part an infected run does not name is never clean (it is scanned
  again on its own, or it is an error); a reported path names a part only by exact match;
  output the runner did not read in full is an error (real clamscan with 952 parts, and
  tests/fake/liar, which pads its output or names a copy's path);
- a message over its scan budget is held, and one big message does not starve the rest;
- SIGCHLD inherited as SIG_IGN does not turn scanner results into exit 0;
- a daemonized scanner grandchild does not keep a slot, and a slot nobody frees ends in an
  error verdict after slot_wait, not in a stalled runner."""
import fcntl
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan, fake  # noqa: E402

NO_RAW = dict(scan_raw_message=False)  # the parts only: fewer runs, exact part lists


def mixed(attachments, text="see the attachments\n", **kw):
    """multipart/mixed: a text body, then attachments [(bytes, filename)] in base64."""
    common, crlf = msgs._split_common(kw)
    m = msgs._mixed(text, [(d, n, "application/octet-stream") for d, n in attachments],
                    common)
    return msgs._bytes(m, crlf)


def _kv(words):
    kv = {}
    for t in words:
        if "=" in t:
            k, v = t.split("=", 1)
            kv[k] = v
    return kv


def verdict_lines(path):
    """[{part, scanner, verdict, exit, output, ...}] of an entry: its verdicts file, or,
    in an outbox entry (which keeps none), the runner's scan lines in its trace."""
    res = []
    vp = os.path.join(path, "verdicts")
    if os.path.exists(vp):
        with open(vp, errors="replace") as f:
            for line in f.read().splitlines():
                if line.startswith("scan "):
                    res.append(_kv(line.split()[1:]))
        return res
    with open(os.path.join(path, "trace"), errors="replace") as f:
        for line in f.read().splitlines():
            w = line.split()
            if len(w) > 3 and w[1] == "scanner-runner" and w[2] == "scan":
                res.append(_kv(w[3:]))
    return res


def verdicts_text(path):
    """The verdicts (or trace) text, with escaped spaces shown as spaces."""
    for n in ("verdicts", "trace"):
        try:
            with open(os.path.join(path, n), errors="replace") as f:
                return f.read().replace("\\x20", " ")
        except FileNotFoundError:
            pass
    return ""


def liar(mode, *args, **kw):
    d = fake("liar", args=list(args), mode=mode, **kw)
    if mode == "per-message":
        d["argv"] = d["argv"][:-1] + ["{files}"]
    return d


# ---- item 2: per-message results ---------------------------------------------------------

@test(timeout=300)
def per_message_clamscan_names_both_eicars_among_952_parts():
    # The repro: EICAR, 950 text parts, EICAR again. clamscan's one line per part
    # is over 64 KiB here; the second EICAR's line used to be cut off, and the part it
    # did not name became clean: stripped mail went out with the second EICAR in it.
    sc = clamscan(mode="per-message",
                  argv=["/usr/bin/clamscan", "--no-summary", "--stdout",
                        "--alert-encrypted=yes", "--alert-exceeds-max=yes",
                        "--database=" + harness.sigdir(), "{files}"])
    atts = [(msgs.eicar(), "first.bin")]
    atts += [(b"text part %d\n" % i, "t%03d.txt" % i) for i in range(950)]
    atts += [(msgs.eicar(), "last.bin")]
    p = Pipeline(scanners=[sc], splitter=NO_RAW, router=dict(infected_action="strip"))
    p.start()
    p.drop("m", mixed(atts))
    # Strip quarantines the original and hands the clean rest on as a new message, which
    # is split and scanned again (docs/INTERNALS.md, S4g): two final places.
    finals = p.wait_final(2, timeout=240)
    assert sorted(f[0] for f in finals) == ["outbox/smtp", "quarantine"], finals
    place, q, path = [f for f in finals if f[0] == "quarantine"][0]
    vl = verdict_lines(path)
    infected = {v["part"] for v in vl if v["verdict"] == "infected"}
    bad = {"2", "953"}  # part 1 is the text body, then the attachments in order
    assert infected == bad, (infected, verdicts_text(path)[-2000:])
    for v in vl:
        if v["part"] in bad:
            assert v["verdict"] == "infected", v
    # the 951 others are clean from a second, clean run over exactly them
    assert sum(1 for v in vl if v["verdict"] == "clean") == 951, verdicts_text(path)[-2000:]
    p.stop()  # a still spool for the delivery check (it walks trash/ too)


@test(timeout=120)
def per_message_cut_output_is_an_error_never_clean():
    # liar names the first EICAR, pads 200 KB, then names the second: the cut falls
    # between them. Nothing of this run may count as clean.
    p = Pipeline(scanners=[liar("per-message", "--pad=200000")], splitter=NO_RAW,
                 router=dict(infected_action="strip"))
    p.start()
    p.drop("m", mixed([(msgs.eicar(), "a.bin"), (msgs.eicar(), "b.bin")]))
    place, q, path = p.wait_final(1)[0]
    vl = verdict_lines(path)
    assert place == "hold", (place, verdicts_text(path))
    assert vl and all(v["verdict"] == "error" for v in vl), verdicts_text(path)
    assert "truncated" in verdicts_text(path), verdicts_text(path)


@test(timeout=120)
def per_attachment_cut_output_is_an_error_even_with_exit_0():
    p = Pipeline(scanners=[liar("per-attachment", "--pad-clean=100000")], splitter=NO_RAW)
    p.start()
    p.drop("m", msgs.clean())
    place, q, path = p.wait_final(1)[0]
    assert place == "hold", (place, verdicts_text(path))
    vl = verdict_lines(path)
    assert vl and all(v["verdict"] == "error" for v in vl), verdicts_text(path)
    assert "truncated" in verdicts_text(path), verdicts_text(path)


@test(timeout=120)
def per_message_path_is_attributed_by_exact_match_only():
    # liar reports the EICAR part as /var/tmp/av-copy/0001.ATT: a path we never passed,
    # ending in the text part's name. It names no part; the EICAR part is not clean.
    p = Pipeline(scanners=[liar("per-message", "--misname")], splitter=NO_RAW,
                 router=dict(infected_action="strip"))
    p.start()
    p.drop("m", mixed([(msgs.eicar(), "a.bin")]))
    place, q, path = p.wait_final(1)[0]
    vl = verdict_lines(path)
    assert place == "hold", (place, verdicts_text(path))
    assert vl and all(v["verdict"] == "error" for v in vl), verdicts_text(path)
    assert "named none" in verdicts_text(path), verdicts_text(path)


# ---- M6: budget and fairness ---------------------------------------------------------------

def slow_av(record, **kw):
    return fake("av", args=["--sleep=0.05", "--record=" + record], max_concurrent=1, **kw)


def runs(record):
    try:
        with open(record) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@test(timeout=240)
def big_message_does_not_starve_small_ones():
    # 999 parts at >= 50 ms each is a minute or more of one runner; 5 one-part messages
    # that come meanwhile are scanned between its slices.
    rec = os.path.join(harness.tmpdir("rec"), "runs")
    p = Pipeline(scanners=[slow_av(rec)], splitter=NO_RAW)
    p.start()
    p.drop("big", msgs.multipart(999))
    wait_for(lambda: runs(rec) >= 20, timeout=60, what="the big message's scan to start")
    t0 = time.monotonic()
    for i in range(5):
        p.drop("small%d" % i, msgs.clean(body="small %d\n" % i))
    wait_for(lambda: len(p.outbox()) >= 5, timeout=30,
             what="5 small messages delivered while the big one is scanned\n%s"
             % p.logtext()[-2000:])
    took = time.monotonic() - t0
    assert len(p.entries("scan")) == 1, "the big message should still be in scan/: %s" % (
        p.finals(),)
    assert runs(rec) < 999, "the big message was done before the small ones (%d runs)" % runs(rec)
    print("  5 small messages delivered in %.1f s, big one at %d runs" % (took, runs(rec)))
    p.stop()


@test(timeout=240)
def message_over_scan_budget_is_held_with_the_reason():
    rec = os.path.join(harness.tmpdir("rec"), "runs")
    p = Pipeline(scanners=[slow_av(rec)], splitter=NO_RAW,
                 runner=dict(max_message_scan_time=3))
    p.start()
    p.drop("big", msgs.multipart(999))
    wait_for(lambda: runs(rec) >= 5, timeout=60, what="the big message's scan to start")
    for i in range(5):
        p.drop("small%d" % i, msgs.clean(body="small %d\n" % i))
    finals = p.wait_final(6, timeout=120)
    places = sorted(f[0] for f in finals)
    assert places == ["hold"] + ["outbox/smtp"] * 5, places
    hold = [f for f in finals if f[0] == "hold"][0][2]
    vl = verdict_lines(hold)
    txt = verdicts_text(hold)
    assert "scan budget exceeded" in txt, txt[-2000:]
    clean = [v for v in vl if v["verdict"] == "clean"]
    budget = [v for v in vl if v.get("exit") == "budget"]
    assert clean and budget and len(clean) + len(budget) == 999, (len(clean), len(budget))
    assert runs(rec) < 999, runs(rec)
    p.stop()  # a still spool for the delivery check (it walks trash/ too)


@test(timeout=240)
def paused_runner_finishes_its_message_but_claims_nothing_new():
    rec = os.path.join(harness.tmpdir("rec"), "runs")
    p = Pipeline(scanners=[slow_av(rec)], splitter=NO_RAW,
                 runner=dict(max_message_scan_time=4))
    p.start()
    p.drop("big", msgs.multipart(999))
    wait_for(lambda: runs(rec) >= 5, timeout=60, what="the big message's scan to start")
    r = p.ctl("pause", "scanner-runner")
    assert r.returncode == 0, r.out
    time.sleep(0.5)  # the signal is asynchronous
    for i in range(2):
        p.drop("small%d" % i, msgs.clean(body="small %d\n" % i))
    wait_for(lambda: len(p.entries("hold")) == 1, timeout=60,
             what="the big message to end held while the runner is paused")
    time.sleep(2)
    assert p.outbox() == [] and len(p.entries("scan")) == 2, \
        "a paused runner claimed new mail: %s, scan/ %s" % (p.finals(), p.entries("scan"))
    r = p.ctl("resume", "scanner-runner")
    assert r.returncode == 0, r.out
    finals = p.wait_final(3, timeout=60)
    assert sorted(f[0] for f in finals) == ["hold", "outbox/smtp", "outbox/smtp"], finals
    p.stop()  # a still spool for the delivery check (it walks trash/ too)


# ---- L2: SIGCHLD ignored -------------------------------------------------------------------

def ignore_sigchld():
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)


@test(timeout=180)
def runner_started_with_sigchld_ignored_still_finds_eicar():
    p = Pipeline(scanners=[clamscan()], splitter=NO_RAW)
    p.drop("virus", msgs.eicar_attachment())
    p.drop("clean", msgs.clean())
    p.stage("splitter")
    r = p.stage("scanner-runner", timeout=120, preexec=ignore_sigchld)
    assert r.returncode == 0, r.out
    p.stage("router")
    finals = p.finals()
    places = sorted(f[0] for f in finals)
    assert places == ["outbox/smtp", "quarantine"], (places, r.out[-2000:])
    q = [f for f in finals if f[0] == "quarantine"][0][2]
    for place, _, path in finals:
        for v in verdict_lines(path):
            assert not v.get("exit", "").startswith("wait:"), v
            assert v.get("exit") != "degraded", v
    bad = {"2"}  # eicar_attachment: the text, then eicar.com
    assert all(v["verdict"] == "infected" for v in verdict_lines(q)
                       if v["part"] in bad), verdicts_text(q)


@test(timeout=180)
def spoold_started_with_sigchld_ignored_sees_its_stages_die():
    p = Pipeline(scanners=[clamscan()], splitter=NO_RAW)
    logf = open(p.log, "ab")
    p.proc = subprocess.Popen([harness.bin_path("spoold"), "-c", p.conf], stdout=logf,
                              stderr=logf, stdin=subprocess.DEVNULL, preexec_fn=ignore_sigchld)
    logf.close()
    wait_for(lambda: any(s["name"] == "router" and s["state"] == "running" and s["pid"]
                         for s in p.status_file()), timeout=60, what="router running")
    old = [s["pid"] for s in p.status_file() if s["name"] == "router"][0]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: any(s["name"] == "router" and s["pid"] not in (0, old)
                         and s["state"] == "running" for s in p.status_file()), timeout=30,
             what="spoold to restart the killed router (status %s)" % p.status_file())
    p.drop("virus", msgs.eicar_attachment())
    p.drop("clean", msgs.clean())
    places = sorted(f[0] for f in p.wait_final(2, timeout=90))
    assert places == ["outbox/smtp", "quarantine"], (places, p.logtext()[-2000:])
    p.stop()  # a still spool for the delivery check (it walks trash/ too)


# ---- L10: slots ------------------------------------------------------------------------------

def kill_pids_in(d):
    for n in os.listdir(d):
        try:
            os.kill(int(n), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


@test(timeout=120)
def daemonized_grandchild_keeps_no_slot():
    piddir = harness.tmpdir("daemons")
    harness.cleanup(kill_pids_in, piddir)
    p = Pipeline(scanners=[fake("daemonize", args=[piddir, "300"], max_concurrent=1)],
                 splitter=NO_RAW)
    p.start()
    for i in range(3):
        p.drop("m%d" % i, msgs.clean(body="message %d\n" % i))
    places = sorted(f[0] for f in p.wait_final(3, timeout=40))
    assert places == ["outbox/smtp"] * 3, places
    assert len(os.listdir(piddir)) >= 3, "the scanner left no daemons: %s" % os.listdir(piddir)
    p.stop()  # a still spool for the delivery check (it walks trash/ too)


@test(timeout=120)
def slot_nobody_frees_becomes_an_error_after_slot_wait():
    p = Pipeline(scanners=[fake("av", max_concurrent=2)], splitter=NO_RAW,
                 runner=dict(slot_wait=2))
    p.start()
    health = os.path.join(p.spool, "run", "scanners")
    wait_for(lambda: os.path.exists(health) and "state=ok" in open(health).read(),
             timeout=60, what="the canary to pass")
    held = []
    for n in range(2):
        path = os.path.join(p.spool, "slots", "av.%d" % n)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        p.hand_made(path, "scanner-runner")  # the runner's slot file, held by another
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    p.drop("m1", msgs.clean(body="one\n"))
    place, q, path = p.wait_final(1, timeout=30)[0]
    assert place == "hold", place
    vl = verdict_lines(path)
    assert vl and all(v["verdict"] == "error" and v["exit"] == "not-started" for v in vl), \
        verdicts_text(path)
    assert "slot_wait" in verdicts_text(path), verdicts_text(path)
    for fd in held:
        os.close(fd)
    p.drop("m2", msgs.clean(body="two\n"))
    wait_for(lambda: len(p.outbox()) == 1, timeout=30, what="delivery once the slots are free")
    p.stop()  # a still spool for the delivery check (it walks trash/ too)


if __name__ == "__main__":
    harness.main()
