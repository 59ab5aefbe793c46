"""CPU per outbound POST, in process: `python bench/outbound.py [-n 2000] [--rounds 3]
[--threads 1,64]`.

What the outbound guard costs the sender, by both ways out: `outbound_post` (the lean POST
the callback dispatcher uses) and `outbound_request` (requests' objects, for `http` steps and
agent providers). Each: N POSTs of a callback-sized body to a fast local receiver, one
after another, then the same N from 64 threads at once (`--threads`: other counts; CPython
hands its GIL over at each blocking read and write, so concurrent POSTs cost more CPU each
than sequential ones). The receiver runs in its own process
(http.server's ThreadingHTTPServer speaking HTTP/1.1 with keep-alive, answering `200 ok`), so
its CPU is not counted. The figure is the sender's CPU time (time.process_time, every thread)
divided by N: a busy box moves it less than wall time. Medians of the rounds, with the wall
rate beside them. No database; Django settings are configured in process with 127.0.0.1
allowed (the receiver is on loopback).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THREADS = "1,64"
WAYS = ("outbound_post", "outbound_request")
BODY = json.dumps({"type": "work_item.completed", "data": {"work_id": "0" * 26,
                                                          "output": {"n": "x" * 300}}}).encode()
HEADERS = {"content-type": "application/json", "user-agent": "Auxot-Webhooks/bench",
           "webhook-id": "msg_bench", "webhook-timestamp": "0",
           "webhook-signature": "v1," + "A" * 44}


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the connection stays open between requests
    disable_nagle_algorithm = True  # headers and body go in two writes: no delayed-ACK stall

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 64 senders connecting at once must not overflow the backlog


def serve() -> None:
    """The receiver process: prints its port, serves until killed."""
    server = _Server(("127.0.0.1", 0), _Receiver)
    print(server.server_port, flush=True)
    server.serve_forever()


def _case(url: str, n: int, threads: int, way: str) -> tuple[float, float]:
    """(CPU ms per request, requests per wall second) for n POSTs from `threads` threads."""
    from auxot.outbound import outbound_post, outbound_request

    def post(_):
        if way == "outbound_post":
            status = outbound_post(url, purpose="callback", timeout=10, body=BODY,
                                   headers=HEADERS).status
        else:
            status = outbound_request("POST", url, purpose="callback", timeout=10, data=BODY,
                                      headers=HEADERS).status_code
        assert status == 200, status

    cpu, wall = time.process_time(), time.monotonic()
    if threads == 1:
        for i in range(n):
            post(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, range(n)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return cpu * 1000 / n, n / wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000, help="requests per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default=THREADS,
                        help="sending threads per case, comma-separated (1: one after another)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()
    from django.conf import settings

    settings.configure(AUXOT_OUTBOUND_ALLOWED_NETWORKS=["127.0.0.1/32"],
                       AUXOT_OUTBOUND_ALLOWED_HOSTS=[], AUXOT_CALLBACK_ALLOW_HTTP=True)
    receiver = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                                text=True)
    try:
        url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}/hook"
        results: dict[str, list[tuple[float, float]]] = {}
        for way in WAYS:
            _case(url, 50, 1, way)  # warm up: imports, the first connections
        for _ in range(args.rounds):
            for way in WAYS:
                for threads in (int(t) for t in args.threads.split(",")):
                    name = f"{way}, {'sequential' if threads == 1 else f'{threads} threads'}"
                    results.setdefault(name, []).append(_case(url, args.n, threads, way))
    finally:
        receiver.kill()
        receiver.wait()
    for name, rounds in results.items():
        cpu = statistics.median(r[0] for r in rounds)
        rate = statistics.median(r[1] for r in rounds)
        print(f"{name:>30}: {cpu:.3f} CPU ms per request, {rate:.0f} requests/s "
              f"(N={args.n}, median of {args.rounds})")


if __name__ == "__main__":
    main()
