"""The pod's inference API (chessbot.api) against what its public port may receive through
RunPod's HTTP proxy: a body it must not wait for or buffer, a client that stops sending, a
number that is no number. Each is refused with an HTTP answer, and the server goes on
answering. The server runs in this process, on 127.0.0.1, with a small random model
(test_uci.make_model)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import chess
import pytest

from chessbot.api import MAX_BODY, ModelHolder, Server, make_handler
from tests.test_uci import make_model


@contextmanager
def serving(tmp_path: Path, timeout: float) -> Iterator[int]:
    """The API on a free loopback port, its handlers' socket timeout `timeout`; the port."""
    model = tmp_path / "model.pt"
    if not model.exists():
        make_model(model, blocks=1, channels=8)
    server = Server(("127.0.0.1", 0), make_handler(ModelHolder(str(model), tmp_path),
                                                  timeout=timeout))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, then read until the server closes the connection. A server that never
    does fails the test after 30 s (a bound, not a measurement)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(raw)
        received = []
        while chunk := conn.recv(65536):
            received.append(chunk)
    return b"".join(received)


def answer(raw: bytes) -> tuple[int, dict]:
    """The status and JSON body of the one HTTP answer in `raw`."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post(body: bytes, length: str | None = None, *, close: bool = False) -> bytes:
    """A POST /move over HTTP/1.1 (the connection kept open unless `close`)."""
    headers = b"POST /move HTTP/1.1\r\nHost: pod\r\nContent-Type: application/json\r\n"
    if close:
        headers += b"Connection: close\r\n"
    if length is not None:
        headers += f"Content-Length: {length}\r\n".encode()
    return headers + b"\r\n" + body


@pytest.mark.parametrize(("length", "status", "said"), [
    ("10000000000", 413, f"at most {MAX_BODY}"),   # would hold a thread, then fill the memory
    (str(MAX_BODY + 1), 413, f"at most {MAX_BODY}"),
    ("-1", 400, "byte count"),                      # read to the end: a thread held for good
    ("12abc", 400, "byte count"),
    (None, 411, "Content-Length is required"),
], ids=["ten-gigabytes", "one-over", "negative", "not-a-number", "missing"])
def test_a_body_it_must_not_wait_for_is_refused_and_the_connection_closed(
        tmp_path: Path, length: str | None, status: int, said: str) -> None:
    """Refused from the headers alone, without reading a body (none is sent but a few bytes),
    and the connection closed by the server: its long timeout (30 s) is not what ends it."""
    with serving(tmp_path, timeout=30) as port:
        got, body = answer(exchange(port, post(b'{"fen": "', length)))
        assert got == status and said in body["error"]
        fen = chess.Board().fen().encode()
        request = b'{"fen": "' + fen + b'"}'
        got, body = answer(exchange(port, post(request, str(len(request)), close=True)))
        assert got == 200 and chess.Move.from_uci(body["move"]) in chess.Board().legal_moves


def test_a_client_that_stops_sending_is_dropped(tmp_path: Path) -> None:
    """Half a request line, half the headers, half a body: each connection is closed by the
    server once its timeout passes (before: held open, a thread each, for as long as the
    client liked)."""
    with serving(tmp_path, timeout=0.5) as port:
        assert exchange(port, b"POST /mo") == b""
        assert exchange(port, b"POST /move HTTP/1.1\r\nHost: pod\r\n") == b""
        assert exchange(port, post(b'{"fen": "rnbqkbnr/', "500")) == b""


@pytest.mark.parametrize("top_k", ['"three"', "null", "[]", "1e999"])
def test_a_top_k_that_is_no_whole_number_is_a_400(tmp_path: Path, top_k: str) -> None:
    request = b'{"fen": "' + chess.Board().fen().encode() + b'", "top_k": ' + top_k.encode() + b"}"
    with serving(tmp_path, timeout=0.5) as port:
        got, body = answer(exchange(port, post(request, str(len(request)), close=True)))
        assert (got, body) == (400, {"error": '"top_k" must be a whole number'})
        huge = request.replace(top_k.encode(), b"1000000")  # more than the legal moves
        got, body = answer(exchange(port, post(huge, str(len(huge)), close=True)))
        assert got == 200 and len(body["top"]) == 20  # every legal move of the start


def test_a_client_gone_before_its_answer_leaves_no_traceback(capsys) -> None:
    """socketserver prints a traceback for any error of a request; a client that hung up or
    timed out is not the server's error (the API's log is the pod's log)."""
    server = Server(("127.0.0.1", 0), make_handler(ModelHolder(None, Path("/nonexistent"))))
    try:
        for gone in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"),
                     TimeoutError("timed out")):
            try:
                raise gone
            except OSError:
                server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a real bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert "ValueError: a real bug" in capsys.readouterr().err
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
