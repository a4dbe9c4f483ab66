#!/usr/bin/env python3
"""A counting HTTP proxy for benchmarks: forwards every request to UPSTREAM and, on SIGTERM or
when stdin closes, prints how many requests it saw per `X-Amz-Target` (e.g.
`secretsmanager.GetSecretValue`, `TrentService.GenerateDataKeyPairWithoutPlaintext`).

    count_proxy.py LISTEN_PORT UPSTREAM_URL [PORTS]

With PORTS (default 1) it listens on PORTS consecutive ports from LISTEN_PORT, one per client
(bench/fleet.sh gives each host its own), and with COUNT_PROXY_LOG=FILE it appends one line per
request to FILE: `<unix time> <port> <target>`; with COUNT_PROXY_LOG_IDS=1 as well, each line
ends with the request's `SecretId` (or `Name`), `-` when it has none.
"""
import collections
import http.client
import http.server
import json
import os
import signal
import sys
import threading
import time
import urllib.parse

port, upstream = int(sys.argv[1]), urllib.parse.urlparse(sys.argv[2])
ports = int(sys.argv[3]) if len(sys.argv) > 3 else 1
counts = collections.Counter()
lock = threading.Lock()
log = open(os.environ["COUNT_PROXY_LOG"], "a", buffering=1) if os.environ.get("COUNT_PROXY_LOG") else None
log_ids = os.environ.get("COUNT_PROXY_LOG_IDS") == "1"


def secret_id(body):
    try:
        request = json.loads(body)
        return str(request.get("SecretId") or request.get("Name") or "-").replace(" ", "_")
    except (ValueError, AttributeError):
        return "-"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        target = self.headers.get("X-Amz-Target", self.command + " " + self.path)
        with lock:
            counts[target] += 1
            if log:
                id_field = f" {secret_id(body)}" if log_ids else ""
                log.write(f"{time.time():.3f} {self.server.server_address[1]} {target}{id_field}\n")
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body, headers)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST

    def log_message(self, *args):
        pass


def report(*_):
    for target, n in sorted(counts.items()):
        print(f"{n} {target}", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, report)
for p in range(port, port + ports):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", p), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", file=sys.stderr, flush=True)
signal.pause()
