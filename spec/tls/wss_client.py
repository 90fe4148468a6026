#!/usr/bin/python3
"""A wss:// client for the TLS spec: python3-websockets, with an ssl context
that trusts only the throwaway certificate the spec made.

  wss_client.py echo URI CAFILE   text and binary echoes (small, 150 KB, 1 MiB),
                                  permessage-deflate agreed, then a close with
                                  4000 that the server must echo
  wss_client.py many URI CAFILE N N connections one after another, each one
                                  echo and a close with 1000
  wss_client.py flood URI CAFILE N  N 20 KB messages sent while not reading
                                  for a while (the server stops reading the
                                  connection, then resumes), echoes in order

Prints one "ok" line per check and a final summary; exits 0 only if
everything held, 1 on a failure, 3 if websockets cannot be imported."""
import asyncio
import os
import ssl
import sys

try:
    import websockets
except ImportError as exc:
    print(f"wss_client.py: cannot import websockets: {exc}", file=sys.stderr)
    sys.exit(3)

CHECKS = [
    ("short text", "hello over TLS, w\u00f6rld \u2603"),
    ("short binary", bytes(range(256))),
    # Over CONN_REF_MIN: the echo leaves by reference, through the iovec path,
    # and spans several TLS records each way.
    ("150 KB binary", os.urandom(150 * 1024)),
    ("150 KB text", "\u00e9" * (75 * 1024)),
    ("1 MiB binary", os.urandom(1 << 20)),
    # Compresses well: goes out compressed when permessage-deflate is on.
    ("100 KB compressible text", "moonport " * 12000),
    ("empty binary", b""),
]


def context(cafile):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    return ctx


async def echo(uri, cafile):
    async with websockets.connect(uri, ssl=context(cafile), max_size=None) as ws:
        names = [e.name for e in ws.extensions]
        if "permessage-deflate" not in names:
            print(f"wss_client.py: permessage-deflate not agreed: {names}", file=sys.stderr)
            return 1
        print("ok permessage-deflate agreed")
        for name, message in CHECKS:
            await ws.send(message)
            echoed = await asyncio.wait_for(ws.recv(), timeout=20)
            if type(echoed) is not type(message) or echoed != message:
                print(f"wss_client.py: {name}: the echo differs", file=sys.stderr)
                return 1
            print(f"ok {name}")
        version = ws.transport.get_extra_info("ssl_object").version()
        print(f"ok over {version}")
        await ws.close(code=4000, reason="bye")
        if ws.close_code != 4000:
            print(f"wss_client.py: closed with 4000, the server answered "
                  f"{ws.close_code} {ws.close_reason!r}", file=sys.stderr)
            return 1
        print("ok close code 4000 echoed")
    print(f"wss_client.py: all {len(CHECKS) + 3} checks passed")
    return 0


async def many(uri, cafile, n):
    ctx = context(cafile)
    for i in range(n):
        async with websockets.connect(uri, ssl=ctx) as ws:
            await ws.send(f"message {i}")
            echoed = await asyncio.wait_for(ws.recv(), timeout=10)
            if echoed != f"message {i}":
                print(f"wss_client.py: connection {i}: got {echoed!r}", file=sys.stderr)
                return 1
            await ws.close(code=1000)
            if ws.close_code != 1000:
                print(f"wss_client.py: connection {i}: close answered with {ws.close_code}",
                      file=sys.stderr)
                return 1
    print(f"wss_client.py: all {n} connections echoed and closed")
    return 0


async def flood(uri, cafile, n):
    messages = [os.urandom(20 * 1024) for _ in range(n)]
    async with websockets.connect(uri, ssl=context(cafile), max_size=None,
                                  compression=None) as ws:
        async def send_all():
            for m in messages:
                await ws.send(m)

        sender = asyncio.ensure_future(send_all())
        await asyncio.sleep(0.5)  # the echoes pile up at the server meanwhile
        for i, m in enumerate(messages):
            echoed = await asyncio.wait_for(ws.recv(), timeout=20)
            if echoed != m:
                print(f"wss_client.py: echo {i} differs", file=sys.stderr)
                return 1
        await sender
        await ws.close(code=1000)
    print(f"wss_client.py: all {n} flooded messages echoed in order")
    return 0


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("echo", "many", "flood"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, uri, cafile = sys.argv[1:4]
    try:
        if mode == "echo":
            job = echo(uri, cafile)
        elif mode == "many":
            job = many(uri, cafile, int(sys.argv[4]))
        else:
            job = flood(uri, cafile, int(sys.argv[4]))
        return asyncio.run(asyncio.wait_for(job, timeout=120))
    except Exception as exc:  # any failure is a failed check, with its cause
        print(f"wss_client.py: {type(exc).__name__}: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
