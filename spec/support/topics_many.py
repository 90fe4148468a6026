#!/usr/bin/python3
"""N connections, each subscribed to 10 topics, for spec/topics_spec.lua.

usage: topics_many.py PORT PATH N

Opens N connections to PATH?sub=many/0,...,many/9 (the topics app
subscribes them in on_connect), publishes one message to many/3 from
another connection (the app's "pub" command) and checks that it says it
reached N and that each of them got it, then closes them all. Prints
"N connected, N got it, N closed"; exits 0 only if all did.
"""
import asyncio
import resource
import sys

import websockets


async def main(port, path, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gate = asyncio.Semaphore(200)
    topics = ",".join(f"many/{k}" for k in range(10))
    uri = f"ws://127.0.0.1:{port}{path}?sub={topics}"

    async def connect():
        async with gate:
            return await websockets.connect(uri, open_timeout=60, ping_interval=None,
                                            compression=None)

    conns = await asyncio.gather(*(connect() for _ in range(n)), return_exceptions=True)
    good = [c for c in conns if not isinstance(c, Exception)]
    for e in [c for c in conns if isinstance(c, Exception)][:3]:
        print("error:", repr(e))
    pub = await websockets.connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None)
    await pub.send("pub many/3 hello all")
    reply = await asyncio.wait_for(pub.recv(), 60)
    if reply != f"n {len(good)}":
        print("publish said:", reply)

    async def get(ws):
        return await asyncio.wait_for(ws.recv(), 60) == "hello all"

    got = sum(await asyncio.gather(*(get(ws) for ws in good)))

    async def close(ws):
        await ws.close()
        return ws.close_code == 1000

    closed = sum(await asyncio.gather(*(close(ws) for ws in good)))
    await pub.close()
    print(f"{len(good)} connected, {got} got it, {closed} closed")
    return len(good) == n and got == n and closed == n and reply == f"n {n}"


sys.exit(0 if asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))) else 1)
