"""Inference API: GET /healthz, POST /move {"fen"} → {"fen", "move", "top"}.

It must never take the pod down (the 2026-02-26 restart loop came from an API crash): torch is
imported lazily, a missing or broken model is reported by /healthz, and every request error is
an HTTP answer. The model is (re)loaded when its file changes.

Its port is public through RunPod's HTTP proxy, on a pod that may be training: a body is read
only when its Content-Length is a byte count of at most MAX_BODY (a FEN needs under 100
bytes), and a client that stops sending is dropped after REQUEST_TIMEOUT seconds. Without
these a `Content-Length: 10000000000` held a thread and buffered whatever came, in the
memory the trainer needs.

python -m chessbot.api [--host H] [--port P] [--model PATH]
Env: INFERENCE_API_HOST (0.0.0.0), INFERENCE_API_PORT (8000), INFERENCE_MODEL_PATH, or the
newest model.pt under $REPO_DIR/artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 64 * 1024  # bytes of a POST body
REQUEST_TIMEOUT = 30.0  # seconds a client may take to send a request line, headers or body


class ModelHolder:
    def __init__(self, explicit: str | None, search_root: Path) -> None:
        self.explicit = Path(explicit) if explicit else None
        self.search_root = search_root
        self.lock = threading.Lock()
        self.model: Any = None
        self.path: Path | None = None
        self.mtime = 0.0
        self.error: str | None = None

    def _candidate(self) -> Path | None:
        if self.explicit:
            return self.explicit if self.explicit.is_file() else None
        try:
            found = sorted(self.search_root.glob("**/model.pt"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return None
        return found[-1] if found else None

    def get(self) -> Any:
        with self.lock:
            path = self._candidate()
            if path is None:
                self.error = "no model yet" + (f" at {self.explicit}" if self.explicit else "")
                return self.model
            mtime = path.stat().st_mtime
            if path != self.path or mtime != self.mtime:
                try:
                    from chessbot.infer import load_model

                    self.model = load_model(path)
                    self.path, self.mtime, self.error = path, mtime, None
                except Exception as exc:  # noqa: BLE001 - report, keep serving
                    self.error = f"cannot load {path}: {type(exc).__name__}: {exc}"
            return self.model


def make_handler(holder: ModelHolder, *,
                 timeout: float = REQUEST_TIMEOUT) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            self.timeout = timeout  # the socket's: a stalled read ends the connection
            super().setup()

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"[api] {self.address_string()} {fmt % args}\n")

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/healthz":
                self._send(404, {"error": f"no route {self.path}; try /healthz or POST /move"})
                return
            model = holder.get()
            self._send(200, {"status": "ok", "model_loaded": model is not None,
                             "model_path": str(holder.path) if holder.path else None,
                             "detail": holder.error})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/move":
                self._send(404, {"error": f"no route {self.path}"})
                return
            length = self._body_length()
            if length is None:
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                fen = body.get("fen") if isinstance(body, dict) else None
            except ValueError:  # not JSON, not UTF-8
                self._send(400, {"error": "body must be JSON: {\"fen\": \"<FEN>\"}"})
                return
            if not isinstance(fen, str):
                self._send(400, {"error": "missing \"fen\""})
                return
            try:
                top_k = int(body.get("top_k", 3))
            except (TypeError, ValueError, OverflowError):
                self._send(400, {"error": "\"top_k\" must be a whole number"})
                return
            model = holder.get()
            if model is None:
                self._send(503, {"error": holder.error or "no model loaded"})
                return
            try:
                from chessbot.infer import ModelError, predict

                try:
                    self._send(200, predict(model, fen, top_k))
                except ModelError as exc:
                    self._send(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - never take the server down
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

        def _body_length(self) -> int | None:
            """The body's byte count from Content-Length, or None once a refusal was sent
            (the connection then closes: a body left unread must not be taken for the next
            request)."""
            given = self.headers.get("Content-Length")
            if given is None:
                refusal = 411, "Content-Length is required (a JSON body: {\"fen\": \"<FEN>\"})"
            elif not given.strip().isdigit():
                refusal = 400, f"Content-Length must be a byte count, not {given[:40]!r}"
            elif int(given) > MAX_BODY:
                refusal = 413, (f"body of {int(given)} bytes: at most {MAX_BODY} (a FEN needs "
                                "under 100)")
            else:
                return int(given)
            self.close_connection = True
            self._send(refusal[0], {"error": refusal[1]})
            return None

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or too slow is not the server's error: no traceback in the log."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="chessbot inference API")
    parser.add_argument("--host", default=os.environ.get("INFERENCE_API_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("INFERENCE_API_PORT",
                                                                       "8000")))
    parser.add_argument("--model", default=os.environ.get("INFERENCE_MODEL_PATH"))
    args = parser.parse_args(argv)
    root = Path(os.environ.get("REPO_DIR", "/workspace/chess-bot")) / "artifacts"
    holder = ModelHolder(args.model, root)
    server = Server((args.host, args.port), make_handler(holder))
    print(f"[api] serving on {args.host}:{server.server_address[1]}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
