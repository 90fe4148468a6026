#!/usr/bin/python3
"""A raw permessage-deflate client for spec/compression_spec.lua.

usage: deflate_client.py PORT PATH CASE

Connects with its own frames (compressed with Python's zlib, so the bytes
on the wire are exactly what the case needs), runs one case against an
echo route, and prints "ok: ..." or "FAIL: ..." lines; exits 0 only if
every check of the case held.
"""
import os
import struct
import sys
import zlib

import rawws
from rawws import Conn, check, deflate, inflate


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
    print(f"deflate_client {case}: {rawws.failures} failed")
    sys.exit(1 if rawws.failures else 0)


if __name__ == "__main__":
    main()
