#!/usr/bin/env python3
"""The clamd protocol client (scanner-runner/clamd.c) against a real clamd started here."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402
from lib.clamd import Clamd  # noqa: E402


@test
def clamd_client_unit_against_real_clamd():
    unit = os.path.join(harness.BIN, "..", "tests", "unit_clamd")
    if not os.path.exists(unit):
        harness.skip("unit_clamd not built")
    with Clamd(harness.tmpdir("clamd"), harness.sigdir(), tcp=True, stream_max_length="1M") as c:
        env = dict(os.environ, TEST_CLAMD_EICAR_NAME="Spoold.Test.EICAR.NDB.UNOFFICIAL",
                   TEST_CLAMD_STREAM_MAX=str(1 << 20))
        r = harness.run([unit, c.unix_addr, c.tcp_addr], timeout=300, env=env)
        fails = [l for l in r.out.splitlines() if l.startswith("FAIL")]
        assert r.returncode == 0 and not fails, "\n".join(fails) or r.out[-2000:]
        assert r.out.count("PASS") > 20, r.out[-500:]


if __name__ == "__main__":
    harness.main()
