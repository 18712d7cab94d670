"""Helpers of the fleet tests (tests/t_fleet.py, tests/t_fleet_load.py): a clamd scanner
entry, the records in a node's export/, the test mail, and fleet nodes on one throwaway
PostgreSQL (tests/lib/pg.py). Moved out of t_fleet.py unchanged so that the load tests,
which run alone, share them without importing (and so registering) t_fleet's tests."""
import os

from . import msgs
from .pg import Postgres, fleet_conf
from .spool import Pipeline


def clamd_scanner(addr):
    return dict(name="clamd", type="clamd", addresses=[addr], stream_max_length=10 << 20,
                timeout=10, max_concurrent=4)


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


def drained(p):
    return export_count(p) == 0


def mail(i, infected, node_name="x"):
    common = dict(subject="fleet %s %d" % (node_name, i), frm="s%d@%s.example" % (i, node_name),
                  to=["r%d@dest.example" % i], msgid="<fleet-%s-%d@example.test>" % (node_name, i))
    if infected:
        return msgs.eicar_attachment(**common)
    return msgs.clean(**common)


def fleet_nodes(cd, names, extra="", invariant=True, fleet_extra="", connectors=None):
    """A cluster, one role per node, the schema, and one started pipeline per node.
    invariant: Pipeline's delivery check (a reason string turns it off); fleet_extra:
    more keys of the fleet group (batch...); connectors: Pipeline's (None: its default)."""
    pg = Postgres()
    pipes = {}
    for n in names:
        pg.add_role("node_%s" % n, "spoold-%s" % n)
        pipes[n] = Pipeline(scanners=[clamd_scanner(cd.unix_addr)],
                            splitter=dict(scan_raw_message=False),
                            extra="canary_interval = 0;\n" + fleet_conf(pg, n, "spoold-" + n,
                                                                   fleet_extra)
                            + extra, invariant=invariant, connectors=connectors)
    first = pipes[names[0]]
    if first.separated:
        # Separated, spoold and spoolctl run as the spool's user: the credentials are that
        # user's, readable by no one else (docs/FLEET.md).
        from . import privsep
        pg.give_auth(privsep.SPOOL_USER)
    r = first.ctl("fleet", "init")
    assert r.returncode == 0 and "schema version 1" in r.out, r.out
    r = first.ctl("fleet", "init")  # idempotent: an upgrade in place
    assert r.returncode == 0, r.out
    for n in names:
        r = first.ctl("fleet", "node", n, "node_" + n)
        assert r.returncode == 0, r.out
    for p in pipes.values():
        p.start()
    return pg, pipes


def exporter_pid(p):
    for s in p.status_file():
        if s["name"] == "exporter" and s["state"] == "running" and int(s["pid"]) > 0:
            return int(s["pid"])
    return None


__all__ = ["clamd_scanner", "records", "export_count", "drained", "mail", "fleet_nodes",
           "exporter_pid"]
