"""The compact encoding (chessbot.compact) against python-chess, the reference: the same
22 planes, the same legal moves and labels on thousands of random-play positions; its files,
cache, workers and errors; and the trainer's resident and streamed data paths agreeing."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from chessbot import compact
from chessbot.compact import (
    Encoded,
    encode_dataset,
    encode_lines,
    encode_split,
    featurize,
    featurize_numpy,
    labels_of,
    legal_mask_batch,
    open_encoded,
)
from chessbot.data import DatasetProblem, random_positions
from chessbot.encoding import encode_board, legal_mask, move_index
from tests.test_dataset_and_encoding import SMOKE

# Positions that exercise the rare rules: en passant (legal, pinned, discovered along the
# rank), castling through and out of attacks, promotions and under-promotions, pins, double
# check, Chess960-style castling letters, a rook missing from its corner.
SPECIAL = [
    "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",
    "8/8/8/K2pP2r/8/8/8/7k w - d6 0 1",
    "8/8/8/8/k2Pp2Q/8/8/7K b - d3 0 1",
    "r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1",
    "r3k2r/8/8/8/8/5q2/8/R3K2R w KQkq - 0 1",
    "r3k2r/8/8/8/8/8/8/R3K2R b KQkq - 0 1",
    "4k3/1P6/8/8/8/8/6p1/4K2R w K - 0 1",
    "4k3/1P6/8/8/8/8/6p1/4K2R b K - 0 1",
    "4k3/8/8/8/1b6/8/3N4/4K3 w - - 0 1",
    "4k3/8/8/8/4r3/8/3n4/4K3 w - - 0 1",
    "4k3/8/8/8/8/8/4q3/4K3 w - - 0 1",
    "1r2k1r1/8/8/8/8/8/8/1R2K1R1 w KQkq - 0 1",
    "4k3/8/8/8/8/8/8/R3K3 w KQ - 0 1",
    "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1",
]


def random_play(count: int, seed: int) -> list[chess.Board]:
    """Every position of random games (up to 200 plies each), until `count` positions."""
    rng = random.Random(seed)
    boards: list[chess.Board] = []
    while len(boards) < count:
        board = chess.Board()
        for _ in range(200):
            moves = list(board.legal_moves)
            if not moves or len(boards) >= count:
                break
            boards.append(board.copy(stack=False))
            board.push(rng.choice(moves))
    return boards


def _lines(boards: list[chess.Board], seed: int) -> tuple[list[str], list[chess.Move]]:
    rng = random.Random(seed)
    lines, moves = [], []
    for board in boards:
        move = rng.choice(list(board.legal_moves))
        moves.append(move)
        lines.append(json.dumps({"fen": board.fen(), "move": move.uci()}))
    return lines, moves


def _decode(chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = torch.from_numpy(chunk.rows)
    starts = np.concatenate([[0], np.cumsum(chunk.counts)[:-1]]).astype(np.int64)
    masks = legal_mask_batch(torch.from_numpy(chunk.legal.astype(np.int64)),
                             torch.from_numpy(starts), torch.from_numpy(chunk.counts),
                             int(chunk.counts.sum()))
    return featurize(rows).numpy(), labels_of(rows).numpy(), masks.numpy()


def test_same_planes_legal_moves_and_labels_as_python_chess() -> None:
    boards = (random_play(5000, seed=11) + random_positions(300, seed=2)
              + [chess.Board(fen) for fen in SPECIAL])
    lines, moves = _lines(boards, seed=5)
    chunk = encode_lines(lines)
    assert chunk.error is None and len(chunk) == len(boards)
    planes, labels, masks = _decode(chunk)
    assert (featurize_numpy(chunk.rows) == planes).all()  # host validation's, without torch
    split = Encoded(chunk.rows, chunk.legal, np.concatenate([[0], np.cumsum(chunk.counts)]),
                    Path("<lines>"))
    assert (split.legal_mask(0, len(split)) == masks).all()
    assert (split.legal_mask(700, 950) == masks[700:950]).all()
    for i, (board, move) in enumerate(zip(boards, moves, strict=True)):
        assert (planes[i] == encode_board(board)).all(), board.fen()
        assert (masks[i] == legal_mask(board)).all(), board.fen()
        assert labels[i] == move_index(move, board.turn), board.fen()
    # No move is stored twice (promotions share one index), so counts are the mask sizes.
    assert (chunk.counts == masks.sum(axis=1)).all()
    checks = sum(b.is_check() for b in boards)
    en_passant = sum(b.has_legal_en_passant() for b in boards)
    assert checks > 100 and en_passant > 5  # the rare paths were exercised


def test_bytes_per_position_stay_under_200() -> None:
    data = encode_lines((SMOKE / "train.jsonl").read_text().split("\n"))
    stored = data.rows.nbytes + data.legal.nbytes + 8 * (len(data) + 1)
    assert stored / len(data) <= 200


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"fen": chess.STARTING_FEN}), "missing \"move\""),
    (json.dumps({"fen": "8/8/8/8/8/8/8/8 w - - 0 1", "move": "e2e4"}), "illegal position"),
    (json.dumps({"fen": chess.STARTING_FEN, "move": "e2e5"}), "not legal"),
    (json.dumps({"fen": "4k3/1P6/8/8/8/8/8/4K3 w - - 0 1", "move": "b7b8"}), "not legal"),
    (json.dumps({"fen": "4k3/8/8/8/8/8/8/4K3 w - - 0 1", "move": "e1e2q"}), "not legal"),
    # Past Python's stack: a RecursionError, which no parser caught (a traceback).
    ("[" * 100_000, "JSON nested deeper than Python can read"),
    # Past Python's 4300 digits for an int: a plain ValueError, whose missing .msg made an
    # AttributeError traceback of data.stats, data.encode and the cycle's push.
    ('{"fen": "8/8/8/8/8/8/8/8 w - - 0 1", "move": "e2e4", "n": 1' + "0" * 5000 + "}",
     "not valid JSON (a number too long to read)"),
])
def test_a_bad_line_is_named_with_its_line_number(tmp_path: Path, line: str,
                                                  message: str) -> None:
    good = json.dumps({"fen": chess.STARTING_FEN, "move": "e2e4"})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([good, "", good, line, good]) + "\n")
    with pytest.raises(DatasetProblem) as err:
        encode_split(path, tmp_path / "out", workers=1)
    assert err.value.line == 4 and message in err.value.what
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("line", [
    json.dumps({"fen": "x" * 1_000_000, "move": "e2e4"}),
    json.dumps({"fen": chess.STARTING_FEN, "move": "e2e4" * 250_000}),
], ids=["fen", "move"])
def test_a_huge_value_in_a_bad_line_is_quoted_short(tmp_path: Path, line: str) -> None:
    """One line of a 30 MB "fen" printed a 60 MB refusal (the FEN quoted, then again inside
    python-chess's own message): a terminal or a CI log drowned in it."""
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DatasetProblem) as err:
        encode_split(path, tmp_path / "out", workers=1)
    assert err.value.line == 1 and len(str(err.value)) < 400, len(str(err.value))
    assert "(1,000,000 characters)" in err.value.what


@pytest.mark.parametrize("split_above", [None, 1], ids=["one-piece", "every-worker"])
def test_bytes_that_are_not_utf8_are_a_bad_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split_above: int | None) -> None:
    # data.stats and data.encode ended in a UnicodeDecodeError traceback.
    if split_above:  # many small pieces, encoded by worker processes
        monkeypatch.setattr(compact, "SPLIT_ABOVE", split_above)
    good = json.dumps({"fen": chess.STARTING_FEN, "move": "e2e4"}).encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join([good] * 40 + [b"\xff\xfe\x00garbage"] + [good] * 5) + b"\n")
    with pytest.raises(DatasetProblem) as err:
        encode_split(path, tmp_path / "out", workers=2 if split_above else 1)
    assert err.value.line == 41
    assert err.value.what == "not UTF-8 text (byte 0xff): a JSONL dataset is UTF-8"
    assert not (tmp_path / "out").exists()


def test_workers_write_the_same_files_as_one_process(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    source = SMOKE / "train.jsonl"
    one = encode_split(source, tmp_path / "one", workers=1)
    monkeypatch.setattr(compact, "SPLIT_ABOVE", 1 << 16)  # cut the 1.3 MB into 16 ranges
    two = encode_split(source, tmp_path / "two", workers=2)
    for name in ("rows.bin", "legal.bin", "offsets.bin"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert len(one) == len(two) == source.read_text().count("\n")


def test_cache_is_reused_and_keyed_by_content(tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    dataset.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (dataset / name).write_text((SMOKE / name).read_text().split("\n", 300)[0] + "\n")
    first = encode_dataset(dataset, tmp_path / "cache", workers=1)
    again = encode_dataset(dataset, tmp_path / "cache", workers=1)
    assert not first.cached and again.cached
    assert again.splits["train"].path == first.splits["train"].path
    assert len(open_encoded(first.splits["val"].path)) == len(first.splits["val"])
    with open(dataset / "val.jsonl", "a") as handle:
        handle.write(json.dumps({"fen": chess.STARTING_FEN, "move": "d2d4"}) + "\n")
    changed = encode_dataset(dataset, tmp_path / "cache", workers=1)
    assert not changed.cached and changed.splits["train"].path == first.splits["train"].path
    assert changed.splits["val"].path != first.splits["val"].path


@pytest.mark.parametrize(("damage", "why"), [
    (lambda f: (f / "rows.bin").write_bytes(b""), "its rows.bin holds 0 bytes, not the"),
    (lambda f: (f / "meta.json").write_text('{"positions": 1e400, "legal_moves": 3}'),
     "its meta.json is not an encode's"),
    (lambda f: (f / "meta.json").write_text("{"), "its meta.json cannot be read (not JSON)"),
    (lambda f: (f / "offsets.bin").unlink(), "its offsets.bin cannot be read"),
], ids=["rows-cut", "meta-inf", "meta-cut", "offsets-gone"])
def test_a_damaged_cache_is_encoded_again_not_a_traceback(tmp_path: Path, damage,
                                                          why: str) -> None:
    """A crash before the disk had the files (they were renamed into place unsynced), a
    full disk or a hand edit: data.encode, data.stats, local-validate and the trainer ended
    in `ValueError: mmap length is greater than file size` or an OverflowError, and the
    cache had to be found and deleted by hand. The dataset is the truth: encoded again."""
    dataset = tmp_path / "ds"
    dataset.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (dataset / name).write_text((SMOKE / name).read_text().split("\n", 200)[0] + "\n")
    first = encode_dataset(dataset, tmp_path / "cache", workers=1)
    rows = np.asarray(first.splits["train"].rows).copy()
    damage(first.splits["train"].path)
    said: list[str] = []
    again = encode_dataset(dataset, tmp_path / "cache", workers=1, log=said.append)
    assert not again.cached and again.splits["train"].path == first.splits["train"].path
    assert np.array_equal(np.asarray(again.splits["train"].rows), rows)
    assert any(f"train: the cache {first.splits['train'].path} is damaged ({why}" in line
               and line.endswith(": encoding it again") for line in said), said
    assert encode_dataset(dataset, tmp_path / "cache", workers=1).cached


def test_a_temporary_folder_of_another_machine_in_a_shared_cache_is_left_alone(
        tmp_path: Path) -> None:
    """A cluster's nodes encode into one network volume's cache at once. A pid names a
    process only on its own machine (two containers' trainers often have the same one), and
    a lock taken on another machine may not be seen here: an encode removed another node's
    live temporary folder as a killed encode's. Now another machine's goes only after a day
    without a write; this machine's killed ones still go at once."""
    import os

    dataset = tmp_path / "ds"
    dataset.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (dataset / name).write_text((SMOKE / name).read_text().split("\n", 100)[0] + "\n")
    cache = tmp_path / "cache"

    def temporary(name: str, age: float = 0.0) -> Path:
        folder = cache / name
        folder.mkdir(parents=True)
        (folder / ".lock").touch()  # a lock file no process here holds
        (folder / "rows.bin").write_bytes(b"\0" * 100)
        if age:
            for item in (folder / ".lock", folder / "rows.bin", folder):
                os.utime(item, (item.stat().st_atime - age, item.stat().st_mtime - age))
        return folder

    here = compact.host_tag()
    theirs = temporary(".0123456789abcdef01234567.v1.@other-node.4242.tmp")
    theirs_abandoned = temporary(".0123456789abcdef01234567.v1.@other-node.4243.tmp",
                                 age=compact.STALE_ELSEWHERE + 60)
    mine_killed = temporary(f".0123456789abcdef01234567.v1.@{here}.999999999.tmp")
    # A live encode here between making its folder and locking it (its lock file made, not
    # yet locked): removed as a killed one's, and that encode then failed (FileNotFoundError
    # on its rows.bin) when encodes ran at once.
    live = subprocess.Popen(["sleep", "300"])
    try:
        mine_unlocked_yet = temporary(f".0123456789abcdef01234567.v1.@{here}.{live.pid}.tmp")
        encoded = encode_dataset(dataset, cache, workers=1)
    finally:
        live.kill()
        live.wait()
    assert not encoded.cached
    assert theirs.is_dir() and (theirs / "rows.bin").is_file()
    assert mine_unlocked_yet.is_dir() and (mine_unlocked_yet / "rows.bin").is_file()
    assert not theirs_abandoned.exists() and not mine_killed.exists()
    # None of this encode's own temporary folders is left.
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == sorted(
        [theirs.name, mine_unlocked_yet.name])


def test_a_resident_split_reaches_the_device_a_chunk_at_a_time(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Every rank of a node loads the resident set at once, and each made a whole host copy
    of it first (two of the legal moves, for their conversion): eight ranks needed eight
    copies of host RAM at the same moment. The copy is now a chunk at a time; what reaches
    the device is the same."""
    import tracemalloc

    from chessbot import train

    dataset = tmp_path / "ds"
    dataset.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        lines = (SMOKE / name).read_text().splitlines()[:300]
        (dataset / name).write_text("\n".join(lines) + "\n")
    split = encode_dataset(dataset, tmp_path / "cache", workers=1).splits["train"]
    assert split.rows.nbytes > 12_000 and split.legal.nbytes > 12_000
    monkeypatch.setattr(train, "RESIDENT_CHUNK_BYTES", 2048)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; torch's are not counted
    try:
        resident = train.Resident(split, torch.device("cpu"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6_000, peak  # a chunk or two, not a whole split's host copy
    assert np.array_equal(resident.rows.numpy(), np.asarray(split.rows))
    assert np.array_equal(resident.legal.numpy(), np.asarray(split.legal).astype(np.int16))
    assert resident.rows.dtype == torch.uint8 and resident.legal.dtype == torch.int16


def _train(tmp_path: Path, capsys: pytest.CaptureFixture, name: str, *extra: str) -> dict:
    """A training in this process (the trainer's main, as `python -m chessbot.train` runs
    it, without a second torch import per run: what differs here is the data path alone)."""
    from chessbot.train import main

    out = tmp_path / name
    code = main(["--dataset-dir", str(SMOKE), "--output-dir", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--epochs", "1", "--blocks", "1", "--channels", "8",
                 "--batch-size", "256", "--device", "cpu", "--seed", "3", *extra])
    said = capsys.readouterr()
    assert code == 0, said.out + said.err
    return {"metrics": json.loads((out / "metrics.json").read_text()), "log": said.out}


@pytest.mark.slow
def test_streamed_and_resident_training_agree(tmp_path: Path, capsys, trainer_here) -> None:
    resident = _train(tmp_path, capsys, "resident")
    streamed = _train(tmp_path, capsys, "streamed", "--memory-budget", "64K")
    assert resident["metrics"]["data"]["mode"] == "resident"
    assert streamed["metrics"]["data"]["mode"] == "streamed"
    assert "data streamed" in streamed["log"] and "over the 64.0 KiB budget" in streamed["log"]
    top1 = [run["metrics"]["final"]["val_top1"] for run in (resident, streamed)]
    assert abs(top1[0] - top1[1]) <= 0.01, top1


@pytest.mark.slow
def test_an_interrupted_encode_says_so_and_caches_nothing_half_done(tmp_path: Path) -> None:
    """SIGINT to the whole group (Ctrl-C) mid-encode, on workers: exit 130 with one line, no
    worker traceback, no temporary folder left. It exited 1 in silence."""
    from tests.conftest import INV, child_environ, interrupt

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    train = (SMOKE / "train.jsonl").read_bytes()
    (dataset / "train.jsonl").write_bytes(train * (compact.SPLIT_ABOVE // len(train) + 2))
    (dataset / "val.jsonl").write_bytes((SMOKE / "val.jsonl").read_bytes())
    cache = tmp_path / "cache"

    def first_chunk_written(proc: subprocess.Popen) -> None:  # the event: a progress line
        line = proc.stderr.readline()
        assert line.startswith("encoding train: "), line

    proc, _, err = interrupt([INV, "data.encode", "-d", str(dataset), "--workers", "2",
                              "--cache-dir", str(cache)], first_chunk_written, group=True,
                             env=child_environ())
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert f"interrupted: the encoding of {dataset} stopped before it finished" in err
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")], list(cache.rglob("*"))


def test_encoding_a_file_or_a_missing_folder_rejects_the_dataset(tmp_path: Path) -> None:
    """`inv data.encode -d train.jsonl` said "Not a directory: train.jsonl/train.jsonl"
    (exit 1), where data.stats and the cycle reject the dataset, naming it (exit 3)."""
    from podcycle import dataset
    from podcycle.errors import DatasetError

    for given, said in ((SMOKE / "train.jsonl", f"{SMOKE / 'train.jsonl'} is a file, not a "
                         "folder"), (tmp_path / "nowhere", "dataset folder not found: "
                                     f"{tmp_path / 'nowhere'}")):
        with pytest.raises(DatasetError) as rejected:
            dataset.encode(given, tmp_path / "cache")
        assert rejected.value.message == f"dataset rejected: {said}"
        assert not (tmp_path / "cache").exists()
