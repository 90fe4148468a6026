#!/usr/bin/python3
"""Compressed and plain subscribers of one topic, for spec/topics_spec.lua.

usage: topics_client.py PORT PATH   (PATH serves the topics app of the spec)

Raw clients (rawws) read the frames themselves: one that agreed to
permessage-deflate with the default window, one that allowed only a
9-bit window, one that offered nothing; python3-websockets clients with
and without compression inflate on their own. A plain connection publishes
(the app's "pub TOPIC DATA" command) a compressible text, a short text, a
binary message and an incompressible one; every subscriber must get each
whole, and the raw ones see which were compressed: the long text is, for
every client that agreed to compression, and never for the one that did
not. Prints ok/FAIL lines and "topics_client: N failed"; exits 0 only if
none failed.
"""
import asyncio
import os
import sys

import rawws
from rawws import Conn, check, inflate

import websockets


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    topic = "mixed"
    url = f"{path}?sub={topic}"
    raw_z = Conn(port, url, "permessage-deflate")
    raw_z9 = Conn(port, url, "permessage-deflate; server_max_window_bits=9")
    raw_plain = Conn(port, url, None)
    check(raw_z.extensions and raw_z.extensions.startswith("permessage-deflate"),
          f"deflate agreed: {raw_z.extensions}")
    check(raw_z9.extensions and "server_max_window_bits=9" in raw_z9.extensions,
          f"deflate with a 9-bit window agreed: {raw_z9.extensions}")
    check(raw_plain.extensions is None, "no extension for the plain client")
    publisher = Conn(port, path, None)

    long_text = ("{\"room\": \"mixed\", \"text\": \"the same words again and again\"} " * 60)
    noise = os.urandom(3000)
    messages = [(1, long_text.encode()), (1, "short é".encode()), (2, b"\x00\x01" * 700),
                (2, noise)]

    async def run_websockets():
        uri = f"ws://127.0.0.1:{port}{url}"
        ws_z = await websockets.connect(uri)
        ws_plain = await websockets.connect(uri, compression=None)
        check(bool(ws_z.extensions), "python3-websockets agreed to compression")
        check(not ws_plain.extensions, "python3-websockets without compression")
        return ws_z, ws_plain

    loop = asyncio.new_event_loop()
    ws_z, ws_plain = loop.run_until_complete(run_websockets())

    for op, data in messages:
        publisher.send(op, b"pub " + topic.encode() + b" " + data)
        rop, reply = publisher.message()
        check(reply == b"n 5", f"published to 5 ({reply[:20]!r})")

    for name, c, agreed in (("raw deflate", raw_z, True), ("raw deflate window 9", raw_z9, True),
                            ("raw plain", raw_plain, False)):
        for i, (op, data) in enumerate(messages):
            fin, rsv1, rop, payload = c.frame()
            got = inflate(payload) if rsv1 else payload
            check(fin and rop == op and got == data, f"{name}: message {i} whole, kind {op}")
            if i == 0:
                check(rsv1 == agreed, f"{name}: the long text {'is' if agreed else 'is not'} compressed")
                if agreed:
                    check(len(payload) < len(data) // 4, f"{name}: compressed small ({len(payload)})")
            if i == 3:
                check(not rsv1, f"{name}: incompressible bytes go plain")
            if not agreed:
                check(not rsv1, f"{name}: never RSV1")

    async def read_websockets():
        for name, ws in (("websockets deflate", ws_z), ("websockets plain", ws_plain)):
            for i, (op, data) in enumerate(messages):
                got = await asyncio.wait_for(ws.recv(), 10)
                want = data.decode() if op == 1 else data
                check(got == want, f"{name}: message {i} whole")
            await ws.close()

    loop.run_until_complete(read_websockets())
    loop.close()
    print(f"topics_client: {rawws.failures} failed")
    sys.exit(1 if rawws.failures else 0)


main()
