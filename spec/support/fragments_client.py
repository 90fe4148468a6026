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
import struct
import sys
import zlib

import rawws
from rawws import TAIL, Conn, check

ZERO_KEY = b"\0\0\0\0"  # masked, but the payload stays as it is: cheap


def frame(opcode, payload, fin, rsv1=False):
    return rawws.frame(opcode, payload, fin, rsv1, mask=ZERO_KEY)


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
    c = Conn(port, path, "permessage-deflate" if compress else None, timeout=30)
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
    print(f"fragments_client {kind} {frames} {size} {int(compress)} {expect}: {rawws.failures} failed")
    sys.exit(1 if rawws.failures else 0)


if __name__ == "__main__":
    main()
