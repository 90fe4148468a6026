#!/usr/bin/python3
"""An independent client for the interop spec: python3-websockets talks to
moonport's echo app at the URI given as the only argument.

Every message must come back identical, with its type (str for text, bytes
for binary): short text and binary, 1 MiB of each, and empty ones. Then it
closes with 1000 and expects the server to answer 1000. Prints one "ok"
line per check and a final summary; exits 0 only if everything held, 1 on
a mismatch, 3 if the websockets library cannot be imported (the spec must
fail then, not skip)."""
import asyncio
import os
import sys

try:
    import websockets
except ImportError as exc:
    print(f"echo_client.py: cannot import websockets: {exc}", file=sys.stderr)
    sys.exit(3)

CHECKS = [
    ("short text", "hello, w\u00f6rld \u2603"),
    ("short binary", bytes(range(256))),
    # 2-byte characters, so the UTF-8 crosses every frame and read boundary.
    ("1 MiB text", "\u00e9" * (1 << 19)),
    ("1 MiB binary", os.urandom(1 << 20)),
    ("empty text", ""),
    ("empty binary", b""),
]


def describe(value):
    kind = "text" if isinstance(value, str) else "binary"
    return f"{kind} of {len(value)} {'characters' if kind == 'text' else 'bytes'}"


async def run(uri):
    async with websockets.connect(uri, max_size=None) as ws:
        for name, message in CHECKS:
            await ws.send(message)
            echoed = await asyncio.wait_for(ws.recv(), timeout=20)
            if type(echoed) is not type(message) or echoed != message:
                print(f"echo_client.py: {name}: sent {describe(message)}, "
                      f"got back {describe(echoed)} that differs", file=sys.stderr)
                return 1
            print(f"ok {name}")
        await ws.close(code=1000, reason="done")
        if ws.close_code != 1000:
            print(f"echo_client.py: closed with 1000, the server answered "
                  f"{ws.close_code} {ws.close_reason!r}", file=sys.stderr)
            return 1
        print("ok closed with 1000")
    print(f"echo_client.py: all {len(CHECKS) + 1} checks passed")
    return 0


def main():
    if len(sys.argv) != 2:
        print("usage: echo_client.py ws://HOST:PORT/echo", file=sys.stderr)
        return 2
    try:
        return asyncio.run(asyncio.wait_for(run(sys.argv[1]), timeout=60))
    except Exception as exc:  # any failure is a failed check, with its cause
        print(f"echo_client.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
