#!/usr/bin/env python3
"""What ClamAV did not look into (issue 14, item 5), through the real binaries with real
clamscan and a real clamd: a password-protected zip and a zip nested 20 deep, EICAR
inside both (build/sigs/eicar-encrypted.zip, eicar-nested20.zip, made by conf/mksigs.sh).

- With the shipped settings (clamscan --alert-encrypted=yes --alert-exceeds-max=yes, clamd
  AlertEncrypted/AlertExceedsMax) such mail is never delivered: quarantined as infected
  (Heuristics.Encrypted.Zip; from clamscan also Heuristics.Limits.Exceeded.*), or held as
  unscannable (clamd's Heuristics.Limits.Exceeded reply).
- A scanner without those settings answers OK for both; the canary's archive checks mark
  it degraded (run/scanners and spoolctl status name the failed case) and its mail is
  held, not delivered.
- The canary's archives are new bytes on every run, so no result cache answers for them.
"""
import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.spool import Pipeline, clamscan, fake  # noqa: E402

ONE_PART = dict(scan_raw_message=False)  # fewer scanner runs where the raw scan adds nothing
FLAGS = ("--alert-encrypted=yes", "--alert-exceeds-max=yes")


def scanners_health(p):
    """{name: {state, since, reason}} from run/scanners (None until written)."""
    try:
        with open(os.path.join(p.spool, "run", "scanners")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    if not lines or lines[-1] != "end":
        return None
    res = {}
    for line in lines[:-1]:
        kv = dict(t.split("=", 1) for t in line.split()[1:])
        res[kv["name"]] = kv
    return res


def wait_health(p, name, state, timeout=60):
    wait_for(lambda: (scanners_health(p) or {}).get(name, {}).get("state") == state,
             timeout=timeout, what="scanner %s to be %s in run/scanners (now %s)\n%s"
             % (name, state, scanners_health(p), p.logtext()[-2000:]))
    return scanners_health(p)[name]


def sig(name):
    with open(os.path.join(harness.sigdir(), name), "rb") as f:
        return f.read()


def zip_mail(name):
    return msgs.with_attachment(sig(name), filename="invoice.zip", ctype="application/zip",
                                subject=name)


def text(path, name):
    with open(os.path.join(path, name), errors="replace") as f:
        return f.read()


def clamscan_without(*drop):
    """The tests' clamscan scanner (the shipped argv) with the words in drop removed."""
    s = clamscan()
    for w in drop:
        assert w in s["argv"], (w, s["argv"])
    s["argv"] = [w for w in s["argv"] if w not in drop]
    return s


def clamd_scanner(addr):
    return dict(name="clamd", type="clamd", addresses=[addr], stream_max_length=10 << 20,
                timeout=20, max_concurrent=2)


def assert_not_delivered(p, want):
    """want: {sigdir file: (place, regex)}. Each file sent as one mail must end in place,
    regex found in its report (quarantine) or verdicts (hold); nothing delivered."""
    for n in want:
        p.drop(n, zip_mail(n))
    finals = p.wait_final(len(want), timeout=90)
    assert not p.outbox(), (finals, p.logtext()[-3000:])
    by_subject = {}
    for place, _, path in finals:
        m = re.search(rb"^Subject: (\S+)\r?$", p.read(path, "message"), re.M)
        by_subject[m.group(1).decode()] = (place, path)
    for n, (place, rx) in want.items():
        got, path = by_subject[n]
        assert got == place, (n, got, place, p.logtext()[-3000:])
        record = text(path, "report" if place == "quarantine" else "verdicts")
        assert re.search(rx, record), (n, rx, record)


def assert_degraded_and_held(p, name, case):
    """Scanner name is degraded by the canary case (a canary file name); spoolctl status
    shows it; clean mail and a zip that it would pass are held, nothing delivered."""
    h = wait_health(p, name, "degraded")
    assert h["reason"].startswith(case + ":"), h
    assert "want\\x20not\\x20clean,\\x20got\\x20clean" in h["reason"], h
    r = p.ctl("status")
    # status exits 1 while spoold runs and a scanner is not ok.
    assert r.returncode == 1, r.out
    assert re.search(r"health degraded \(%s:" % re.escape(case), r.out), r.out
    assert "failed its canary" in p.logtext()
    p.drop("clean", msgs.clean(subject="clean"))
    p.drop("zip", zip_mail("eicar-encrypted.zip" if "encrypted" in case
                           else "eicar-nested20.zip"))
    finals = p.wait_final(2, timeout=90)
    assert sorted(f[0] for f in finals) == ["hold", "hold"], (finals, p.logtext()[-3000:])
    assert not p.outbox()
    for _, _, path in finals:
        assert "degraded" in text(path, "verdicts"), text(path, "verdicts")


# ---- the shipped settings: such mail is quarantined --------------------------------------

@test
def bundled_clamscan_argvs_carry_the_alert_flags():
    confs = [os.path.join(harness.ROOT, "conf", "spoold.conf")] + [
        os.path.join(harness.ROOT, "conf", "examples", n)
        for n in ("per-attachment.conf", "per-message.conf")]
    for c in confs:
        with open(c) as f:
            argvs = re.findall(r'(?<!version_)argv\s*=\s*\[\s*"/usr/bin/clamscan",([^\]]*)\]',
                               f.read())
        assert argvs, c
        for a in argvs:
            for flag in FLAGS:
                assert '"%s"' % flag in a, (c, flag, a)
    for flag in FLAGS:
        assert flag in clamscan()["argv"], clamscan()["argv"]


@test
def clamscan_quarantines_encrypted_and_nested_zips():
    p = Pipeline(scanners=[clamscan()], splitter=ONE_PART).start()
    wait_health(p, "clamscan", "ok")
    assert_not_delivered(p, {
        "eicar-encrypted.zip": ("quarantine", r"Heuristics\.Encrypted\.Zip"),
        "eicar-nested20.zip": ("quarantine", r"Heuristics\.Limits\.Exceeded\.")})


@test
def clamscan_quarantines_them_with_the_raw_message_scanned_too():
    # The default splitter settings: the parts and the whole message as received.
    p = Pipeline(scanners=[clamscan()]).start()
    assert_not_delivered(p, {
        "eicar-encrypted.zip": ("quarantine", r"Heuristics\.Encrypted\.Zip"),
        "eicar-nested20.zip": ("quarantine", r"Heuristics\.Limits\.Exceeded\.")})


@test
def clamd_does_not_deliver_encrypted_or_nested_zips():
    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as cd:
        p = Pipeline(scanners=[clamd_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        wait_health(p, "clamd", "ok")
        # clamd: a Heuristics.Limits.Exceeded reply is "unscannable" (clamd.c), so held;
        # exec clamscan has only its exit code 1, so infected, quarantined.
        assert_not_delivered(p, {
            "eicar-encrypted.zip": ("quarantine", r"Heuristics\.Encrypted\.Zip"),
            "eicar-nested20.zip": ("hold", r"verdict=unscannable.*Heuristics\.Limits\.Exceeded")})
        p.stop()


# ---- a scanner without them: the canary degrades it, its mail is held ---------------------

@test
def clamscan_without_alert_encrypted_is_degraded():
    p = Pipeline(scanners=[clamscan_without("--alert-encrypted=yes")], splitter=ONE_PART).start()
    assert_degraded_and_held(p, "clamscan", "canary-encrypted.zip")


@test
def clamscan_without_alert_exceeds_max_is_degraded():
    p = Pipeline(scanners=[clamscan_without("--alert-exceeds-max=yes")],
                 splitter=ONE_PART).start()
    assert_degraded_and_held(p, "clamscan", "canary-nested.zip")


@test
def clamscan_without_both_flags_is_degraded():
    p = Pipeline(scanners=[clamscan_without(*FLAGS)], splitter=ONE_PART).start()
    assert_degraded_and_held(p, "clamscan", "canary-encrypted.zip")


@test
def clamd_without_alert_encrypted_is_degraded():
    with Clamd(harness.tmpdir("clamd"), harness.sigdir(), extra={"AlertEncrypted": None}) as cd:
        p = Pipeline(scanners=[clamd_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        assert_degraded_and_held(p, "clamd", "canary-encrypted.zip")
        p.stop()


@test
def clamd_without_alert_exceeds_max_is_degraded():
    with Clamd(harness.tmpdir("clamd"), harness.sigdir(), extra={"AlertExceedsMax": None}) as cd:
        p = Pipeline(scanners=[clamd_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        assert_degraded_and_held(p, "clamd", "canary-nested.zip")
        p.stop()


@test
def clamd_that_looks_deeper_passes_the_nested_canary():
    # MaxRecursion above the nesting: clamd inflates every level and finds the EICAR, so
    # a scanner that does look in passes without the alert (the canary wants "not clean").
    # A control against a canary that is too strict: it passed before the archive checks.
    with Clamd(harness.tmpdir("clamd"), harness.sigdir(),
               extra={"AlertExceedsMax": None, "MaxRecursion": 30}) as cd:
        p = Pipeline(scanners=[clamd_scanner(cd.unix_addr)], splitter=ONE_PART).start()
        wait_health(p, "clamd", "ok")
        p.drop("clean", msgs.clean(subject="clean"))
        assert [f[0] for f in p.wait_final(1, timeout=60)] == ["outbox/smtp"]
        p.stop()


# ---- the canary's archives are new bytes on every run ---------------------------------------

@test
def canary_archives_differ_between_runs():
    # A scanner stand-in that records the sha256 of every canary file, then answers as the
    # fake av scanner (which looks into zips like clamscan with the alert flags).
    d = harness.tmpdir("rec")
    rec, exe = os.path.join(d, "hashes"), os.path.join(d, "hashing-av")
    with open(exe, "w") as f:
        f.write("#!/usr/bin/python3\nimport hashlib, os, sys\n"
                "for a in sys.argv[1:]:\n"
                "    if os.path.basename(a).startswith('canary-') and os.path.exists(a):\n"
                "        h = hashlib.sha256(open(a, 'rb').read()).hexdigest()\n"
                "        open(%r, 'a').write('%%s %%s\\n' %% (os.path.basename(a), h))\n"
                "os.execv(%r, [%r] + sys.argv[1:])\n"
                % (rec, os.path.join(harness.FAKE, "av"), os.path.join(harness.FAKE, "av")))
    os.chmod(exe, 0o755)
    p = Pipeline(scanners=[fake("av", argv=[exe, "{file}"])])
    for _ in range(2):
        r = p.stage("scanner-runner", once=True)
        assert r.returncode == 0, r.out
        assert scanners_health(p)["av"]["state"] == "ok", scanners_health(p)
    with open(rec) as f:
        seen = [line.split() for line in f.read().splitlines()]
    for name in ("canary-encrypted.zip", "canary-nested.zip"):
        hashes = [h for n, h in seen if n == name]
        assert len(hashes) == 2 and hashes[0] != hashes[1], (name, seen)
    # EICAR itself stays the exact 68-byte file: hash signatures must match it.
    eicar = [h for n, h in seen if n == "canary-eicar.com"]
    assert eicar == [hashlib.sha256(msgs.eicar()).hexdigest()] * 2, seen


if __name__ == "__main__":
    harness.main()
