"""A tiny real HTTP server for step tests: a receiver for `http` steps and an
OpenAI-compatible chat-completions endpoint for `agent` steps.

Scripted: each request pops the next scripted reply (status, headers, body, delay); with
none left it answers 200. A body is sent as JSON unless it is text or bytes (sent as they are,
`text/plain` unless the reply's headers give a `Content-Type`). `hold_first` parks the first
request until `release()`, so a test can SIGKILL the worker while the call is in flight.
Every request is recorded.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def chat(content: str, model: str = "fake-model") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class FakeServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[Reply] = []
        self.hold_first = False
        self._gate = threading.Event()
        self._lock = threading.Lock()
        self.arrived = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                server._serve(self, raw)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> "FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def release(self) -> None:
        self._gate.set()

    def _serve(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append({"method": handler.command, "path": handler.path,
                                  "headers": dict(handler.headers.items()), "json": body})
            first = len(self.requests) == 1
            reply = self.script.pop(0) if self.script else Reply()
        self.arrived.set()
        if first and self.hold_first:
            self._gate.wait(60)
        if reply.delay:
            time.sleep(reply.delay)
        payload = reply.body
        if payload is None and handler.path.endswith("/chat/completions"):
            payload = chat("echo: " + body["messages"][-1]["content"])
        if payload is None:
            payload = {"ok": True, "got": body}
        if isinstance(payload, bytes):
            data = payload
        else:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        headers = dict(reply.headers)
        ctype = headers.pop("Content-Type", None) or (
            "text/plain" if isinstance(payload, str | bytes) else "application/json")
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker was killed while we held its request
