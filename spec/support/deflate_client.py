#!/usr/bin/python3
"""A raw permessage-deflate client for spec/compression_spec.lua.

usage: deflate_client.py PORT PATH CASE

Connects with its own frames (compressed with Python's zlib, so the bytes
on the wire are exactly what the case needs), runs one case against an
echo route, and prints "ok: ..." or "FAIL: ..." lines; exits 0 only if
every check of the case held.
"""
import base64
import os
import socket
import struct
import sys
import zlib

TAIL = b"\x00\x00\xff\xff"
failures = 0


def check(cond, what):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1


def deflate(data, wbits=15, sync=True):
    c = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(data, wbits=15):
    """Inflate with a window of wbits. The output is taken 64 bytes at a
    time: zlib checks back-references against the window plus the output of
    the current call, so one big call would accept distances over the
    window."""
    d = zlib.decompressobj(-wbits)
    out = d.decompress(data + TAIL, 64)
    while d.unconsumed_tail:
        out += d.decompress(d.unconsumed_tail, 64)
    return out + d.flush()


class Conn:
    def __init__(self, port, path, offer):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n")
        if offer is not None:
            head += f"Sec-WebSocket-Extensions: {offer}\r\n"
        self.s.sendall((head + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.extensions = self.headers.get("sec-websocket-extensions")

    def send(self, opcode, payload, fin=True, rsv1=False):
        b1 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", b1, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b1, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", b1, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(hdr + mask + masked)

    def need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
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

    def close_code(self):
        """The code of the server's close frame, skipping anything before it."""
        try:
            while True:
                fin, rsv1, op, payload = self.frame()
                if op == 8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (EOFError, OSError):
            return None


def echo_case(c, data, opcode=2, frames=None):
    """Send data compressed (in frames pieces), expect the same back."""
    z = deflate(data)
    if frames:
        step = max(1, len(z) // frames)
        pieces = [z[i:i + step] for i in range(0, len(z), step)]
        for i, p in enumerate(pieces):
            c.send(opcode if i == 0 else 0, p, fin=i == len(pieces) - 1, rsv1=i == 0)
    else:
        c.send(opcode, z, rsv1=True)
    fin, rsv1, op, payload = c.frame()
    got = inflate(payload) if rsv1 else payload
    return fin, rsv1, op, got


def main():
    port, path, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    offer = "permessage-deflate; client_max_window_bits"
    c = Conn(port, path, offer)
    check(c.status == 101, f"101 (got {c.status})")
    check(c.extensions is not None and c.extensions.startswith("permessage-deflate"),
          f"permessage-deflate agreed: {c.extensions}")

    if case == "echo":
        text = ("{\"user\": \"ada\", \"text\": \"hello, world\"} " * 40).encode()
        fin, rsv1, op, got = echo_case(c, text, opcode=1)
        check(op == 1 and got == text, "a compressed text message comes back whole")
        check(rsv1, "the long echo comes back compressed (RSV1)")
        fin, rsv1, op, got = echo_case(c, b"short")
        check(op == 2 and got == b"short", "a short compressed binary message comes back")
        check(not rsv1, "a message under compression.threshold comes back uncompressed")
        noise = os.urandom(5000)
        fin, rsv1, op, got = echo_case(c, noise)
        check(got == noise, "incompressible bytes come back whole")
        check(not rsv1, "...uncompressed, since compressing would not make them smaller")
        c.send(2, b"plain bytes")
        fin, rsv1, op, got = c.frame()
        check(got == b"plain bytes", "an uncompressed message (RSV1 clear) is taken as it is")
        fin, rsv1, op, got = echo_case(c, b"")
        check(op == 2 and got == b"", "an empty compressed message (one 0x00 byte) comes back empty")
        big = (b"0123456789abcdef" * 8192)
        fin, rsv1, op, got = echo_case(c, big, frames=7)
        check(got == big, "a compressed message in 7 frames (RSV1 on the first only) comes back")
        c.send(9, b"ping!")
        fin, rsv1, op, got = c.frame()
        check(op == 10 and got == b"ping!" and not rsv1, "pings are answered, never compressed")
        c.send(8, struct.pack("!H", 1000))
        check(c.close_code() == 1000, "the closing handshake")
    elif case in ("server_window", "server_window8"):
        # The client limits our window: two copies of 2000 random letters of
        # 16 (compressible to 4 bits each even without matches, and with
        # few 3-byte repeats nearby), which a 15-bit window would compress
        # with back-references 2000 bytes long, must inflate with the
        # client's window. 8 bits is what zlib cannot deflate with: the
        # server codes Huffman only then.
        bits = 8 if case == "server_window8" else 10
        c2 = Conn(port, path, f"permessage-deflate; server_max_window_bits={bits}")
        check(f"server_max_window_bits={bits}" in (c2.extensions or ""),
              f"server_max_window_bits={bits} agreed: {c2.extensions}")
        chunk = bytes(b"abcdefghijklmnop"[b & 15] for b in os.urandom(2000))
        c2.send(2, deflate(chunk * 2), rsv1=True)
        fin, rsv1, op, payload = c2.frame()
        check(rsv1, "the echo is compressed")
        try:
            got = inflate(payload, wbits=bits)
        except zlib.error as e:
            got = repr(e).encode()
        check(got == chunk * 2, f"it inflates with a {bits}-bit window")
    elif case == "rsv1_continuation":
        z = deflate(b"abc" * 100)
        c.send(2, z[:5], fin=False, rsv1=True)
        c.send(0, z[5:], fin=True, rsv1=True)
        check(c.close_code() == 1002, "RSV1 on a continuation frame: 1002")
    elif case == "rsv1_control":
        c.send(9, b"x", rsv1=True)
        check(c.close_code() == 1002, "RSV1 on a ping: 1002")
    elif case == "corrupt":
        c.send(2, b"\xff\xff\xff\xff not deflate", rsv1=True)
        check(c.close_code() == 1007, "corrupt compressed data: 1007")
    elif case == "bad_utf8":
        c.send(1, deflate(b"caf\xc3 \xff"), rsv1=True)
        check(c.close_code() == 1007, "compressed text that inflates to invalid UTF-8: 1007")
    elif case == "bomb":
        # 64 MiB of zeros is about 64 KiB compressed: over max_message once inflated.
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        z = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush(zlib.Z_SYNC_FLUSH)
        c.send(2, z[:-4], rsv1=True)
        check(c.close_code() == 1009, f"{len(z)} bytes inflating to 64 MiB: 1009")
    elif case == "context_takeover":
        # We were told client_no_context_takeover; a client that keeps its
        # window anyway sends a second message that refers to the first.
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        msg = os.urandom(300)
        first = comp.compress(msg) + comp.flush(zlib.Z_SYNC_FLUSH)
        c.send(2, first[:-4], rsv1=True)
        fin, rsv1, op, got = c.frame()
        got = inflate(got) if rsv1 else got
        check(got == msg, "the first message comes back")
        second = comp.compress(msg) + comp.flush(zlib.Z_SYNC_FLUSH)
        c.send(2, second[:-4], rsv1=True)
        check(c.close_code() == 1007, "a message that needs the previous window: 1007")
    else:
        check(False, "unknown case " + case)
    print(f"deflate_client {case}: {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
