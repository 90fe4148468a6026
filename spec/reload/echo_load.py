"""Keep N WebSocket connections echoing while the server is changed under
them (spec/reload_spec.lua reloads their app over and over), then check
that nothing was lost.

usage: echo_load.py HOST PORT PATH N STOP_FILE [MAX_SECONDS]

Each connection sends text messages "CONN SEQ" (SEQ = 0, 1, 2, ...), with up
to WINDOW of them unanswered at a time, until STOP_FILE exists. It then
waits for the replies still due, waits a little longer for any reply that
should not come, and closes with 1000. A reply is "TAG CONN SEQ": TAG names
the app version that answered it.

Checks: every message got exactly one reply, in order (none lost, none
duplicated, none for another connection); every connection stayed open to
the end and its close handshake ended with 1000. Prints "ready" once all N
connections are open, then one summary line:
  "conns=N open_to_end=N sent=S echoed=S extra=0 switched=K tags=A:x,B:y"
where echoed counts the replies that came in order (the first one out of
order ends that connection as a problem), switched counts connections that were answered by more than one tag
(proof that reloads reached open connections), and one line per problem.
Exits 0 only if every check holds. If STOP_FILE never appears within
MAX_SECONDS (default 100) it stops anyway and fails, so a dead spec never
leaves it running."""
import asyncio
import collections
import os
import sys

import websockets

WINDOW = 4  # unanswered messages per connection
REPLY_TIMEOUT = 10  # seconds a due reply may take
QUIET = 0.3  # seconds to listen for extra replies at the end


class Conn:
    def __init__(self, i, ws):
        self.i = i
        self.ws = ws
        self.sent = 0
        self.echoed = 0  # replies received in order so far
        self.extra = 0
        self.tags = collections.Counter()
        self.problem = None
        self.closed_ok = False


async def drive(c, stop):
    window = asyncio.Semaphore(WINDOW)
    sending_done = asyncio.Event()

    async def sender():
        try:
            while not stop.is_set():
                await window.acquire()
                if stop.is_set():
                    break
                seq = c.sent
                c.sent += 1  # before the await: its reply may come first
                await c.ws.send(f"{c.i} {seq}")
        finally:
            sending_done.set()

    async def receiver():
        # Short polls, so the end of sending is noticed at once; recv() may
        # be cancelled safely.
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not (sending_done.is_set() and c.echoed == c.sent):
            try:
                msg = await asyncio.wait_for(c.ws.recv(), 0.05)
            except asyncio.TimeoutError:
                if c.echoed == c.sent:
                    last = loop.time()  # nothing is due: not waiting on anyone
                elif loop.time() - last > REPLY_TIMEOUT:
                    raise RuntimeError(f"no reply to message {c.echoed} within {REPLY_TIMEOUT} s")
                continue
            last = loop.time()
            parts = msg.split(" ") if isinstance(msg, str) else []
            want = [str(c.i), str(c.echoed)]
            if len(parts) != 3 or parts[1:] != want:
                raise RuntimeError(f"reply {msg!r} where '<tag> {' '.join(want)}' was due")
            c.tags[parts[0]] += 1
            c.echoed += 1
            window.release()

    send_task = asyncio.ensure_future(sender())
    try:
        await receiver()
        try:
            msg = await asyncio.wait_for(c.ws.recv(), QUIET)
            c.extra += 1
            raise RuntimeError(f"extra reply {msg!r} after every message was answered")
        except asyncio.TimeoutError:
            pass
        await c.ws.close()
        c.closed_ok = c.ws.close_code == 1000
        if not c.closed_ok:
            raise RuntimeError(f"close ended with {c.ws.close_code} {c.ws.close_reason!r}")
    except websockets.ConnectionClosed as e:
        c.problem = f"connection dropped: code {e.code} {e.reason!r} after {c.echoed} replies"
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        c.problem = str(e) or repr(e)
    finally:
        stop.set()  # nothing more to send here even if the others go on
        send_task.cancel()
        try:
            await send_task
        except (asyncio.CancelledError, websockets.ConnectionClosed):
            pass
        if c.problem:  # leave nothing open behind a failed connection
            try:
                await asyncio.wait_for(c.ws.close(), 2)
            except Exception:  # noqa: BLE001 - it failed already
                pass


async def main(host, port, path, n, stop_file, max_seconds):
    url = f"ws://{host}:{port}{path}"
    socks = await asyncio.gather(
        *(websockets.connect(url, ping_interval=None, open_timeout=10, max_size=None)
          for _ in range(n)),
        return_exceptions=True)
    failed = [s for s in socks if isinstance(s, Exception)]
    if failed:
        print(f"only {n - len(failed)} of {n} connected: {failed[0]!r}", flush=True)
        return 1
    conns = [Conn(i, ws) for i, ws in enumerate(socks)]
    stops = [asyncio.Event() for _ in conns]
    print("ready", flush=True)

    timed_out = False

    async def watch_stop_file():
        nonlocal timed_out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while not os.path.exists(stop_file):
            if loop.time() > deadline:
                timed_out = True
                break
            await asyncio.sleep(0.05)
        for s in stops:
            s.set()

    watcher = asyncio.ensure_future(watch_stop_file())
    await asyncio.gather(*(drive(c, s) for c, s in zip(conns, stops)))
    watcher.cancel()

    sent = sum(c.sent for c in conns)
    echoed = sum(c.echoed for c in conns)
    extra = sum(c.extra for c in conns)
    open_to_end = sum(1 for c in conns if c.closed_ok)
    switched = sum(1 for c in conns if len(c.tags) > 1)
    tags = collections.Counter()
    for c in conns:
        tags.update(c.tags)
    tag_text = ",".join(f"{t}:{k}" for t, k in sorted(tags.items()))
    print(f"conns={n} open_to_end={open_to_end} sent={sent} echoed={echoed} "
          f"extra={extra} switched={switched} tags={tag_text}")
    problems = [c for c in conns if c.problem]
    for c in problems[:10]:
        print(f"conn {c.i}: {c.problem}")
    if len(problems) > 10:
        print(f"... and {len(problems) - 10} more connections with problems")
    if timed_out:
        print(f"{stop_file} did not appear within {max_seconds} s")
    ok = not problems and not timed_out and open_to_end == n and echoed == sent and sent > 0
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    a = sys.argv
    sys.exit(asyncio.run(main(a[1], int(a[2]), a[3], int(a[4]), a[5],
                              float(a[6]) if len(a) == 7 else 100.0)))
