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
from lib import msgs  # noqa: E402
from lib.clamd import Clamd  # noqa: E402
from lib.pg import Postgres, PsqlError, fleet_conf  # noqa: E402
from lib.spool import Pipeline  # noqa: E402


def clamd_scanner(addr):
    return dict(name="clamd", type="clamd", addresses=[addr], stream_max_length=10 << 20,
                timeout=10, max_concurrent=4)


def node(cd, fleet, extra=""):
    """A started pipeline with the fleet group given (no database, or a node's)."""
    p = Pipeline(scanners=[clamd_scanner(cd.unix_addr)], splitter=dict(scan_raw_message=False),
                 extra="canary_interval = 0;\n" + fleet + extra).start()
    return p


def records(p):
    """{name: {key: [values]}} of the records in export/."""
    d = os.path.join(p.spool, "export")
    res = {}
    for n in sorted(os.listdir(d)):
        if n.startswith("."):
            continue
        with open(os.path.join(d, n)) as f:
            text = f.read()
        assert text.startswith("spoold-event 1\n") and text.endswith("\nend\n"), (n, text)
        kv = {}
        for line in text.splitlines()[1:-1]:
            k, _, v = line.partition(" ")
            kv.setdefault(k, []).append(v)
        res[n] = kv
    return res


def export_count(p):
    d = os.path.join(p.spool, "export")
    return len([n for n in os.listdir(d) if not n.startswith(".")])


def mail(i, infected, node_name="x"):
    common = dict(subject="fleet %s %d" % (node_name, i), frm="s%d@%s.example" % (i, node_name),
                  to=["r%d@dest.example" % i], msgid="<fleet-%s-%d@example.test>" % (node_name, i))
    if infected:
        return msgs.eicar_attachment(**common)
    return msgs.clean(**common)


@test(timeout=180)
def records_wait_in_export_without_a_database():
    """A node with a fleet group and no database writes one record per state change,
    keyed <qid>.<seq>, with what the database needs; no exporter runs."""
    with Clamd(harness.tmpdir("cd"), harness.sigdir()) as cd:
        p = node(cd, 'fleet = { node = "solo"; };\n')
        p.drop("c1", mail(1, False, "solo"))
        p.drop("v1", mail(2, True, "solo"))
        places = {q: place for place, q, _ in p.wait_final(2, timeout=60)}
        wait_for(lambda: export_count(p) >= 6, timeout=10,
                 what="6 records in export/ (have %d)" % export_count(p))
        recs = records(p)
        by_qid = {}
        for name, kv in recs.items():
            qid, seq = name.rsplit(".", 1)
            assert kv["qid"] == [qid] and kv["seq"] == [seq] and kv["node"] == ["solo"], kv
            by_qid.setdefault(qid, {})[kv["kind"][0]] = kv
        assert set(by_qid) == set(places), (by_qid.keys(), places)
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
        assert names == {"1", "2", "3", "4"}, names
        st = p.ctl("status")
        assert re.search(r"^export\s+6\b", st.out, re.M), st.out
        assert "no database: records wait in export/" in st.out, st.out
        stages = [s["name"] for s in p.status_file()]
        assert "exporter" not in stages, stages


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


if __name__ == "__main__":
    harness.main()
