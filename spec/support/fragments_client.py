#!/usr/bin/python3
"""A raw fragmenting client for spec/fragments_spec.lua.

usage: fragments_client.py PORT PATH KIND FRAMES FRAME_SIZE COMPRESS EXPECT

Sends one message of KIND (text or binary) as FRAMES data frames: with
COMPRESS=0, FRAME_SIZE bytes each followed by an empty final frame when
FRAME_SIZE is negative (the Autobahn 9.3.1 / 9.4.1 shape: -64 means 64-byte
frames, then an empty FIN frame); with COMPRESS=1, permessage-deflate is
offered and the message is compressed with Python's zlib, then cut into
exactly FRAMES pieces (RSV1 on the first only). EXPECT is "echo" (the same
message must come back whole) or a close code (1009). Prints "ok: ..." or
"FAIL: ..." lines and exits 0 only if every check held.
"""
import base64
import os
import socket
import struct
import sys
import zlib

TAIL = b"\x00\x00\xff\xff"
ZERO_KEY = b"\x00\x00\x00\x00"  # masked, but the payload stays as it is: cheap
failures = 0


def check(cond, what):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1


def frame(opcode, payload, fin, rsv1=False):
    b1 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b1, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b1, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b1, 0x80 | 127, n)
    return hdr + ZERO_KEY + payload


class Conn:
    def __init__(self, port, path, offer):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n")
        if offer:
            head += f"Sec-WebSocket-Extensions: {offer}\r\n"
        self.s.sendall((head + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        first = head.decode("latin-1").split("\r\n")[0].split()
        self.status = int(first[1]) if len(first) > 1 else 0
        self.extensions = None
        for line in head.decode("latin-1").split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "sec-websocket-extensions":
                self.extensions = v.strip()

    def need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def frame(self):
        """-> (fin, rsv1, opcode, payload)"""
        self.need(2)
        b1, b2 = self.buf[0], self.buf[1]
        n, off = b2 & 0x7F, 2
        if n == 126:
            self.need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self.need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        self.need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return bool(b1 & 0x80), bool(b1 & 0x40), b1 & 0x0F, payload

    def message(self):
        """-> (opcode, whole message) or (8, close payload); pings skipped."""
        parts, first_op, compressed = [], None, False
        while True:
            fin, rsv1, op, payload = self.frame()
            if op == 8:
                return 8, payload
            if op in (9, 10):
                continue
            if first_op is None:
                first_op, compressed = op, rsv1
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                if compressed:
                    d = zlib.decompressobj(-15)
                    data = d.decompress(data + TAIL) + d.flush()
                return first_op, data


def pieces(data, n):
    """data cut into exactly n pieces (the last ones may be empty)."""
    step = -(-len(data) // n) if data else 0
    out = [data[i * step:(i + 1) * step] for i in range(n)]
    assert b"".join(out) == data and len(out) == n
    return out


def main():
    port, path, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    frames, size, compress = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
    expect = sys.argv[7]
    opcode = 1 if kind == "text" else 2
    c = Conn(port, path, "permessage-deflate" if compress else None)
    check(c.status == 101, f"101 (got {c.status})")
    if compress:
        check(c.extensions is not None and c.extensions.startswith("permessage-deflate"),
              f"permessage-deflate agreed: {c.extensions}")
    else:
        check(c.extensions is None, "no extension agreed")

    if compress:
        # Text that compresses, but not to nothing: every piece has bytes.
        rnd = os.urandom(max(frames * 8, 1024))
        message = base64.b64encode(rnd)[: max(frames * 8, 1024)]
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = z.compress(message) + z.flush(zlib.Z_SYNC_FLUSH)
        assert body.endswith(TAIL)
        body = body[:-4]
        check(len(body) >= frames, f"{len(body)} compressed bytes for {frames} frames")
        parts = pieces(body, frames)
        wire = b"".join(frame(opcode if i == 0 else 0, p, i == frames - 1, rsv1=i == 0)
                        for i, p in enumerate(parts))
    elif size < 0:
        # n frames of |size| bytes, then an empty final frame: n + 1 frames.
        size, n = -size, frames - 1
        one = (b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
        message = one * n
        wire = (frame(opcode, one, False) + frame(0, one, False) * (n - 1) + frame(0, b"", True))
    else:
        one = (b"0123456789" * (size // 10 + 1))[:size]
        message = one * frames
        if frames == 1:
            wire = frame(opcode, one, True)
        else:
            wire = (frame(opcode, one, False) + frame(0, one, False) * (frames - 2) +
                    frame(0, one, True))
    c.s.sendall(wire)

    try:
        op, got = c.message()
    except (EOFError, OSError) as e:
        op, got = None, repr(e).encode()
    if expect == "echo":
        check(op == opcode, f"the echo is a {kind} message (opcode {op})")
        check(got == message, f"{len(message)} bytes in {frames} frames come back intact "
                              f"(got {len(got)} bytes)")
    else:
        code = struct.unpack("!H", got[:2])[0] if op == 8 and len(got) >= 2 else None
        reason = got[2:].decode("utf-8", "replace") if op == 8 else ""
        check(code == int(expect), f"closed with {expect} (got {code} {reason!r})")
    print(f"fragments_client {kind} {frames} {size} {int(compress)} {expect}: {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
