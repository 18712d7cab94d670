#!/usr/bin/env python3
"""End-to-end tests of the walking skeleton through bin/spoold and real ClamAV."""
import json
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.spool import Pipeline, clamscan, fake  # noqa: E402


@test
def clean_drop_reaches_outbox_byte_for_byte():
    p = Pipeline().start()
    m = msgs.clean(to=["bob@example.org"])
    p.drop("clean1", m)
    finals = p.wait_final(1)
    assert [f[0] for f in finals] == ["outbox/smtp"], finals
    path = finals[0][2]
    assert p.read(path, "message") == m, "outbox message differs from the dropped one"
    env = p.read(path, "envelope").decode()
    assert "Rbob@example.org\n" in env and env.endswith("E\n"), env
    assert sorted(os.listdir(path)) == ["envelope", "message", "trace"], os.listdir(path)
    trace = p.read(path, "trace").decode()
    for event in ("splitter intake", "splitter split", "scanner-runner scanned",
                  "router route connector=smtp", "router outbox connector=smtp"):
        assert event in trace, "%r missing from the trace:\n%s" % (event, trace)


@test
def eicar_attachment_is_quarantined_with_virus_name():
    p = Pipeline().start()
    p.drop("virus", msgs.eicar_attachment())
    finals = p.wait_final(1)
    assert [f[0] for f in finals] == ["quarantine"], finals
    rep = p.read(finals[0][2], "report").decode()
    assert "Spoold.Test.EICAR" in rep, rep
    assert "eicar.com" in rep, rep
    j = json.loads(p.read(finals[0][2], "report.json"))
    assert j["reason"] == "infected" and j["viruses"], j
    assert not [n for n in os.listdir(finals[0][2]) if n.endswith(".ATT")], "parts left in quarantine"


@test
def eicar_inside_text_is_quarantined():
    p = Pipeline().start()
    p.drop("inline", msgs.eicar_inline_text())
    finals = p.wait_final(1)
    assert [f[0] for f in finals] == ["quarantine"], finals


@test
def scanner_exit_2_holds():
    # Real clamscan with a database path that does not exist exits 2.
    p = Pipeline(scanners=[clamscan(argv=["/usr/bin/clamscan", "--no-summary",
                                          "--database=/nonexistent-db", "{file}"])]).start()
    p.drop("m", msgs.clean())
    finals = p.wait_final(1)
    assert [f[0] for f in finals] == ["hold"], finals
    v = p.read(finals[0][2], "verdicts").decode()
    assert "verdict=error" in v and "exit=2" in v, v
    assert os.path.exists(os.path.join(finals[0][2], "hold"))


@test
def scanner_missing_at_run_time_holds():
    d = harness.tmpdir("scanbin")
    exe = os.path.join(d, "scanner")
    shutil.copy(os.path.join(harness.FAKE, "clean"), exe)
    p = Pipeline(scanners=[fake("clean", argv=[exe, "{file}"])]).start()
    time.sleep(0.5)
    os.unlink(exe)
    p.drop("m", msgs.clean())
    finals = p.wait_final(1)
    assert [f[0] for f in finals] == ["hold"], finals
    v = p.read(finals[0][2], "verdicts").decode()
    assert "exit=exec:ENOENT" in v, v


@test
def scanner_missing_at_start_is_a_config_error():
    p = Pipeline(scanners=[fake("clean", argv=["/nonexistent/scanner", "{file}"])])
    r = harness.run([harness.bin_path("spoold"), "-c", p.conf], timeout=30)
    assert r.returncode == 78, (r.returncode, r.out)
    assert p.conf + ":" in r.out and "/nonexistent/scanner" in r.out, r.out


@test
def inject_keeps_envelope():
    p = Pipeline().start()
    m = msgs.clean(to=["header-rcpt@example.org"])
    qid = p.inject("env-sender@example.net", ["a@one.example", "b@two.example"], m)
    finals = p.wait_final(1)
    assert finals[0][0] == "outbox/smtp", finals
    assert finals[0][1] == qid, "queue ID changed: injected %s, delivered %s" % (qid, finals[0][1])
    env = p.read(finals[0][2], "envelope").decode()
    assert env == "Senv-sender@example.net\nRa@one.example\nRb@two.example\nE\n", env
    assert p.read(finals[0][2], "message") == m


@test
def inject_null_sender_and_bad_address():
    p = Pipeline().start()
    r = p.ctl("inject", "-f", "<>", "x@y.example", stdin=msgs.clean())
    assert r.returncode == 0, r.out
    r = p.ctl("inject", "-f", "a@b", "bad\x01addr", stdin=msgs.clean())
    assert r.returncode == 65, (r.returncode, r.out)
    r = p.ctl("inject", "-f", "a@b", stdin=msgs.clean())
    assert r.returncode == 64, (r.returncode, r.out)


@test
def inject_into_missing_spool_is_tempfail():
    p = Pipeline()
    # (The separated pass makes the spool first, as tmpfiles.d does: not here.)
    shutil.rmtree(p.spool, ignore_errors=True)
    r = p.ctl("inject", "-f", "a@b", "c@d", stdin=msgs.clean())
    assert r.returncode == 75, (r.returncode, r.out)


@test
def status_counts_and_stages():
    p = Pipeline().start()
    p.drop("a", msgs.clean())
    p.drop("b", msgs.eicar_attachment())
    p.wait_final(2)
    r = p.ctl("status")
    assert r.returncode == 0, r.out
    assert "spoold: running" in r.out, r.out
    for s in ("splitter", "scanner-runner", "router"):
        assert s in r.out, r.out
    j = json.loads(p.ctl("status", "--json").out)
    assert j["queues"]["quarantine"]["count"] == 1, j
    assert j["queues"]["outbox/smtp"]["count"] == 1, j
    assert j["spoold"]["running"] is True
    assert len(j["stages"]) == 3 and all(s["state"] == "running" for s in j["stages"]), j


@test
def killed_stage_is_restarted_and_loses_nothing():
    rec = os.path.join(harness.tmpdir("rec"), "record")
    p = Pipeline(scanners=[fake("record", args=["--sleep=1", rec], max_concurrent=1, canary=False)]).start()
    msgs_in = [msgs.clean(subject="m%d" % i) for i in range(4)]
    for i, m in enumerate(msgs_in):
        p.drop("m%d" % i, m)
    wait_for(lambda: os.path.exists(rec), timeout=20, what="scanner to start")
    pids = p.stage_pids()
    os.kill(pids[("scanner-runner", 0)], signal.SIGKILL)
    wait_for(lambda: p.stage_pids().get(("scanner-runner", 0), 0) not in (0, pids[("scanner-runner", 0)]),
             timeout=10, what="spoold to restart the scanner-runner")
    p.wait_final(4, timeout=90)
    p.check_invariant(msgs_in)
    assert all(f[0] == "outbox/smtp" for f in p.finals()), p.finals()


@test
def non_regular_and_empty_inbound_go_to_badmail():
    p = Pipeline().start()
    inbound = os.path.join(p.spool, "inbound")
    os.mkfifo(os.path.join(inbound, "fifo"))
    os.symlink("/etc/shadow", os.path.join(inbound, "link"))
    os.mkdir(os.path.join(inbound, "dir"))
    open(os.path.join(inbound, "empty"), "wb").close()
    finals = p.wait_final(4)
    assert sorted(f[0] for f in finals) == ["badmail"] * 4, finals
    reasons = sorted(p.read(f[2], "reason").decode().strip() for f in finals)
    assert any("FIFO" in r for r in reasons), reasons
    assert any("symbolic link" in r for r in reasons), reasons
    assert any("directory" in r for r in reasons), reasons
    assert "empty file" in reasons, reasons
    # the symlink moved as a link: /etc/shadow was never read or touched
    for f in finals:
        m = os.path.join(f[2], "message")
        if os.path.islink(m):
            assert os.readlink(m) == "/etc/shadow"


@test
def dotfiles_are_ignored_until_renamed():
    p = Pipeline().start()
    inbound = os.path.join(p.spool, "inbound")
    with open(os.path.join(inbound, ".writing"), "wb") as f:
        f.write(msgs.clean())
    time.sleep(1.5)
    assert p.entries("inbound") == [] and os.path.exists(os.path.join(inbound, ".writing"))
    assert p.finals() == []
    os.rename(os.path.join(inbound, ".writing"), os.path.join(inbound, "done"))
    p.wait_final(1)


@test
def plain_cp_with_slow_writer_is_not_split_early():
    p = Pipeline().start()
    m = msgs.with_attachment(os.urandom(300000), "blob.bin")
    path = os.path.join(p.spool, "inbound", "slow")
    with open(path, "wb") as f:
        f.write(m[:1000])
        f.flush()
        time.sleep(1.5)  # the splitter sees the name while the writer still has it open
        f.write(m[1000:])
    finals = p.wait_final(1)
    assert finals[0][0] == "outbox/smtp", finals
    assert p.read(finals[0][2], "message") == m, "message was split before the writer finished"


@test
def many_runners_never_leave_a_scanned_entry_waiting():
    # Several runners race for the same events; every entry a runner scanned must be
    # committed before it waits again, not at the next rescan (an hour away here).
    from lib.clamd import Clamd
    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as c:
        p = Pipeline(scanners=[dict(name="clamd", type="clamd", addresses=[c.unix_addr],
                                    timeout=30, max_concurrent=8)],
                     runner=dict(instances=4), rescan_interval=3600).start()
        n = 150
        for i in range(n):
            p.drop("m%03d" % i, msgs.clean(subject="m%d" % i))
        p.wait_final(n, timeout=90)


@test
def clamd_mode_detects_and_passes():
    from lib.clamd import Clamd
    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as c:
        p = Pipeline(scanners=[dict(name="clamd", type="clamd", addresses=[c.unix_addr],
                                    timeout=30, max_concurrent=4)]).start()
        m = msgs.clean()
        p.drop("clean", m)
        p.drop("virus", msgs.eicar_attachment())
        finals = sorted(f[0] for f in p.wait_final(2))
        assert finals == ["outbox/smtp", "quarantine"], finals
        q = [f for f in p.finals() if f[0] == "quarantine"][0]
        assert "Spoold.Test.EICAR" in p.read(q[2], "report").decode()


@test
def per_message_mode_attributes_the_infected_part():
    p = Pipeline(scanners=[dict(name="clamscan-msg", type="exec", mode="per-message",
                                argv=["/usr/bin/clamscan", "--no-summary", "--stdout",
                                      "--alert-encrypted=yes", "--alert-exceeds-max=yes",
                                      "--database=" + harness.sigdir(), "{files}"],
                                clean_codes=[0], infected_codes=[1],
                                virus_regex="^(.+): (.+) FOUND$", timeout=60,
                                max_concurrent=1)]).start()
    p.drop("clean", msgs.clean())
    p.drop("virus", msgs.eicar_attachment())
    finals = sorted(f[0] for f in p.wait_final(2))
    assert finals == ["outbox/smtp", "quarantine"], finals
    q = [f for f in p.finals() if f[0] == "quarantine"][0]
    v = p.read(q[2], "verdicts").decode()
    assert "verdict=infected virus=Spoold.Test.EICAR" in v, v
    assert "verdict=clean" in v, "the text part must stay clean: " + v


if __name__ == "__main__":
    harness.main()
