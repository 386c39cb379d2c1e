"""Dataset reading and validation: JSONL, one position a line, {"fen": FEN, "move": UCI}
(extra keys allowed). Errors name file:line and what is wrong."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import chess

SPLITS = ("train.jsonl", "val.jsonl")


class DatasetProblem(ValueError):
    def __init__(self, path: Path, line: int, what: str) -> None:
        self.path, self.line, self.what = path, line, what
        super().__init__(f"{path}:{line}: {what}")


@dataclass
class Record:
    line: int
    board: chess.Board
    move: chess.Move


SHOWN = 80  # characters of a line's value quoted in a refusal


def shown(value: str, limit: int = SHOWN) -> str:
    """A value from a dataset line as a refusal quotes it: whole when short, else its start
    and its length (a 30 MB "fen" made a 60 MB message, quoted by python-chess too)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def parse_line(path: Path, number: int, text: str) -> Record:
    try:
        obj = json.loads(text)
    except RecursionError:
        raise DatasetProblem(path, number, "JSON nested deeper than Python can read: each line "
                             'is one object, {"fen": ..., "move": ...}') from None
    except ValueError as exc:
        if text.startswith("\ufeff"):
            raise DatasetProblem(path, number, "starts with a UTF-8 byte-order mark: save the "
                                 "file as UTF-8 without BOM") from None
        # A JSONDecodeError says what; a number past Python's 4300-digit limit for turning
        # text into an int is a plain ValueError, with no .msg (and the number in its text).
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "a number too long to read"
        raise DatasetProblem(path, number, f"not valid JSON ({why})") from None
    if not isinstance(obj, dict):
        raise DatasetProblem(path, number, "expected a JSON object {\"fen\", \"move\"}")
    fen, uci = obj.get("fen"), obj.get("move")
    if not isinstance(fen, str) or not fen.strip():
        raise DatasetProblem(path, number, _bad_field(obj, "fen", "a FEN string"))
    if not isinstance(uci, str) or not uci.strip():
        raise DatasetProblem(path, number, _bad_field(obj, "move",
                                                      "a UCI string such as e2e4"))
    try:
        board = chess.Board(fen)
    except ValueError as exc:
        why = str(exc) if len(str(exc)) <= 2 * SHOWN else str(exc).split(":")[0]
        raise DatasetProblem(path, number, f"invalid FEN {shown(fen)} ({why})") from None
    if not board.is_valid():
        raise DatasetProblem(path, number,
                             f"illegal position {shown(fen)} ({board.status()!r})")
    try:
        move = chess.Move.from_uci(uci.strip())
    except ValueError:
        raise DatasetProblem(path, number, f"move {shown(uci)} is not UCI notation") from None
    if move not in board.legal_moves:
        raise DatasetProblem(path, number, f"move {uci} is not legal in {shown(fen)}")
    return Record(number, board, move)


def _bad_field(obj: dict, name: str, wanted: str) -> str:
    """Why a line's `name` field is unusable: missing, empty, or of another JSON type
    (`{"fen": 1}` was said to miss its "fen")."""
    if name not in obj:
        return f"missing \"{name}\" ({wanted})"
    value = obj[name]
    if isinstance(value, str):
        return f"\"{name}\" is empty ({wanted})"
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool)
            else "a number" if isinstance(value, int | float) else "a list"
            if isinstance(value, list) else "an object")
    return f"\"{name}\" is {kind}, not {wanted}"


def iter_records(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield parse_line(path, number, text)


def digests(folder: Path) -> tuple[str, dict[str, str]]:
    """The dataset's hash (dataset_hash) and each split file's own sha256 (the key of its
    compact encoding), in one streamed read of the files."""
    whole = hashlib.sha256()
    each = {}
    for name in SPLITS:
        whole.update(name.encode())
        part = hashlib.sha256()
        with open(Path(folder) / name, "rb") as handle:
            while block := handle.read(1 << 22):
                whole.update(block)
                part.update(block)
        each[name] = part.hexdigest()
    return whole.hexdigest(), each


def dataset_hash(folder: Path) -> str:
    return digests(folder)[0]


def random_positions(count: int, seed: int, max_plies: int = 120) -> list[chess.Board]:
    """`count` positions from seeded random play (0 to max_plies plies each, none over):
    legal positions of every kind, for tests and benches of anything that takes a board."""
    import random

    rng = random.Random(seed)
    boards = []
    while len(boards) < count:
        board = chess.Board()
        for _ in range(rng.randint(0, max_plies)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        if not board.is_game_over():
            boards.append(board)
    return boards
