"""A real S3-compatible HTTP server on 127.0.0.1 for tests (moto's standalone server).

IAM authentication is on: only the access key created at start-up is accepted, so
wrong-credential tests hit a real signature check. A small forwarding proxy can sit in
front of it and answer the first N requests with 503 SlowDown, to exercise retries.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_s3_server(attempts: int = 3) -> S3Server:
    """moto_server on a free port. The port is free when chosen but can be taken before moto binds it (another
    pytest-xdist worker's Ray starting): then moto exits, or another server answers, and a new port is tried."""
    for _ in range(attempts - 1):
        try:
            return _start_s3_server(free_port())
        except Exception:  # noqa: BLE001 (moto gone, or a stranger on the port: any failure means try another)
            pass
    return _start_s3_server(free_port())


def _start_s3_server(port: int) -> S3Server:
    import boto3

    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start on port {port}")
            time.sleep(0.2)
    try:
        # The first three calls run without auth: make a user allowed everything, and its key.
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap")
        iam.create_user(UserName="minseg-tests")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="minseg-tests", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="minseg-tests")["AccessKey"]
    except Exception:
        process.kill()
        raise
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process)


class FlakyProxy:
    """Forwards HTTP to ``upstream``; the first ``failures`` requests get 503 SlowDown."""

    def __init__(self, upstream: str, failures: int):
        self.upstream = upstream.removeprefix("http://")
        self.failures_left = failures
        self.requests_seen = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests_seen += 1
                    fail = proxy.failures_left > 0
                    if fail:
                        proxy.failures_left -= 1
                if fail:
                    payload = (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                connection.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
