#!/usr/bin/env python3
"""A client that connects in a loop, for the rolling-restart spec.

restart_client.py PORT STOPFILE [PAUSE_MS]

Until STOPFILE exists: open a TCP connection to 127.0.0.1:PORT, do the
opening handshake, send one text message, read its echo, close with 1000
and read the server's close; then wait PAUSE_MS (default 5) and start
again. A close from the server instead of the echo (the drain's 1001 or
1012) counts as drained, not as a failure: the server said goodbye. Any
refused or reset connection, an EOF before the handshake's answer, or a
status other than 101 is a failure, printed with what happened. The last
line is "attempts N ok N drained N failures N".
"""
import base64
import os
import socket
import struct
import sys
import time


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError("EOF after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def read_frame(s):
    b1, b2 = recv_exact(s, 2)
    n = b2 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(s, 8))[0]
    return b1 & 0x0F, recv_exact(s, n)


def frame(opcode, payload):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def once(port, n):
    """'ok', 'drained', or raises."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n" % (port, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError("EOF before the handshake's answer (%r)" % head)
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise RuntimeError("answer %r" % status)
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            raise RuntimeError("bytes after the 101: %r" % rest)
        msg = b"hello %d" % n
        s.sendall(frame(1, msg))
        op, payload = read_frame(s)
        if op == 8:
            s.sendall(frame(8, payload[:2]))
            return "drained"
        if op != 1 or payload != msg:
            raise RuntimeError("echo %r %r" % (op, payload))
        s.sendall(frame(8, struct.pack("!H", 1000)))
        while True:
            op, payload = read_frame(s)
            if op == 8:
                return "ok"
    finally:
        s.close()


def main():
    port, stop = int(sys.argv[1]), sys.argv[2]
    pause = (float(sys.argv[3]) if len(sys.argv) > 3 else 5) / 1000
    counts = {"ok": 0, "drained": 0}
    failures = 0
    n = 0
    while not os.path.exists(stop):
        n += 1
        try:
            counts[once(port, n)] += 1
        except Exception as e:  # every kind of failure is reported
            failures += 1
            print("failure %d at %.6f: %s: %s" % (n, time.time(), type(e).__name__, e),
                  flush=True)
        time.sleep(pause)
    print("attempts %d ok %d drained %d failures %d"
          % (n, counts["ok"], counts["drained"], failures), flush=True)


if __name__ == "__main__":
    main()
