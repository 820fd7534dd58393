#!/usr/bin/env python3
"""An HTTP/1.1 (or, with --cert/--key, HTTPS) server for lbctl's health
check tests, run inside a backend's namespace. Answers:
  /status/N   status N
  /host       200 if the Host header is --host, else 421
  /chunked    200, body "hea" "lthy" in two chunks
  /sni        200, body "sni=<name the client sent>"
  anything    200, body "ok"
Writes its port to --ready once listening; serves until killed."""
import argparse
import http.server
import socket
import ssl

ap = argparse.ArgumentParser()
ap.add_argument("--addr", required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--host", default="")
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--ready", required=True)
args = ap.parse_args()
seen_sni = {"name": ""}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/status/"):
            self.send(int(self.path.split("/")[2]), "status")
        elif self.path == "/host":
            ok = self.headers.get("Host") == args.host
            self.send(200 if ok else 421, "host=" + str(self.headers.get("Host")))
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"3\r\nhea\r\n4\r\nlthy\r\n0\r\n\r\n")
        elif self.path == "/sni":
            self.send(200, "sni=" + seen_sni["name"])
        else:
            self.send(200, "ok")


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET


srv = Server((args.addr, args.port), Handler)
if args.cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)

    def remember(sock, name, _ctx):
        seen_sni["name"] = name or ""

    ctx.sni_callback = remember
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(args.ready, "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
