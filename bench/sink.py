#!/usr/bin/env python3
"""SMTP sink for bench/peer.py: accepts every message, keeps none, counts them.

    python3 bench/sink.py PORT STATSFILE

Both filters measured side by side (amavisd-new and spoold's connector-smtp) relay their
clean mail here. After each message it rewrites STATSFILE (write, rename; the harness
puts it in /dev/shm so that the sink adds nothing to the disk writes measured) with one
line: epoch messages bytes infected duplicates last_arrival_unix_time. A message is known
by its "Subject: bench N" header (bench/run.py's corpora); it counts as infected if its
body still holds EICAR (the start of its base64 form, which neither filter re-encodes),
and as a duplicate if its N arrived before in this epoch. SIGUSR1 starts a new epoch
(forgets the N seen, increments epoch, keeps the counters), so that the harness can check
each run alone. One readuntil() per message, not per line: the sink shares the two cores
with the systems measured and must cost them little."""
import asyncio
import base64
import os
import re
import signal
import sys
import time

EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
EICAR_B64 = base64.b64encode(EICAR)[:60]  # on one line in base64.encodebytes' output
SUBJ = re.compile(rb"\nSubject: bench (\d+)\r?\n")
# A message larger than this is refused with 552: the bench's largest is 27 MB.
MAX_DATA = 64 << 20

st = dict(epoch=0, n=0, bytes=0, infected=0, dups=0, last=0.0)
seen = set()


def write_stats(path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%(epoch)d %(n)d %(bytes)d %(infected)d %(dups)d %(last).6f\n" % st)
    os.replace(tmp, path)


async def session(r, w, path):
    w.write(b"220 sink ESMTP\r\n")
    try:
        while True:
            line = await r.readline()
            if not line:
                break
            cmd = line[:4].upper()
            if cmd == b"EHLO":
                w.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE %d\r\n"
                        % MAX_DATA)
            elif cmd == b"HELO":
                w.write(b"250 sink\r\n")
            elif cmd in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                w.write(b"250 2.0.0 ok\r\n")
            elif cmd == b"DATA":
                w.write(b"354 go\r\n")
                await w.drain()
                data = await r.readuntil(b"\r\n.\r\n")
                m = SUBJ.search(data, 0, 16384)
                st["n"] += 1
                st["bytes"] += len(data) - 3
                if EICAR_B64 in data or EICAR in data:
                    st["infected"] += 1
                if m:
                    i = int(m.group(1))
                    if i in seen:
                        st["dups"] += 1
                    seen.add(i)
                st["last"] = time.time()
                write_stats(path)
                w.write(b"250 2.0.0 queued\r\n")
            elif cmd == b"QUIT":
                w.write(b"221 2.0.0 bye\r\n")
                await w.drain()
                break
            else:
                w.write(b"502 5.5.2 unknown\r\n")
            await w.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        w.close()


def new_epoch(path):
    seen.clear()
    st["epoch"] += 1
    write_stats(path)


async def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, new_epoch, path)
    write_stats(path)
    srv = await asyncio.start_server(lambda r, w: session(r, w, path), "127.0.0.1", port,
                                     limit=MAX_DATA)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
