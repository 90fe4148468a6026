"""rawws: the raw WebSocket client the Python spec helpers share
(deflate_client.py, fragments_client.py). It writes frames byte by byte as
a case needs them, valid or not, and reads the server's frames one at a
time; nothing in it decides what is right: the cases do, with check().
"""
import base64
import os
import socket
import struct
import zlib

TAIL = b"\x00\x00\xff\xff"
failures = 0


def check(cond, what):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1


def frame(opcode, payload, fin=True, rsv1=False, mask=None):
    """A client frame. mask=None draws a fresh key; a zero key (b"\\0" * 4)
    leaves the payload as it is, for cases that send many megabytes."""
    b1 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b1, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b1, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b1, 0x80 | 127, n)
    if mask is None:
        mask = os.urandom(4)
    if mask != b"\0\0\0\0":
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return hdr + mask + payload


def deflate(data, wbits=15):
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
    def __init__(self, port, path, offer, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
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
        self.s.sendall(frame(opcode, payload, fin, rsv1))

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
                return first_op, inflate(data) if compressed else data

    def close_code(self):
        """The code of the server's close frame, skipping anything before it."""
        try:
            while True:
                fin, rsv1, op, payload = self.frame()
                if op == 8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (EOFError, OSError):
            return None
