"""The Python peer: websockets (Debian's python3-websockets) on asyncio, in one
process. /echo sends every message back with its kind; /broadcast sends each
message to every other connection on /broadcast.
Usage: /usr/bin/python3 echo.py [PORT] (0 picks one)."""
import asyncio
import sys

import websockets

members = set()


async def handler(ws):
    if ws.path == "/broadcast":
        members.add(ws)
        try:
            async for message in ws:
                websockets.broadcast((m for m in members if m is not ws), message)
        finally:
            members.discard(ws)
    else:
        async for message in ws:
            await ws.send(message)


async def main(port):
    async with websockets.serve(handler, "127.0.0.1", port, compression=None,
                                max_size=16 * 1024 * 1024, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on ws://127.0.0.1:{port}/", file=sys.stderr, flush=True)
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
