"""partial_flood: the memory attack limits.inbound_memory is for. Opens N
WebSocket connections, and on each sends a text message in fragments of
FRAG bytes, up to BYTES bytes, that it never finishes (no FIN), as fast as
the server reads. A connection the server closes (a close frame) stops; one
the server stops reading just waits. When every connection has sent all,
been closed, or been blocked for a while, prints "holding {json}" and keeps
them all open for HOLD seconds (reading close frames meanwhile), then prints
"done {json}": {"connected", "closed": {code: count}, "sent_bytes"}.
usage: partial_flood.py HOST PORT N BYTES FRAG HOLD"""
import base64
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time


def frame(opcode, payload, fin):
    n = len(payload)
    b1 = (0x80 if fin else 0) | opcode
    if n < 126:
        hdr = struct.pack("!BB", b1, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b1, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b1, 0x80 | 127, n)
    return hdr + b"\0\0\0\0" + payload  # a zero key: the payload goes as it is


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setblocking(False)
        key = base64.b64encode(os.urandom(16)).decode()
        self.out = (f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    f"Sec-WebSocket-Key: {key}\r\n\r\n").encode()
        self.inp = b""
        self.opened = False
        self.sent = 0  # payload bytes queued
        self.code = None  # the close code the server sent
        self.last_progress = time.time()
        self.registered = True


def main():
    host, port, n, total, frag, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(n):
        c = Conn(host, port)
        conns.append(c)
        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    payload = b"a" * frag
    print("started", flush=True)

    def read(c):
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if c.code is None:
                c.code = "eof"
            sel.unregister(c.sock)
            c.registered = False
            return
        c.inp += data
        if not c.opened:
            end = c.inp.find(b"\r\n\r\n")
            if end < 0:
                return
            c.opened = c.inp.startswith(b"HTTP/1.1 101")
            c.inp = c.inp[end + 4:]
        while len(c.inp) >= 2:
            op, ln = c.inp[0] & 0x0F, c.inp[1] & 0x7F
            off = 2
            if ln == 126:
                ln, off = struct.unpack("!H", c.inp[2:4])[0], 4
            elif ln == 127:
                ln, off = struct.unpack("!Q", c.inp[2:10])[0], 10
            if len(c.inp) < off + ln:
                return
            body = c.inp[off:off + ln]
            c.inp = c.inp[off + ln:]
            if op == 8 and c.code is None:
                c.code = struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 1005

    def pump(deadline, sending):
        while time.time() < deadline:
            events = sel.select(0.05)
            for key, mask in events:
                c = key.data
                if mask & selectors.EVENT_READ:
                    read(c)
                if c.code is not None:
                    continue
                if sending and (mask & selectors.EVENT_WRITE):
                    if not c.out and c.opened and c.sent < total:
                        c.out = frame(1 if c.sent == 0 else 0, payload, False)
                        c.sent += frag
                    if c.out:
                        try:
                            k = c.sock.send(c.out)
                            c.out = c.out[k:]
                            c.last_progress = time.time()
                        except BlockingIOError:
                            pass
                        except OSError:
                            c.code = "reset"
            if sending:
                now = time.time()
                if all(c.code is not None or (c.sent >= total and not c.out)
                       or now - c.last_progress > 2 for c in conns):
                    return

    pump(time.time() + 60, True)
    for c in conns:  # from now on only read: nothing more is sent
        if c.registered:
            sel.modify(c.sock, selectors.EVENT_READ, c)

    def summary():
        closed = {}
        for c in conns:
            if c.code is not None:
                closed[str(c.code)] = closed.get(str(c.code), 0) + 1
        return json.dumps({"connected": sum(c.opened for c in conns), "closed": closed,
                           "sent_bytes": sum(c.sent for c in conns)})

    print("holding " + summary(), flush=True)
    pump(time.time() + hold, False)
    print("done " + summary(), flush=True)
    for c in conns:
        c.sock.close()


main()
