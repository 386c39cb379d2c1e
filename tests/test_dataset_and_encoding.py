"""Dataset validation (each kind of bad line names file:line) and encoding round trips."""

from __future__ import annotations

import json
from pathlib import Path

import chess
import pytest

from chessbot.data import random_positions
from chessbot.encoding import (
    MOVES,
    decode_board_planes,
    encode_board,
    index_to_move,
    legal_indices,
    move_index,
)
from podcycle.dataset import validate
from podcycle.errors import DatasetError
from tests.conftest import ROOT

SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod"
GOOD = json.dumps({"fen": chess.STARTING_FEN, "move": "e2e4"})


def make(tmp_path: Path, train_lines: list[str], val_lines: list[str] | None = None) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir(exist_ok=True)
    (folder / "train.jsonl").write_text("".join(line + "\n" for line in train_lines))
    (folder / "val.jsonl").write_text("".join(line + "\n" for line in (val_lines or [GOOD])))
    return folder


def test_the_committed_smoke_dataset_is_valid() -> None:
    summary = validate(SMOKE)
    assert summary["train"] >= 3000 and summary["val"] >= 300
    assert len(str(summary["sha256"])) == 64


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"move": "e2e4"}), "missing \"fen\""),
    (json.dumps({"fen": chess.STARTING_FEN}), "missing \"move\""),
    # A field of another type was said to be missing (hunt, stop 51).
    (json.dumps({"fen": 1, "move": "e2e4"}), "\"fen\" is a number, not a FEN string"),
    (json.dumps({"fen": chess.STARTING_FEN, "move": None}),
     "\"move\" is null, not a UCI string such as e2e4"),
    (json.dumps({"fen": " ", "move": "e2e4"}), "\"fen\" is empty (a FEN string)"),
    (json.dumps({"fen": "rnbqkbnr/pppppppp/8/8 w KQkq - 0 1", "move": "e2e4"}), "invalid FEN"),
    (json.dumps({"fen": "8/8/8/8/8/8/8/8 w - - 0 1", "move": "e2e4"}), "illegal position"),
    (json.dumps({"fen": chess.STARTING_FEN, "move": "e2-e4"}), "not UCI"),
    (json.dumps({"fen": chess.STARTING_FEN, "move": "e2e5"}), "not legal"),
])
def test_each_kind_of_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str
                                                   ) -> None:
    folder = make(tmp_path, [GOOD, GOOD, line, GOOD])
    with pytest.raises(DatasetError) as err:
        validate(folder)
    text = str(err.value)
    assert f"{folder / 'train.jsonl'}:3:" in text and message in text


def test_extra_keys_and_blank_lines_are_fine(tmp_path: Path) -> None:
    extra = json.dumps({"fen": chess.STARTING_FEN, "move": "g1f3", "source": "x", "eval": 12})
    assert validate(make(tmp_path, [extra, "", GOOD]))["train"] == 2


def test_empty_and_missing_files(tmp_path: Path) -> None:
    folder = make(tmp_path, [GOOD])
    (folder / "val.jsonl").write_text("")
    with pytest.raises(DatasetError, match=r"val.jsonl:1: file has no positions"):
        validate(folder)
    (folder / "val.jsonl").unlink()
    with pytest.raises(DatasetError, match="val.jsonl: missing"):
        validate(folder)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        validate(tmp_path / "nowhere")


def test_piece_planes_round_trip() -> None:
    for board in random_positions(100, seed=3):
        planes = encode_board(board)
        decoded = decode_board_planes(planes, board.turn == chess.WHITE)
        expected = {sq: (p.piece_type, p.color == chess.WHITE)
                    for sq, p in board.piece_map().items()}
        assert decoded == expected


def test_moves_round_trip_through_their_index() -> None:
    promotions = 0
    for board in random_positions(150, seed=4):
        white = board.turn == chess.WHITE
        for move in board.legal_moves:
            index = move_index(move, white)
            assert 0 <= index < MOVES and index in legal_indices(board)
            back = index_to_move(index, board)
            if move.promotion and move.promotion != chess.QUEEN:
                assert back.promotion == chess.QUEEN and back.to_square == move.to_square
                promotions += 1
            else:
                assert back == move
    board = chess.Board("8/P6k/8/8/8/8/8/K7 w - - 0 1")
    assert index_to_move(move_index(chess.Move.from_uci("a7a8q"), True), board).uci() == "a7a8q"


def test_black_to_move_is_mirrored() -> None:
    board = chess.Board()
    board.push_uci("e2e4")
    # Black's e7e5 looks like White's e2e4 from the side to move's point of view.
    assert move_index(chess.Move.from_uci("e7e5"), False) == move_index(
        chess.Move.from_uci("e2e4"), True)


def test_encode_refuses_a_split_without_positions(tmp_path: Path) -> None:
    from podcycle.dataset import encode

    smoke = ROOT / "data" / "dataset" / "_smoke_runpod"
    (tmp_path / "train.jsonl").write_text((smoke / "val.jsonl").read_text())
    (tmp_path / "val.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match=r"val.jsonl:1: file has no positions"):
        encode(tmp_path, tmp_path / "cache")
    # Refused before any encoding: no empty one is left in the cache (there was one), for
    # white space as the encoder reads it (a no-break space too).
    (tmp_path / "val.jsonl").write_text("\u00a0\n \n")
    with pytest.raises(DatasetError, match=r"val.jsonl:1: file has no positions"):
        encode(tmp_path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_split_that_is_a_fifo_is_refused_not_read_forever(tmp_path: Path) -> None:
    import os
    import threading

    (tmp_path / "train.jsonl").write_text("")
    fifo = tmp_path / "val.jsonl"
    os.mkfifo(fifo)
    raised: list[BaseException] = []

    def check() -> None:
        try:
            validate(tmp_path)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            raised.append(exc)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # blocked opening the FIFO: a writer that closes at once frees it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("validate blocked on a FIFO")
    assert isinstance(raised[0], DatasetError)
    assert raised[0].message == (f"dataset rejected: {fifo} is not a regular file (a folder, "
                                 "a FIFO or a device)")
