#!/usr/bin/env python3
"""An HTTP/1.1 backend for spec/http_spec.lua and the auth example.

  httpbackend.py PORTFILE [--cert CERT --key KEY]
      listens on 127.0.0.1 on a free port (plain HTTP) and, with a
      certificate, on a second one (HTTPS); writes "PLAIN [TLS]" to PORTFILE
      once both listen. Threaded: one thread per connection, keep-alive.

Paths (a query ?a=b gives options):
  /echo?status=N        status N (200), a JSON body: method, path, headers
                        (names lower-case), body; two X-Multi and two
                        Set-Cookie headers.
  /chunked?n=N          a chunked body "chunk1,chunk2,...,chunkN," (N = 5)
                        with a trailer.
  /eof                  an HTTP/1.0-style body that ends with the connection.
  /close                a Content-Length body with Connection: close.
  /slow?s=S             answers "slow" after S seconds (2).
  /never                reads the request and never answers.
  /reset                reads the request and resets the connection (RST).
  /garbage              answers bytes that are not HTTP, then closes.
  /big                  Content-Length: 100 MB, then streams it.
  /bigchunked           a chunked body without end (1 MiB chunks) until the
                        client goes.
  /conns                "N": TCP connections accepted so far, on both ports.
  /auth                 the auth example's backend: Authorization "Bearer
                        good" -> 200 "user-1"; "Bearer banned" -> 403;
                        anything else 401.
HEAD works on every path that answers GET.
Runs until killed.
"""
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

conns = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        global conns
        with lock:
            conns += 1
        # The head and the body go out in two writes: without NODELAY the
        # second waits for the client's delayed ACK (40 ms a request).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=(), head=False):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def handle_any(self, head=False):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        path = url.path
        if path == "/echo":
            out = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("latin-1"),
            }
            self.reply(int(q.get("status", 200)), json.dumps(out),
                       [("Content-Type", "application/json"), ("X-Multi", "one"),
                        ("X-Multi", "two"), ("Set-Cookie", "a=1; Path=/"),
                        ("Set-Cookie", "b=2")], head)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            for i in range(1, int(q.get("n", 5)) + 1):
                part = ("chunk%d," % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif path == "/eof":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            if not head:
                self.wfile.write(b"until the end")
            self.close_connection = True
        elif path == "/close":
            self.reply(200, "closing", [("Connection", "close")], head)
            self.close_connection = True
        elif path == "/slow":
            time.sleep(float(q.get("s", 2)))
            self.reply(200, "slow", (), head)
        elif path == "/never":
            time.sleep(3600)
        elif path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif path == "/garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2 this is not HTTP\r\n\r\nat all\r\n")
            self.close_connection = True
        elif path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(100 * 1024 * 1024))
            self.end_headers()
            self.stream(head, 100)
            self.close_connection = True
        elif path == "/bigchunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.stream(head, None)
            self.close_connection = True
        elif path == "/conns":
            with lock:
                self.reply(200, str(conns), (), head)
        elif path == "/auth":
            auth = self.headers.get("Authorization", "")
            if auth == "Bearer good":
                self.reply(200, "user-1", (), head)
            elif auth == "Bearer banned":
                self.reply(403, "banned", (), head)
            else:
                self.reply(401, "who are you?", (), head)
        else:
            self.reply(404, "no such path", (), head)

    def stream(self, head, mib):
        if head:
            return
        block = b"x" * (1024 * 1024)
        try:
            i = 0
            while mib is None or i < mib:
                if mib is None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
                i += 1
        except OSError:
            pass  # the client went: what a limit is for

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any(head=True)


class TLSServer(ThreadingHTTPServer):
    ctx = None

    def get_request(self):
        sock, addr = super().get_request()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


def main():
    portfile = sys.argv[1]
    args = sys.argv[2:]
    servers = []
    plain = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    plain.daemon_threads = True
    servers.append(plain)
    if "--cert" in args:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args[args.index("--cert") + 1], args[args.index("--key") + 1])
        tls = TLSServer(("127.0.0.1", 0), Handler)
        tls.ctx = ctx
        tls.daemon_threads = True
        servers.append(tls)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(str(s.server_address[1]) for s in servers))
    os.rename(tmp, portfile)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
