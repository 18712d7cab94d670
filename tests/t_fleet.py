#!/usr/bin/env python3
"""The fleet (issue 16, docs/FLEET.md): event records in export/, the exporter stage, one
PostgreSQL for several nodes, search, release and delete from any node, roles.

Real binaries, a real clamd (one for every node), a real PostgreSQL: a throwaway cluster
per test (initdb + pg_ctl on a Unix socket, tests/lib/pg.py). Sizes are scaled so that
the whole file stays within a few minutes in each build; each test says where it is
smaller than the issue's figure and why."""
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test, wait_for  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.fleet import (clamd_scanner, drained, export_count, exporter_pid,  # noqa: E402
                       fleet_nodes, mail, records)
from lib.pg import PsqlError  # noqa: E402
from lib.smtpsink import SmtpSink  # noqa: E402
from lib.spool import Pipeline, fake  # noqa: E402


def node(cd, fleet, extra=""):
    """A started pipeline with the fleet group given (no database, or a node's)."""
    p = Pipeline(scanners=[clamd_scanner(cd.unix_addr)], splitter=dict(scan_raw_message=False),
                 extra="canary_interval = 0;\n" + fleet + extra).start()
    return p


@test(timeout=180)
def records_wait_in_export_without_a_database():
    """A node with a fleet group and no database writes one record per state change,
    keyed <qid>.<seq>, with what the database needs; no exporter runs."""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        p = node(cd, 'fleet = { node = "solo"; };\n')
        p.drop("c1", mail(1, False, "solo"))
        p.drop("v1", mail(2, True, "solo"))
        # No recipient in its headers: badmail/, with a record that says why.
        p.drop("b1", b"From: s@solo.example\nSubject: nobody\n\nno recipient\n")
        places = {q: place for place, q, _ in p.wait_final(3, timeout=60)}
        wait_for(lambda: export_count(p) >= 7, timeout=10,
                 what="7 records in export/ (have %d)" % export_count(p))
        recs = records(p)
        by_qid = {}
        for name, kv in recs.items():
            qid, seq = name.rsplit(".", 1)
            assert kv["qid"] == [qid] and kv["seq"] == [seq] and kv["node"] == ["solo"], kv
            by_qid.setdefault(qid, {})[kv["kind"][0]] = kv
        assert set(by_qid) == set(places), (by_qid.keys(), places)
        (bad,) = [q for q, pl in places.items() if pl == "badmail"]
        bk = by_qid.pop(bad)
        assert set(bk) == {"badmail"} and bk["badmail"]["detail"], bk
        assert bk["badmail"]["subject"] == ["nobody"], bk
        del places[bad]
        for qid, place in places.items():
            kinds = by_qid[qid]
            want = {"intake", "scanned", "outbox" if place.startswith("outbox") else "quarantine"}
            assert set(kinds) == want, (qid, place, sorted(kinds))
            it = kinds["intake"]
            assert it["subject"][0].startswith("fleet solo"), it
            assert it["message_id"][0].startswith("<fleet-solo-"), it
            assert it["rcpt"][0].endswith("@dest.example") and it["sender"][0].endswith(".example")
            if place == "quarantine":
                assert kinds["scanned"]["class"] == ["virus"], kinds["scanned"]
                assert kinds["scanned"]["virus"], kinds["scanned"]
                assert kinds["quarantine"]["class"] == ["virus"], kinds["quarantine"]
            else:
                assert kinds["scanned"]["class"] == ["clean"], kinds["scanned"]
        # Seq is fixed per transition: intake 1, scanned 2, outbox 3, quarantine 4.
        names = {n.rsplit(".", 1)[1] for n in recs}
        assert names == {"1", "2", "3", "4", "6"}, names
        st = p.ctl("status")
        assert re.search(r"^export\s+7\b", st.out, re.M), st.out
        assert "no database: records wait in export/" in st.out, st.out
        stages = [s["name"] for s in p.status_file()]
        assert "exporter" not in stages, stages
        # Deleted by hand: a record of its own, with who and from where.
        r = p.ctl("delete", bad)
        assert r.returncode == 0, r.out
        kv = records(p)["%s.9" % bad]
        assert kv["kind"] == ["deleted"] and re.fullmatch(r"uid=\d+ from=badmail", kv["detail"][0]), kv


@test(timeout=180)
def backlog_is_capped_and_mail_keeps_flowing():
    """Past fleet.max_backlog records are dropped, counted and logged; mail never stops."""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        cap = 5
        p = node(cd, 'fleet = { node = "full"; max_backlog = %d; };\n' % cap,
                 extra='metrics = { file = "%s"; interval = 1; };\n'
                 % os.path.join(harness.tmpdir("m"), "metrics.prom"))
        for i in range(6):
            p.drop("m%d" % i, mail(i, False, "full"))
        p.wait_final(6, timeout=60)
        # Each writer re-counts export/ before every record near the cap, so only writers
        # racing at the very edge can pass it, by one record each (4 writers here).
        n = export_count(p)
        assert cap <= n <= cap + 4, n
        wait_for(lambda: "event record dropped (cap)" in p.logtext(), timeout=10,
                 what="the drop in the log")
        st = p.ctl("status")
        assert "FULL: new records are DROPPED" in st.out and st.returncode == 1, st.out

        def dropped():
            for line in open(p_metrics(p)).read().splitlines():
                if line.startswith('spoold_export_dropped_total{why="cap"}'):
                    return float(line.split()[-1])
            return 0
        wait_for(lambda: dropped() > 0, timeout=15, what="spoold_export_dropped_total")
        assert "spoold_export_backlog %d" % n in open(p_metrics(p)).read()


def p_metrics(p):
    with open(p.conf) as f:
        return re.search(r'metrics = \{ file = "([^"]+)"', f.read()).group(1)


# A crash at each commit step of a fleet node, then the stages' recovery runs: every
# transition has exactly one record under its fixed name (the redo rewrote the same key).
CRASH = [("splitter", "split-precommit", "quarantine"), ("splitter", "moved-to-scan", "outbox"),
         ("scanner-runner", "scan-verdicts", "outbox"),
         ("scanner-runner", "moved-to-route", "quarantine"),
         ("router", "route-fanout-plan", "outbox"), ("router", "route-fanout-done", "outbox"),
         ("router", "route-quarantine", "quarantine"),
         ("router", "moved-to-quarantine", "quarantine")]


def crash_records(stage, point, want):
    if "asan" not in (harness.BIN or ""):
        harness.skip("crash points exist only in the test build (build/asan/bin)")
    p = Pipeline(scanners=[fake("av")], extra='fleet = { node = "crash"; };\n')
    os.makedirs(os.path.join(p.spool, "export"))  # spoold makes it; here no spoold runs
    p.drop("m", mail(1, want == "quarantine", "crash"))
    for s in ("splitter", "scanner-runner", "router"):
        if s == stage:
            r = p.stage(s, env={"SPOOLD_CRASH_AT": point})
            assert r.returncode == 99, (s, point, r.returncode, r.out[-1500:])
        r = p.stage(s)
        assert r.returncode == 0, (s, r.out[-1500:])
    (final,) = p.finals()
    qid = final[1]
    assert final[0].startswith(want), final
    names = sorted(records(p))
    last = "3" if want == "outbox" else "4"
    assert names == ["%s.%s" % (qid, n) for n in ("1", "2", last)], names
    kinds = [records(p)[n]["kind"][0] for n in names]
    assert kinds == ["intake", "scanned", want], kinds


for _s, _p, _w in CRASH:
    def _mk(s=_s, pt=_p, w=_w):
        def fn():
            crash_records(s, pt, w)
        fn.__name__ = "crash_%s_%s_records_once" % (s.replace("-", "_"), pt.replace("-", "_"))
        return fn
    test(_mk())


# ---- with a database -----------------------------------------------------------------

def search(p, *args):
    r = p.ctl("fleet", "search", "--json", *args)
    assert r.returncode in (0, 1), r.out
    return json.loads(r.out) if r.returncode == 0 else []


@test(timeout=300)
def three_nodes_one_database():
    """Three spools and spoolds, one PostgreSQL: 300 messages, 100 with EICAR, give
    exactly 100 quarantine rows within 5 s of the last final state, and search finds a
    message by every key."""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["a", "b", "c"])
        for k, (name, p) in enumerate(nodes.items()):
            for i in range(100):
                p.drop("m%d" % i, mail(i, (k * 100 + i) % 3 == 0, name))
        finals = {}
        for name, p in nodes.items():
            finals[name] = p.wait_final(100, timeout=180)
        last = time.time()
        quarantined = sum(1 for f in finals.values() for place, _, _ in f if place == "quarantine")
        delivered = sum(1 for f in finals.values() for place, _, _ in f if place.startswith("outbox"))
        assert quarantined == 100 and delivered == 200, (quarantined, delivered)
        wait_for(lambda: pg.value("SELECT count(*) FROM spoold.messages WHERE state = "
                                  "'quarantine'") == str(quarantined), timeout=5,
                 what="%d quarantine rows" % quarantined)
        assert time.time() - last <= 5.5
        wait_for(lambda: all(drained(p) for p in nodes.values()), timeout=20,
                 what="export/ drained")
        assert pg.value("SELECT count(*) FROM spoold.messages") == "300"
        assert pg.value("SELECT count(*) FROM spoold.messages WHERE class = 'virus'") \
            == str(quarantined)
        # Every message has exactly its three events (intake, scanned, routed).
        assert pg.value("SELECT count(*) FROM (SELECT node, qid FROM spoold.events GROUP BY "
                        "node, qid HAVING count(*) <> 3) x") == "0"
        # Search by every key, from node a, for a message of node b.
        by_place = {q: place for place, q, _ in finals["b"]}
        qid = sorted(q for q, pl in by_place.items() if pl == "quarantine")[0]
        row = search(nodes["a"], "--qid", qid)
        assert len(row) == 1 and row[0]["node"] == "b" and row[0]["state"] == "quarantine", row
        i = int(re.search(r"fleet b (\d+)", row[0]["subject"]).group(1))
        assert [e["event"] for e in row[0]["trail"]] == ["intake", "scanned", "quarantine"], row
        for args in (("--from", "s%d@b.example" % i), ("--to", "r%d@dest.example" % i),
                     ("--subject", "fleet b %d" % i), ("--message-id", "<fleet-b-%d@example.test>" % i),
                     ("--message-id", "fleet-b-%d@example.test" % i),
                     ("--state", "quarantine", "--node", "b"), ("--since", "10m", "--node", "b"),
                     ("--node", "b")):
            found = [(m["node"], m["qid"]) for m in search(nodes["a"], *args)]
            assert ("b", qid) in found, (args, found)
        assert len(search(nodes["c"], "--state", "quarantine")) == quarantined
        assert search(nodes["c"], "--from", "nobody@nowhere.example") == []
        text = nodes["c"].ctl("fleet", "search", "--qid", qid)
        assert text.returncode == 0 and qid in text.out and "quarantine" in text.out, text.out


@test(timeout=180)
def release_across_nodes_is_delivered_once_by_the_owner():
    """Quarantined on B, released from A: B delivers it once; a second release fails
    with a reason; the audit row names who and when; an unknown queue ID fails."""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["a", "b"])
        a, b = nodes["a"], nodes["b"]
        b.drop("v", mail(1, True, "b"))
        b.drop("w", mail(2, True, "b"))
        places = {q: pl for pl, q, _ in b.wait_final(2, timeout=60)}
        assert set(places.values()) == {"quarantine"}, places
        q1, q2 = sorted(places)
        wait_for(lambda: pg.value("SELECT count(*) FROM spoold.messages WHERE state = "
                                  "'quarantine'") == "2", timeout=10, what="2 quarantine rows")
        r = a.ctl("fleet", "release", q1, "--wait", "30")
        assert r.returncode == 0 and "done" in r.out and "released" in r.out, r.out
        assert [q for _, q in b.outbox()] == [q1], b.outbox()
        assert a.outbox() == [] and a.entries("quarantine") == []
        r = a.ctl("fleet", "release", q1, "--wait", "30")
        assert r.returncode == 1 and "failed" in r.out and "not in quarantine" in r.out, r.out
        assert [q for _, q in b.outbox()] == [q1], b.outbox()
        audit = pg.psql("SELECT status, requested_by, done_at IS NOT NULL, result FROM "
                        "spoold.actions WHERE qid = '%s' ORDER BY id" % q1).splitlines()
        assert audit[0].startswith("done|fleet_admin|t|"), audit
        assert audit[1].startswith("failed|fleet_admin|t|") and "not in quarantine" in audit[1]
        wait_for(lambda: pg.value("SELECT state FROM spoold.messages WHERE qid = '%s'" % q1)
                 == "outbox", timeout=10, what="the released message routed to the outbox")
        assert pg.value("SELECT release_status FROM spoold.recipients WHERE qid = '%s'" % q1) \
            == "released"
        # Delete from A of B's other message; then a release of it fails: it is gone.
        r = a.ctl("fleet", "delete", q2, "--wait", "30")
        assert r.returncode == 0 and "done" in r.out, r.out
        assert b.entries("quarantine") == []
        r = a.ctl("fleet", "release", q2, "--wait", "30")
        assert r.returncode == 1 and "not in quarantine" in r.out, r.out
        unknown = "0661234567890a-00abcd-0000"
        r = a.ctl("fleet", "release", unknown)
        assert r.returncode == 1 and "unknown message" in r.out, r.out
        assert pg.value("SELECT status || ':' || result FROM spoold.actions WHERE qid = '%s'"
                        % unknown).startswith("failed:unknown message")
        assert [q for _, q in b.outbox()] == [q1]
        # Retention: rows of q2 made 10 days old go with `fleet expire --days 5`; q1's stay.
        wait_for(lambda: drained(b), timeout=20, what="export/ drained")
        pg.psql("UPDATE spoold.events SET at = at - interval '10 days' WHERE qid = '%s';"
                "UPDATE spoold.messages SET last_seen = last_seen - interval '10 days' "
                "WHERE qid = '%s';"
                "UPDATE spoold.actions SET done_at = done_at - interval '10 days' "
                "WHERE qid IN ('%s', '%s')" % (q2, q2, q2, unknown))
        r = a.ctl("fleet", "expire", "--days", "5")
        assert r.returncode == 0 and "messages: 1 removed" in r.out, r.out
        assert pg.value("SELECT count(*) FROM spoold.events WHERE qid = '%s'" % q2) == "0"
        assert pg.value("SELECT count(*) FROM spoold.actions WHERE qid IN ('%s', '%s')"
                        % (q2, unknown)) == "0"
        assert pg.value("SELECT count(*) FROM spoold.recipients WHERE qid = '%s'" % q2) == "0"
        assert pg.value("SELECT count(*) FROM spoold.messages WHERE qid = '%s'" % q1) == "1"
        assert int(pg.value("SELECT count(*) FROM spoold.events WHERE qid = '%s'" % q1)) >= 4


@test(timeout=240)
def database_outage_mail_flows_and_the_backlog_drains():
    """The database stops under load: mail keeps flowing, records wait, and after it is
    back the backlog drains and the central counts equal the spool's. (Scaled: a 10 s
    outage, not the issue's 60 s, and no latency measurement here; tests/t_fleet_load.py
    has both.)"""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["a"])
        p = nodes["a"]
        for i in range(40):
            p.drop("m%d" % i, mail(i, i % 10 == 0, "a"))
        p.wait_final(40, timeout=120)
        wait_for(lambda: drained(p), timeout=20, what="export/ drained")
        pg.stop()
        t0 = time.time()
        for i in range(40, 120):
            p.drop("m%d" % i, mail(i, i % 10 == 0, "a"))
        finals = p.wait_final(120, timeout=120)
        assert export_count(p) >= 80 * 3, export_count(p)
        wait_for(lambda: "fleet database: UNAVAILABLE" in p.ctl("status").out, timeout=15,
                 what="spoolctl status to say the database is unavailable")
        st = p.ctl("status")
        assert re.search(r"^export\s+(\d+)", st.out, re.M).group(1) == str(export_count(p)), st.out
        time.sleep(max(0, 10 - (time.time() - t0)))
        pg.start()
        wait_for(lambda: drained(p), timeout=60, what="export/ drained after the outage")
        wait_for(lambda: "fleet database: connected" in p.ctl("status").out, timeout=15,
                 what="spoolctl status to say the database is back")
        q = sum(1 for pl, _, _ in finals if pl == "quarantine")
        o = sum(1 for pl, _, _ in finals if pl.startswith("outbox"))
        assert (q, o) == (12, 108), (q, o)
        assert pg.value("SELECT count(*) FROM spoold.messages") == "120"
        assert pg.value("SELECT count(*) FROM spoold.messages WHERE state = 'quarantine'") == str(q)
        assert pg.value("SELECT count(*) FROM spoold.messages WHERE state = 'outbox'") == str(o)
        assert pg.value("SELECT count(*) FROM spoold.events") == str(120 * 3)
        assert "fleet database unavailable" in p.logtext()


@test(timeout=300)
def kill_9_of_the_exporter_loses_and_duplicates_nothing():
    """kill -9 of the exporter at random points while records are shipped: afterwards every
    message has each of its events exactly once. (Scaled: 600 messages and 4 kills, not the
    issue's 10,000, so that the test takes well under two minutes; spoold gives up on a
    stage after 5 deaths a minute. batch = 20 makes many commits to land a kill between.
    tests/t_fleet_load.py has the issue's full size.)"""
    import random
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["k"])
        p = nodes["k"]
        r = p.ctl("stop", "exporter")
        assert r.returncode == 0, r.out
        for i in range(600):
            p.drop("m%d" % i, mail(i, i % 7 == 0, "k"))
        finals = p.wait_final(600, timeout=240)
        assert export_count(p) == 600 * 3, export_count(p)
        r = p.ctl("start", "exporter")
        assert r.returncode == 0, r.out
        kills = 0
        rnd = random.Random(16)
        while kills < 4 and not drained(p):
            pid = wait_for(lambda: exporter_pid(p), timeout=20, what="a running exporter")
            time.sleep(rnd.uniform(0.05, 0.4))
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
            wait_for(lambda: exporter_pid(p) != pid, timeout=20, what="the exporter restarted")
        assert kills >= 2, kills
        wait_for(lambda: drained(p), timeout=90, what="export/ drained")
        assert pg.value("SELECT count(*) FROM spoold.events") == str(600 * 3)
        assert pg.value("SELECT count(*) FROM spoold.messages") == "600"
        q = sum(1 for pl, _, _ in finals if pl == "quarantine")
        assert pg.value("SELECT count(*) FROM spoold.messages WHERE state = 'quarantine'") == str(q)
        assert pg.value("SELECT count(*) FROM (SELECT 1 FROM spoold.events GROUP BY node, qid "
                        "HAVING count(*) <> 3) x") == "0"


@test(timeout=180)
def a_message_requeued_from_badmail_has_records_of_its_second_pass():
    """A message in badmail/ requeued (`spoolctl requeue`) is split again under the same
    queue ID: each pass has keys of its own (the pass in its `requeues` file: seq = pass
    * 100,000,000 + kind), so the database has the records of every pass - the second
    badmail record, which repeated the first's key before, and, once mended, the third
    pass's intake, scanned and outbox - and the message's state is the last pass's."""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["r"])
        p = nodes["r"]
        body = b"Subject: mended\nMessage-ID: <requeue@example.test>\n\nfirst no recipient\n"
        p.drop("b", b"From: s@r.example\n" + body)
        ((place, qid, path),) = p.wait_final(1, timeout=60)
        assert place == "badmail", place
        wait_for(lambda: drained(p), timeout=20, what="export/ drained")
        assert pg.psql("SELECT seq, kind FROM spoold.events WHERE qid = '%s'" % qid) \
            == "6|badmail"
        pass1, pass2 = 100000000, 200000000

        def requeue():
            r = p.ctl("requeue", qid)
            assert r.returncode == 0 and "requeued: badmail -> incoming" in r.out, r.out
        # Requeued as it is: badmail again, for the same reason, in pass 1.
        requeue()
        def badmail_twice():
            try:
                with open(os.path.join(path, "trace")) as f:
                    return f.read().count(" splitter badmail ") == 2
            except FileNotFoundError:
                return False  # on its way through incoming/
        wait_for(badmail_twice, timeout=60, what="badmail/ again")
        wait_for(lambda: drained(p), timeout=20, what="export/ drained")
        # The administrator gives it a recipient, and requeues it.
        tmp = os.path.join(path, ".message.new")
        with open(tmp, "wb") as f:
            f.write(b"From: s@r.example\nTo: r@dest.example\n" + body)
        os.rename(tmp, os.path.join(path, "message"))
        p.hand_made(os.path.join(path, "message"), "splitter")
        requeue()
        wait_for(lambda: p.outbox() == [("smtp", qid)], timeout=60,
                 what="the requeued message in the outbox\n%s" % p.logtext()[-2000:])
        wait_for(lambda: drained(p), timeout=20, what="export/ drained")
        rows = pg.psql("SELECT seq, kind FROM spoold.events WHERE qid = '%s' ORDER BY seq"
                       % qid).splitlines()
        assert rows == ["6|badmail", "%d|badmail" % (pass1 + 6), "%d|intake" % (pass2 + 1),
                        "%d|scanned" % (pass2 + 2), "%d|outbox" % (pass2 + 3)], rows
        assert pg.value("SELECT state || ' ' || coalesce(subject, '') FROM spoold.messages "
                        "WHERE qid = '%s'" % qid) == "outbox mended"
        assert pg.value("SELECT count(*) FROM spoold.recipients WHERE qid = '%s' AND rcpt = "
                        "'r@dest.example'" % qid) == "1"


@test(timeout=240)
def a_message_a_connector_bounced_and_requeued_is_keyed_in_each_pass():
    """A connector's delivered and bounced records are keyed in the pass of the message:
    the router copies `requeues` into each outbox entry. A message the smtp connector
    bounces twice (5xx), each bounce requeued from badmail/, and then delivers, has the
    records of three passes: the second bounce is not the first's key again (pass 0,
    which the database would drop as a duplicate), the second requeue counts on from the
    bounce's badmail/ entry (pass 2, not pass 1 again), and the delivery is pass 2's."""
    sink = SmtpSink(data_replies=["554 5.7.1 not yet", "554 5.7.1 still not", "250 2.0.0 ok"])
    harness.cleanup(sink.stop)
    conn = dict(name="smtp", domains=["*"], type="smtp", relay="smtp://127.0.0.1:%d" % sink.port,
                helo="spoold-test", retry_min=1, retry_max=2)
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["s"], connectors=[conn])
        p = nodes["s"]
        p.drop("m", mail(1, False, "s"))

        def bounced(n):
            """The message in badmail/ after its n-th bounce: its queue ID."""
            def fn():
                for q in p.entries("badmail"):
                    try:
                        with open(os.path.join(p.spool, "badmail", q, "trace")) as f:
                            if f.read().count(" bounce connector=smtp ") == n:
                                return q
                    except FileNotFoundError:
                        pass  # requeued meanwhile
                return None
            return wait_for(fn, timeout=60, what="bounce %d in badmail/\n%s"
                            % (n, p.logtext()[-2000:]))

        def requeue(qid):
            with open(os.path.join(p.spool, "badmail", qid, "reason")) as f:
                assert "connector smtp" in f.read()
            r = p.ctl("requeue", qid)
            assert r.returncode == 0 and "requeued: badmail -> incoming" in r.out, r.out
        qid = bounced(1)
        requeue(qid)
        assert bounced(2) == qid
        requeue(qid)
        wait_for(lambda: len(sink.messages) == 1 and p.outbox() == [] and p.in_flight() == 0,
                 timeout=60, what="the delivery of the third pass\n%s" % p.logtext()[-2000:])
        assert p.entries("badmail") == [] and sink.attempts == 3, (p.entries("badmail"),
                                                                  sink.attempts)
        wait_for(lambda: drained(p), timeout=20, what="export/ drained")
        rows = pg.psql("SELECT seq, kind FROM spoold.events WHERE qid = '%s' ORDER BY seq"
                       % qid).splitlines()

        def pass_rows(n, last_seq, last_kind):
            base = n * 100000000  # seq = pass * 1,000,000 * 100 + kind (+ connector 0)
            return ["%d|intake" % (base + 1), "%d|scanned" % (base + 2),
                    "%d|outbox" % (base + 3), "%d|%s" % (base + last_seq, last_kind)]
        want = pass_rows(0, 60, "bounced") + pass_rows(1, 60, "bounced") \
            + pass_rows(2, 20, "delivered")
        assert rows == want, rows
        assert pg.value("SELECT state FROM spoold.messages WHERE qid = '%s'" % qid) \
            == "delivered"


@test(timeout=180)
def a_nodes_role_cannot_change_another_nodes_rows():
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        pg, nodes = fleet_nodes(cd, ["a", "b"])
        nodes["b"].drop("v", mail(1, True, "b"))
        (qid,) = [q for _, q, _ in nodes["b"].wait_final(1, timeout=60)]
        wait_for(lambda: drained(nodes["b"]), timeout=20, what="export/ drained")
        r = nodes["a"].ctl("fleet", "release", qid)  # queued for b; b does it soon
        assert r.returncode == 0, r.out
        as_a = dict(service="spoold-a")
        forged = ("INSERT INTO spoold.events (node, qid, seq, kind, at) VALUES "
                  "('b', '%s', 999, 'deleted', now())" % qid)
        attempts = [forged,
                    "UPDATE spoold.events SET subject = 'x' WHERE node = 'b'",
                    "DELETE FROM spoold.events WHERE node = 'b'",
                    "UPDATE spoold.messages SET state = 'deleted'",
                    "DELETE FROM spoold.messages",
                    "UPDATE spoold.nodes SET role = 'node_a' WHERE node = 'b'",
                    "INSERT INTO spoold.actions (node, qid, action) VALUES ('b', '%s', "
                    "'delete')" % qid]
        for sql in attempts:
            try:
                pg.psql(sql, **as_a)
            except PsqlError as e:
                assert "permission denied" in str(e) or "row-level security" in str(e), (sql, e)
            else:
                raise AssertionError("node a's role could run: %s" % sql)
        # RLS hides b's actions from a: an update touches nothing.
        assert pg.psql("UPDATE spoold.actions SET status = 'failed' WHERE node = 'b' "
                       "RETURNING id", **as_a) == ""
        assert pg.psql("SELECT count(*) FROM spoold.actions", **as_a) == "0"
        assert pg.psql("SELECT count(*) FROM spoold.events WHERE node = 'b'", **as_a) == "0"
        # Its own rows it may write - whatever bytes it likes, which the admin's terminal
        # then sees escaped, never as a control sequence.
        pg.psql("INSERT INTO spoold.events (node, qid, seq, kind, at, subject) VALUES "
                "('a', '0661234567890a-00abcd-0001', 1, 'intake', now(), "
                "E'\\x1b]0;owned\\x07')", **as_a)
        r = nodes["b"].ctl("fleet", "search", "--node", "a")
        assert r.returncode == 0 and "\x1b" not in r.out and "\\x1b]0;owned\\x07" in r.out, r.out
        wait_for(lambda: pg.value("SELECT status FROM spoold.actions WHERE qid = '%s'" % qid)
                 == "done", timeout=20, what="b's release done")
        assert pg.value("SELECT count(*) FROM spoold.events WHERE node = 'b' AND seq = 999") == "0"


if __name__ == "__main__":
    harness.main()
