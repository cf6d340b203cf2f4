"""A real threaded HTTP server on 127.0.0.1 speaking ``POST /v1/chat/completions`` with injectable faults.

Modes per request: ``ok``, ``slow`` (ok after ``delay_s``), ``429``, ``500``, ``503``, ``hang`` (no reply for
``hang_s``, then the connection is closed), ``nonjson`` (a 200 reply whose content is prose, not the verdict
JSON), ``badbody`` (a 200 reply whose body is not JSON at all) and ``echo_auth`` (a 500 whose body echoes the
Authorization header, to test redaction). The mode comes from, in order: the global ``script`` list, the
per-item ``item_script`` lists, random ``fault_rates`` (seeded), then ``default``. Items are recognised by the
``Q#<id>`` marker in the user message; requests are counted in total, per mode and per item.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITEM_RE = re.compile(r"Q#([A-Za-z0-9_.-]+)")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # clients that time out or get killed
        pass


def make_responses(n: int, seed: int = 0) -> list[dict]:
    """Synthetic ``generated_responses_<split>.json`` items (relation + counting) carrying ``Q#<id>`` markers."""
    rng = random.Random(seed)
    rels = ["left of", "right of", "above", "below", "behind", "in front of"]
    items = []
    for i in range(n):
        iid = f"item{i:04d}"
        if i % 3 == 2:
            k = rng.randint(1, 6)
            said = k if rng.random() < 0.8 else k + 1
            items.append(
                {
                    "id": iid,
                    "task": "counting",
                    "question": f"Q#{iid} How many red circles are in the image?",
                    "reasoning": f"I look at the shapes. There are {said} red circles.",
                    "parsed_answer": str(k),
                    "solution": str(k),
                    "correct": rng.random() < 0.7,
                    "format_ok": True,
                    "target_shape": "circle",
                }
            )
            continue
        rel, seen = rng.choice(rels), rng.choice(rels)
        match = rel == seen
        answer = match if rng.random() < 0.85 else not match
        caption = f"The cat is {rel} the dog."
        reasoning = f"I see the cat {seen} the dog. The statement says {rel}. {'They match' if match else 'They differ'}."
        items.append(
            {
                "id": iid,
                "task": "relation",
                "question": f"Q#{iid} Is the following statement true: {caption}",
                "response": f"<think>{reasoning}</think><answer>{answer}</answer>",
                "reasoning": reasoning,
                "parsed_answer": str(answer),
                "solution": str(match),
                "correct": str(answer) == str(match),
                "format_ok": True,
                "relation": rel,
                "subj": "cat",
                "obj": "dog",
                "caption": caption,
            }
        )
    return items


class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer(...) as srv:``; ``srv.base_url`` is the ``/v1`` root."""

    def __init__(
        self,
        default: str = "ok",
        fault_rates: dict[str, float] | None = None,
        seed: int = 0,
        delay_s: float = 0.0,
        hang_s: float = 5.0,
        retry_after: str | None = None,
    ):
        self.default = default
        self.fault_rates = dict(fault_rates or {})
        self.rng = random.Random(seed)
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.script: list[str] = []
        self.item_script: dict[str, list[str]] = {}
        self.total = 0
        self.by_mode: Counter = Counter()
        self.by_item: Counter = Counter()
        self.last_body: dict | None = None
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _choose(self, item: str | None) -> str:
        with self.lock:
            if self.script:
                return self.script.pop(0)
            if item is not None and self.item_script.get(item):
                return self.item_script[item].pop(0)
            r = self.rng.random()
            acc = 0.0
            for mode, p in sorted(self.fault_rates.items()):
                acc += p
                if r < acc:
                    return mode
            return self.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                user = next((m["content"] for m in body.get("messages", []) if m["role"] == "user"), "")
                m = ITEM_RE.search(user)
                item = m.group(1) if m else None
                mode = server._choose(item)
                with server.lock:
                    server.total += 1
                    server.by_mode[mode] += 1
                    server.by_item[item] += 1
                    server.last_body = body
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                self._respond(mode, body, user)

            def _respond(self, mode: str, body: dict, user: str) -> None:
                if mode == "hang":
                    server.stopping.wait(server.hang_s)
                    self.close_connection = True
                    return
                if mode in ("429", "500", "503"):
                    headers = {"Retry-After": server.retry_after} if server.retry_after else {}
                    err = {"error": {"message": f"fake {mode}", "type": "fake", "code": mode}}
                    self._send(int(mode), json.dumps(err).encode(), headers=headers)
                    return
                if mode == "echo_auth":
                    msg = f"bad key {self.headers.get('Authorization', '')}"
                    self._send(500, json.dumps({"error": {"message": msg}}).encode())
                    return
                if mode == "badbody":
                    self._send(200, b"<html>upstream exploded</html>", ctype="text/html")
                    return
                if mode == "slow" or server.delay_s:
                    server.stopping.wait(server.delay_s)
                if mode == "nonjson":
                    content = "I think the reasoning is mostly fine, hard to say."
                elif "MISALIGN" in user:
                    content = json.dumps({"aligns": False, "type": "contradiction", "why": "fake: conflict"})
                else:
                    content = json.dumps({"aligns": True, "type": None, "why": "fake: consistent"})
                reply = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
                self._send(200, json.dumps(reply).encode())

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default", default="ok")
    ap.add_argument("--fault-rates", default="", help="e.g. 429=0.1,500=0.05,hang=0.02,nonjson=0.05")
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--lifetime-s", type=float, default=600.0, help="stop by itself after this long")
    a = ap.parse_args()
    rates = {k: float(v) for k, v in (kv.split("=") for kv in a.fault_rates.split(",") if kv)}
    with FakeOpenAIServer(default=a.default, fault_rates=rates, delay_s=a.delay_s) as srv:
        print(srv.base_url, flush=True)
        srv.stopping.wait(a.lifetime_s)
        print(json.dumps({"total": srv.total, "by_mode": dict(srv.by_mode)}), flush=True)


if __name__ == "__main__":
    main()
