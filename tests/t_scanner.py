#!/usr/bin/env python3
"""The scanning engine (issue 4) through the real binaries: the three modes with real
clamscan and a real clamd, the virus name, process control (timeout kill, signals,
unmapped codes, cross-process max_concurrent), clamd failover to a backup, the canary,
and the example configs in conf/examples/."""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib import msgs  # noqa: E402
from lib.clamd import Clamd, free_port  # noqa: E402
from lib.spool import Pipeline, clamscan, fake  # noqa: E402

EICAR_NAME = "Spoold.Test.EICAR"
ONE_PART = dict(scan_raw_message=False)  # one part per message: fewer scanner runs


def scanners_health(p):
    """{name: {state, since, reason}} from run/scanners (None until written)."""
    path = os.path.join(p.spool, "run", "scanners")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    if not lines or lines[-1] != "end":
        return None
    res = {}
    for line in lines[:-1]:
        assert line.startswith("scanner "), line
        kv = dict(t.split("=", 1) for t in line.split()[1:])
        res[kv["name"]] = kv
    return res


def wait_health(p, name, state, timeout=60):
    return wait_for(lambda: (scanners_health(p) or {}).get(name, {}).get("state") == state
                    and scanners_health(p), timeout=timeout,
                    what="scanner %s to be %s in run/scanners (now %s)\n%s"
                    % (name, state, scanners_health(p), p.logtext()[-2000:]))


def by_place(finals):
    return {place: path for place, _, path in finals}


def text(path, name):
    with open(os.path.join(path, name), errors="replace") as f:
        return f.read()


def clamd_scanner(addrs, **kw):
    d = dict(name="clamd", type="clamd", addresses=addrs, stream_max_length=10 << 20,
             timeout=10, max_concurrent=2)
    d.update(kw)
    return d


def check_clean_and_eicar(p, virus_in_trace=True):
    p.drop("clean", msgs.clean(subject="clean"))
    p.drop("virus", msgs.eicar_attachment())
    finals = p.wait_final(2, timeout=90)
    places = sorted(f[0] for f in finals)
    assert places == ["outbox/smtp", "quarantine"], (places, p.logtext()[-3000:])
    q = by_place(finals)["quarantine"]
    assert EICAR_NAME in text(q, "report"), text(q, "report")
    if virus_in_trace:
        # The verdict record travels in the trace: virus name, version, per part.
        tr = text(q, "trace")
        assert re.search(r"verdict=infected virus=Spoold\.Test\.EICAR\S* ", tr), tr
        assert "version=" in tr, tr
    return finals


@test
def per_attachment_clamscan_detects_eicar_and_passes_clean():
    p = Pipeline(scanners=[clamscan()]).start()
    h = wait_health(p, "clamscan", "ok")
    assert h["clamscan"]["reason"] == "", h
    check_clean_and_eicar(p)
    # metrics: per part and scanner, and the scan time histogram
    stats = os.path.join(p.spool, "run", "stats")

    def prom():
        t = ""
        for n in os.listdir(stats) if os.path.isdir(stats) else []:
            if n.startswith("scanner-runner.") and n.endswith(".prom"):
                with open(os.path.join(stats, n)) as f:
                    t += f.read()
        return t
    wait_for(lambda: 'spoold_parts_scanned_total{scanner="clamscan",verdict="infected"}' in prom()
             and 'spoold_parts_scanned_total{scanner="clamscan",verdict="clean"}' in prom()
             and "spoold_scan_seconds" in prom(), timeout=20,
             what="scanner metrics in run/stats/ (now %r)" % prom()[:2000])


@test
def per_message_clamscan_detects_eicar_and_passes_clean():
    sc = clamscan(mode="per-message",
                  argv=["/usr/bin/clamscan", "--no-summary", "--stdout",
                        "--alert-encrypted=yes", "--alert-exceeds-max=yes",
                        "--database=" + harness.sigdir(), "{files}"])
    p = Pipeline(scanners=[sc]).start()
    wait_health(p, "clamscan", "ok")
    finals = check_clean_and_eicar(p)
    q = by_place(finals)["quarantine"]
    # per-message verdicts come from the output lines naming each part: only the EICAR
    # part is infected, the text part is clean
    tr = text(q, "trace")
    assert re.search(r"part=\d+ scanner=clamscan verdict=clean", tr), tr


@test
def clamd_mode_detects_eicar_and_passes_clean():
    with Clamd(harness.tmpdir("clamd"), harness.sigdir()) as cd:
        p = Pipeline(scanners=[clamd_scanner([cd.unix_addr])]).start()
        wait_health(p, "clamd", "ok")
        check_clean_and_eicar(p)
        p.stop()


@test
def hanging_scanner_is_killed_at_timeout_and_message_held():
    p = Pipeline(scanners=[fake("hang", timeout=2)], splitter=ONE_PART).start()
    p.drop("m", msgs.clean())
    finals = p.wait_final(1, timeout=90)
    assert [f[0] for f in finals] == ["hold"], finals
    v = text(finals[0][2], "verdicts")
    assert "exit=timeout" in v, v
    pids = [int(x) for x in re.findall(r"hang:\\x20started\\x20(\d+)", v)]
    pids += [int(x) for x in re.findall(r"hang: started (\d+)", v)]
    assert pids, "no pid of the hanging scanner in the verdicts: %s" % v
    for pid in pids:
        # the scanner and its whole process group are gone (killed and reaped)
        for kill in (os.kill, os.killpg):
            try:
                kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError("scanner process (group) %d still exists" % pid)


@test
def signal_and_unmapped_exit_code_hold():
    p = Pipeline(scanners=[fake("segv"), fake("exit7")], splitter=ONE_PART).start()
    p.drop("m", msgs.clean())
    finals = p.wait_final(1, timeout=60)
    assert [f[0] for f in finals] == ["hold"], finals
    v = text(finals[0][2], "verdicts")
    assert re.search(r"scanner=segv verdict=error \S* ?exit=sig:11", v) or \
        ("scanner=segv" in v and "exit=sig:11" in v), v
    assert "exit=exit:7" in v or "exit=7" in v, v


@test
def max_concurrent_holds_across_two_runners():
    rec = os.path.join(harness.tmpdir("rec"), "record")
    p = Pipeline(scanners=[fake("record", args=["--sleep=0.3", rec], max_concurrent=1)],
                 runner=dict(instances=2), splitter=ONE_PART).start()
    wait_for(lambda: len([s for s in p.status_file() if s["name"] == "scanner-runner"
                          and s["state"] == "running"]) == 2, timeout=30,
             what="two scanner-runners running")
    n = 6
    for i in range(n):
        p.drop("m%d" % i, msgs.clean(subject="m%d" % i))
    p.wait_final(n, timeout=90)
    with open(rec) as f:
        lines = f.read().splitlines()
    starts = [l for l in lines if l.startswith("start ")]
    assert len(starts) >= n, lines
    assert not [l for l in lines if l.startswith("OVERLAP")], lines
    # both runners did scan (while one waits for the slot, the other claims the next)
    pids = set(re.findall(r"scanner-runner\[(\d+)\]: info: qid=\S+ scanned ", p.logtext()))
    assert len(pids) == 2, (pids, p.logtext()[-3000:])


@test
def clamd_down_with_backup_uses_backup():
    down = "unix:" + os.path.join(harness.tmpdir("noclamd"), "clamd.sock")
    p = Pipeline(scanners=[clamd_scanner([down], timeout=2), clamscan(backup=True)],
                 splitter=ONE_PART).start()
    h = wait_health(p, "clamd", "degraded")
    assert "canary-eicar" in h["clamd"]["reason"], h
    p.drop("clean", msgs.clean())
    p.drop("virus", msgs.eicar_attachment())
    finals = p.wait_final(2, timeout=60)
    places = sorted(f[0] for f in finals)
    assert places == ["outbox/smtp", "quarantine"], (places, p.logtext()[-3000:])
    tr = text(by_place(finals)["outbox/smtp"], "trace")
    assert re.search(r"scanner=clamscan verdict=clean \S+ \S+ ms=\d+ backup=1", tr), tr
    assert re.search(r"scanner=clamd verdict=error", tr), tr


@test
def clamd_down_without_backup_holds():
    down = "unix:" + os.path.join(harness.tmpdir("noclamd"), "clamd.sock")
    p = Pipeline(scanners=[clamd_scanner([down], timeout=2)], splitter=ONE_PART).start()
    p.drop("clean", msgs.clean())
    finals = p.wait_final(1, timeout=60)
    assert [f[0] for f in finals] == ["hold"], finals
    assert "verdict=error" in text(finals[0][2], "verdicts")


@test
def clamd_tcp_down_fails_over_to_tcp():
    # Failover stays within a trust class: unix to tcp is refused (t_clamd_trust.py).
    with Clamd(harness.tmpdir("clamd"), harness.sigdir(), tcp=True) as cd:
        down = "tcp:127.0.0.1:%d" % free_port()
        p = Pipeline(scanners=[clamd_scanner([down, cd.tcp_addr])]).start()
        wait_health(p, "clamd", "ok")
        check_clean_and_eicar(p)
        p.stop()


@test
def clamd_coming_up_clears_degraded_through_its_version():
    cd = Clamd(harness.tmpdir("clamd"), harness.sigdir(), start=False)
    harness.cleanup(cd.stop)
    p = Pipeline(scanners=[clamd_scanner([cd.unix_addr], timeout=2)], splitter=ONE_PART,
                 extra="canary_interval = 0;\n").start()
    wait_health(p, "clamd", "degraded")
    cd.start()  # VERSION goes from "unknown" to clamd's: the canary runs again
    wait_health(p, "clamd", "ok", timeout=60)
    p.drop("clean", msgs.clean())
    finals = p.wait_final(1, timeout=60)
    assert [f[0] for f in finals] == ["outbox/smtp"], finals
    p.stop()


@test
def canary_failure_marks_degraded_and_holds_mail():
    # fake/clean calls everything clean: it fails the EICAR canary.
    p = Pipeline(scanners=[fake("clean")], splitter=ONE_PART).start()
    h = wait_health(p, "clean", "degraded")
    assert "canary-eicar.com" in h["clean"]["reason"] and int(h["clean"]["since"]) > 0, h
    p.drop("m", msgs.clean())
    finals = p.wait_final(1, timeout=60)
    assert [f[0] for f in finals] == ["hold"], finals
    v = text(finals[0][2], "verdicts")
    assert "scanner\\x20degraded" in v or "scanner degraded" in v, v
    assert "state=degraded" in text(finals[0][2], "trace")
    # logged loudly, once per state change, not once per message
    log = p.logtext()
    assert log.count("failed its canary") == 1, log[-3000:]


@test
def canary_passes_for_a_real_behaving_scanner():
    p = Pipeline(scanners=[fake("av")], splitter=ONE_PART).start()
    wait_health(p, "av", "ok")
    p.drop("clean", msgs.clean())
    p.drop("virus", msgs.eicar_attachment())
    finals = p.wait_final(2, timeout=60)
    assert sorted(f[0] for f in finals) == ["outbox/smtp", "quarantine"], finals


@test
def canary_reruns_when_version_changes_and_recovers():
    d = harness.tmpdir("drift")
    ver, flag = os.path.join(d, "version"), os.path.join(d, "drift")
    with open(ver, "w") as f:
        f.write("FakeAV 1.0/1\n")
    # canary_interval = 0: no periodic check, so only a version change can re-run it
    p = Pipeline(scanners=[fake("av", args=["--drift-if=" + flag],
                                version_argv=["/bin/cat", ver])],
                 splitter=ONE_PART, router=dict(hold_retry_min=1, hold_retry_max=2),
                 extra="canary_interval = 0;\n").start()
    wait_health(p, "av", "ok")
    open(flag, "w").close()  # the scanner's output drifts with its new database
    with open(ver, "w") as f:
        f.write("FakeAV 1.0/2\n")
    h = wait_health(p, "av", "degraded", timeout=60)
    assert "canary-eicar.com" in h["av"]["reason"], h
    assert "version changed" in p.logtext(), p.logtext()[-2000:]
    p.drop("m", msgs.clean())
    wait_for(lambda: p.entries("hold"), timeout=60, what="the message to be held")
    assert not p.outbox()
    os.unlink(flag)  # fixed by the next database update
    with open(ver, "w") as f:
        f.write("FakeAV 1.0/3\n")
    wait_health(p, "av", "ok", timeout=60)
    assert "passed its canary again" in p.logtext()
    wait_for(lambda: p.outbox(), timeout=60, what="the held message to be delivered")


@test
def runner_binary_does_not_carry_the_eicar_string():
    # The canary builds EICAR at run time from two halves: a scanner on this host must
    # not flag (and quarantine) the scanner-runner binary itself.
    with open(harness.bin_path("scanner-runner"), "rb") as f:
        assert msgs.eicar() not in f.read()
    with open(os.path.join(harness.ROOT, "scanner-runner", "canary.c"), "rb") as f:
        assert msgs.eicar() not in f.read()


@test
def example_configs_load():
    confs = sorted(glob.glob(os.path.join(harness.ROOT, "conf", "examples", "*.conf")))
    assert len(confs) >= 3, confs
    out = harness.tmpdir("examples")
    for i, c in enumerate(confs):
        src = os.path.join(out, "in%d.eml" % i)
        with open(src, "wb") as f:
            f.write(msgs.clean())
        d = os.path.join(out, "out%d" % i)
        os.mkdir(d)
        r = harness.run([harness.bin_path("splitter"), "-c", c, "-x", src, "-o", d], timeout=60)
        assert r.returncode == 0, (c, r.returncode, r.out)


if __name__ == "__main__":
    harness.main()
