#!/usr/bin/env python3
"""Short chaos run (the long one is `make chaos`): messages through the live pipeline
while stages and spoold are killed with SIGKILL; nothing lost, duplicated or misrouted."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402

import chaos  # noqa: E402


@test(timeout=900)
def chaos_short_run():
    n = int(os.environ.get("CHAOS_MESSAGES_CI", "150"))
    lines = []
    lost, dup, mis, inflight, kills = chaos.run(harness.BIN, n, seed=7, kill_every=0.3,
                                                out=lines.append, timeout=300)
    for line in lines:
        print("    " + line)
    assert kills > 0, "no stage was killed: " + lines[0]
    assert (lost, dup, mis, inflight) == (0, 0, 0, 0), "\n".join(lines)


if __name__ == "__main__":
    harness.main()
