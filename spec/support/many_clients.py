"""Open N WebSocket connections to one server at once, hold them all open,
send one message on each, check every echo, then close them all.
Prints "N connected, N echoed, N closed" and exits 0 only if all succeeded.
usage: many_clients.py HOST PORT N"""
import asyncio
import resource
import sys

import websockets


async def main(host, port, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gate = asyncio.Semaphore(200)  # do not flood the accept queue

    async def connect(i):
        async with gate:
            return await websockets.connect(f"ws://{host}:{port}/echo", max_size=None,
                                            open_timeout=30, ping_interval=None)

    conns = await asyncio.gather(*(connect(i) for i in range(n)), return_exceptions=True)
    good = [c for c in conns if not isinstance(c, Exception)]
    errors = [c for c in conns if isinstance(c, Exception)]

    async def echo(i, ws):
        msg = f"message {i} " + "x" * (i % 300)
        await ws.send(msg)
        return await asyncio.wait_for(ws.recv(), 30) == msg

    echoed = sum(await asyncio.gather(*(echo(i, ws) for i, ws in enumerate(good))))

    async def close(ws):
        await ws.close()
        return ws.close_code == 1000

    closed = sum(await asyncio.gather(*(close(ws) for ws in good)))
    print(f"{len(good)} connected, {echoed} echoed, {closed} closed")
    for e in errors[:3]:
        print("error:", repr(e))
    return 0 if len(good) == echoed == closed == n else 1


sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
