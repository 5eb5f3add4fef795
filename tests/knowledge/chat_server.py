"""A local OpenAI-compatible chat-completions server for tests (http.server in a thread).

``ChatServer(reply)`` calls ``reply(n, body)`` for the n-th request (0-based) with the parsed
JSON body; it returns a :class:`Reply` (status, answer content or raw body, delay, headers).
Every request is recorded (arrival time, headers, body).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CXR_LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]


@dataclass
class Reply:
    content: str | None = None  # the assistant message; None: send ``body`` as is
    status: int = 200
    body: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"


@dataclass
class Seen:
    t: float
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def target(self) -> str:
        """The target label the request asks about, or 'modality'."""
        m = re.search(r"Target label: ([^\n]+?)\.\n", self.body["messages"][1]["content"])
        return m.group(1) if m else "modality"

    @property
    def is_reask(self) -> bool:
        return len(self.body["messages"]) > 2


class ChatServer:
    def __init__(self, reply: Callable[[int, dict], Reply]):
        self.reply = reply
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    n = len(server.seen)
                    server.seen.append(Seen(time.monotonic(), dict(self.headers), body))
                r = server.reply(n, body)
                if r.delay:
                    time.sleep(r.delay)
                if r.body is not None:
                    payload = r.body.encode()
                else:
                    payload = json.dumps(
                        {
                            "id": f"chatcmpl-{n}",
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": r.finish_reason,
                                    "message": {"role": "assistant", "content": r.content},
                                }
                            ],
                        }
                    ).encode()
                try:
                    self.send_response(r.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def valid_answer(body: dict) -> str:
    """A correct answer to a knowledge request of the phantom chest modality."""
    user = body["messages"][1]["content"]
    m = re.search(r"Target label: ([^\n]+?)\.\n", user)
    if m is None:  # the modality request
        return json.dumps(
            {
                "items": [
                    {
                        "finding": "lungs_visible",
                        "statement": "two dark lung fields are visible",
                        "negation": "no lung fields are visible",
                        "question": "Are two lungs visible?",
                        "polarity": "present",
                        "weight": 0.5,
                    },
                    {
                        "finding": "overlays",
                        "statement": "no text lies over the lungs",
                        "negation": "text lies over the lungs",
                        "polarity": "absent",
                    },
                ]
            }
        )
    label = m.group(1)
    expect = {lab: lab == label for lab in CXR_LABELS}
    items = [
        {
            "finding": label if label != "normal" else "lungs_clear",
            "statement": f"the image shows the hallmark of {label}",
            "negation": f"the image lacks the hallmark of {label}",
            "question": f"Does the image show the hallmark of {label}?",
            "polarity": "present",
            "weight": 2,
            "expected": expect,
        },
        # the same absence item in every label's answer: merged into one
        {
            "finding": "multiple_nodules",
            "statement": "two or more nodules are visible",
            "negation": "at most one nodule is visible",
            "question": "Are there several nodules?",
            "polarity": "present",
            "weight": 1,
            "expected": {lab: False for lab in CXR_LABELS},
        },
        # not visually checkable: dropped
        {
            "finding": "pain",
            "statement": "the patient reports chest pain",
            "negation": "the patient has no chest pain",
            "polarity": "present",
            "expected": {label: True},
        },
    ]
    prompts = [f"chest radiograph, {label}, typical look", f"a frontal chest xray of {label}"]
    answer = json.dumps({"prompts": prompts, "items": items})
    return "Here is the JSON:\n```json\n" + answer + "\n```"
