#!/usr/bin/env python3
"""A TCP (or TLS) backend for spec/tcp_spec.lua, driven by command lines.

  tcp_backend.py PORTFILE [--cert CERT --key KEY]
      listens on 127.0.0.1, a free port, written to PORTFILE once it listens.
      Each connection reads lines (LF-terminated) and obeys:
        ECHO text       -> "text\\r\\n"
        LF text         -> "text\\n"
        BYTES n         -> n bytes "x" (no line end)
        CLOSE text      -> text, then a clean close (FIN)
        RESET text      -> text, then a reset (RST: SO_LINGER 0)
        SILENT          -> stops reading and never answers (the connection stays)
        FLOOD           -> "x" without end and without a line end
        SPLIT a b       -> "a", a pause of 0.2 s, then "b\\r\\n"
        CONNS           -> "conns N\\r\\n": TCP connections accepted so far
        BIN n           -> reads n raw bytes, answers them back
  tcp_backend.py PORTFILE --stuck
      a listener whose accept queue is full (backlog 0, filled by this
      process's own connects, never accepted): a connect to it times out.
Runs until killed.
"""
import os
import socket
import ssl
import struct
import sys
import threading
import time

conns = 0
lock = threading.Lock()


def write_port(path, port):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, path)


def serve(sock):
    f = sock.makefile("rb")
    try:
        while True:
            line = f.readline()
            if not line:
                return
            line = line.rstrip(b"\r\n")
            cmd, _, arg = line.partition(b" ")
            if cmd == b"ECHO":
                sock.sendall(arg + b"\r\n")
            elif cmd == b"LF":
                sock.sendall(arg + b"\n")
            elif cmd == b"BYTES":
                n = int(arg)
                chunk = b"x" * 65536
                while n > 0:
                    sock.sendall(chunk[: min(n, len(chunk))])
                    n -= min(n, len(chunk))
            elif cmd == b"CLOSE":
                sock.sendall(arg)
                sock.shutdown(socket.SHUT_WR)
                return
            elif cmd == b"RESET":
                sock.sendall(arg)
                time.sleep(0.1)
                raw = sock.unwrap() if isinstance(sock, ssl.SSLSocket) else sock
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
                return
            elif cmd == b"SILENT":
                while True:
                    time.sleep(3600)
            elif cmd == b"FLOOD":
                chunk = b"x" * 65536
                while True:
                    sock.sendall(chunk)
            elif cmd == b"SPLIT":
                a, _, b = arg.partition(b" ")
                sock.sendall(a)
                time.sleep(0.2)
                sock.sendall(b + b"\r\n")
            elif cmd == b"CONNS":
                with lock:
                    n = conns
                sock.sendall(b"conns %d\r\n" % n)
            elif cmd == b"BIN":
                data = f.read(int(arg))
                sock.sendall(data)
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    portfile = sys.argv[1]
    args = sys.argv[2:]
    if "--stuck" in args:
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        port = ls.getsockname()[1]
        fillers = []
        for _ in range(8):  # more than the queue holds; the late ones stay in SYN_SENT
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(c)
        time.sleep(0.2)
        write_port(portfile, port)
        while True:
            time.sleep(3600)
    ctx = None
    if "--cert" in args:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args[args.index("--cert") + 1], args[args.index("--key") + 1])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    write_port(portfile, ls.getsockname()[1])
    global conns
    while True:
        s, _ = ls.accept()
        with lock:
            conns += 1
        if ctx:
            def handshake_then_serve(raw):
                try:
                    tls = ctx.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    raw.close()
                    return
                serve(tls)
            threading.Thread(target=handshake_then_serve, args=(s,), daemon=True).start()
        else:
            threading.Thread(target=serve, args=(s,), daemon=True).start()


if __name__ == "__main__":
    main()
