"""data.import-pgn on generated PGN: random and stockfish games with comments, variations and
NAGs, a non-standard start position, a malformed game and a truncated last game; plain and
.zst; then the project's dataset validation, legality, the split by game, skip counts and
byte-identical reruns. Real python-chess, real stockfish (Debian's, installed by make setup)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import chess
import chess.engine
import chess.pgn
import pytest

from chessbot.pgn_import import ImportProblem, Options, run_import, speed_of
from podcycle.dataset import validate
from tests.conftest import ROOT

STOCKFISH = shutil.which("stockfish") or "/usr/games/stockfish"
ODD_START = "4k3/8/8/8/8/8/4P3/4K3 w - - 0 1"


def _game(rng: random.Random, index: int, plies: int, engine=None, fen: str | None = None
          ) -> chess.pgn.Game:
    board = chess.Board(fen) if fen else chess.Board()
    game = chess.pgn.Game()
    if fen:
        game.setup(board)
    game.headers.update({"Event": f"gen {index}", "White": f"w{index}", "Black": f"b{index}",
                         "WhiteElo": str(1200 + 100 * (index % 10)),
                         "BlackElo": str(1250 + 100 * (index % 10)),
                         "TimeControl": ("60+0", "180+2", "600+5", "1800+20")[index % 4]})
    node = game
    for ply in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            break
        if engine is not None and ply % 2:
            move = engine.play(board, chess.engine.Limit(depth=1)).move
        else:
            move = rng.choice(moves)
        if ply == 3 and len(moves) > 1:  # a side line the import must ignore
            other = next(m for m in moves if m != move)
            node.add_variation(other, comment="a variation")
        node = node.add_main_variation(move)
        if ply % 5 == 0:
            node.comment = "a comment { with braces } ; and a semicolon"
        if ply % 7 == 0:
            node.nags.add(chess.pgn.NAG_GOOD_MOVE)
        board.push(move)
    game.headers["Result"] = board.result() if board.is_game_over() else "*"
    return game


def make_pgn(folder: Path, games: int = 40, seed: int = 7) -> Path:
    rng = random.Random(seed)
    parts = []
    with chess.engine.SimpleEngine.popen_uci(STOCKFISH) as engine:
        for index in range(games):
            if index == 5:
                game = _game(rng, index, 12, fen=ODD_START)
            else:
                game = _game(rng, index, rng.randint(10, 60), engine if index % 3 == 0 else None)
            parts.append(str(game))
    # A game with an illegal move, then a truncated last game.
    parts.insert(10, '[Event "broken"]\n[Result "1-0"]\n\n1. e4 e5 2. Ke3 Nc6 1-0')
    parts.append('[Event "cut"]\n[Result "*"]\n\n1. d4 d5 2. c4 dx')
    path = folder / "games.pgn"
    path.write_text("\n\n".join(parts) + "\n")
    return path


@pytest.fixture(scope="module")
def pgn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pgn(tmp_path_factory.mktemp("pgn"))


def _read(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_import_makes_a_valid_dataset_split_by_game(pgn: Path, tmp_path: Path) -> None:
    report = run_import([str(pgn)], tmp_path / "ds", Options(val_fraction=0.25, workers=2))
    validate(tmp_path / "ds")  # the project's dataset validation
    train, val = _read(tmp_path / "ds", "train"), _read(tmp_path / "ds", "val")
    for record in train + val:
        board = chess.Board(record["fen"])
        assert chess.Move.from_uci(record["move"]) in board.legal_moves
    assert not {r["game"] for r in train} & {r["game"] for r in val}
    assert report["games_read"] == 42 and report["games_kept"] == 40
    assert report["skipped_by_reason"]["bad move"]["count"] == 1
    assert "games.pgn:" in report["skipped_by_reason"]["bad move"]["first"]
    assert report["skipped_by_reason"]["truncated"]["count"] == 1
    assert any(r["fen"] == ODD_START for r in train + val)  # the FEN start was used
    assert report["positions"]["train"] == len(train) and report["positions"]["val"] == len(val)
    saved = json.loads((tmp_path / "ds" / "import_report.json").read_text())
    assert saved["games_kept"] == 40 and saved["label"] == "played"


def test_same_seed_same_bytes_any_workers_and_zst(pgn: Path, tmp_path: Path) -> None:
    import zstandard

    zst = tmp_path / "games.pgn.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(pgn.read_bytes()))
    run_import([str(pgn)], tmp_path / "a", Options(seed=3, workers=1))
    run_import([str(zst)], tmp_path / "b", Options(seed=3, workers=2))
    run_import([str(pgn)], tmp_path / "c", Options(seed=4, workers=2))
    for split in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "a" / split).read_bytes() == (tmp_path / "b" / split).read_bytes()
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != \
        (tmp_path / "c" / "train.jsonl").read_bytes()


def test_filters_and_their_counts(pgn: Path, tmp_path: Path) -> None:
    report = run_import([str(pgn)], tmp_path / "ds", Options(
        min_elo=1500, time_control=("blitz", "rapid"), skip_plies=4, workers=1))
    kept = _read(tmp_path / "ds", "train") + _read(tmp_path / "ds", "val")
    assert report["filtered_by_reason"]["Elo below minimum"] > 0
    # Tags filter a game before its moves are parsed: the broken game without Elo tags is
    # filtered ("no Elo"), the cut last game is skipped (truncated).
    assert sum(report["filtered_by_reason"].values()) + report["games_kept"] + \
        report["games_skipped"] == 42 and report["games_skipped"] == 1
    assert all(chess.Board(r["fen"]).fullmove_number >= 3 for r in kept
               if r["fen"] != ODD_START)
    limited = run_import([str(pgn)], tmp_path / "max", Options(max_games=12, workers=2,
                                                               val_fraction=0.3))
    assert limited["games_kept"] == 12
    assert speed_of("180+2") == "blitz" and speed_of("-") == "correspondence"


def test_stockfish_labels(pgn: Path, tmp_path: Path) -> None:
    report = run_import([str(pgn)], tmp_path / "ds", Options(
        label="stockfish", depth=2, max_games=4, val_fraction=0.5, workers=2))
    assert report["label"] == "stockfish depth 2"
    validate(tmp_path / "ds")
    records = _read(tmp_path / "ds", "train")
    played = {(r["fen"], r["move"]) for r in run_records(pgn, tmp_path)}
    # Engine labels are legal, and not simply the moves played.
    assert any((r["fen"], r["move"]) not in played for r in records)


def run_records(pgn: Path, tmp_path: Path) -> list[dict]:
    run_import([str(pgn)], tmp_path / "played", Options(max_games=4, val_fraction=0.5,
                                                        workers=1))
    return _read(tmp_path / "played", "train") + _read(tmp_path / "played", "val")


@pytest.mark.parametrize(("patterns", "options", "words"), [
    (["/nonexistent/x.pgn"], Options(), "no such file"),
    (["/nonexistent/*.pgn"], Options(), "no file matches"),
    ([__file__], Options(), "not a PGN file"),
    (None, Options(val_fraction=0), "--val-fraction"),
    (None, Options(label="engine"), "--label engine"),
    (None, Options(time_control=("fast",)), "--time-control fast"),
    (None, Options(min_elo=4000), "none of the 42 games was kept"),
])
def test_bad_inputs_are_refused_before_writing(pgn: Path, tmp_path: Path, patterns, options,
                                               words: str) -> None:
    with pytest.raises(ImportProblem) as err:
        run_import(patterns or [str(pgn)], tmp_path / "out", options)
    assert words in str(err.value)
    assert not list((tmp_path / "out").glob("*.jsonl")) if (tmp_path / "out").exists() else True


def test_a_damaged_archive_is_one_clear_refusal(pgn: Path, tmp_path: Path) -> None:
    import zstandard

    whole = zstandard.ZstdCompressor().compress(pgn.read_bytes())
    damaged = tmp_path / "cut.pgn.zst"
    damaged.write_bytes(whole[:len(whole) // 2])  # a download cut in the middle
    for workers in (1, 2):
        with pytest.raises(ImportProblem, match="cut.pgn.zst: cannot be read past game"):
            run_import([str(damaged)], tmp_path / f"out{workers}", Options(workers=workers))
        assert not (tmp_path / f"out{workers}").exists()  # nothing half-written left


def test_an_existing_dataset_is_not_overwritten_without_asking(pgn: Path, tmp_path: Path
                                                              ) -> None:
    run_import([str(pgn)], tmp_path / "ds", Options(workers=1))
    before = (tmp_path / "ds" / "train.jsonl").read_bytes()
    with pytest.raises(ImportProblem, match="--overwrite"):
        run_import([str(pgn)], tmp_path / "ds", Options(workers=1, seed=9))
    assert (tmp_path / "ds" / "train.jsonl").read_bytes() == before


@pytest.mark.slow
def test_tasks_import_encode_and_stats(pgn: Path, tmp_path: Path) -> None:
    """The three data tasks through `inv`, as a user runs them."""
    def inv(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "inv"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "ds"
    made = inv("data.import-pgn", str(pgn), "--out", str(out), "--val-fraction", "0.3", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["games_kept"] == 40 and "imported:" in made.stderr
    encoded = inv("data.encode", "-d", str(out), "--json")
    assert encoded.returncode == 0, encoded.stderr
    figures = json.loads(encoded.stdout)
    assert set(figures) >= {"positions", "bytes", "seconds", "path"}
    assert figures["bytes"] / figures["positions"] <= 200
    stats = inv("data.stats", str(out), "--json")
    assert stats.returncode == 0, stats.stderr
    numbers = json.loads(stats.stdout)
    assert numbers["positions"] == figures["positions"]
    assert numbers["games"] == 40 and numbers["games_in_both_splits"] == 0
    assert numbers["label_source"] == "played"
    assert 0 < numbers["random_legal_top1"] < 0.5
    refused = inv("data.import-pgn", str(pgn), "--out", str(out))
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_interrupted_import_says_so_and_leaves_no_temporary_files(
        pgn: Path, tmp_path: Path, workers: str) -> None:
    """SIGTERM (a cancelled job) mid-import: exit 130, one message, the temporary files gone.
    Before, SIGTERM left them (gigabytes on a real import) and said nothing, and Ctrl-C with
    workers printed each worker's KeyboardInterrupt traceback."""
    import signal

    from tests.conftest import INV, child_environ, eventually, interrupt

    big = tmp_path / "big.pgn"
    with open(big, "w") as handle:
        text = pgn.read_text()
        for _ in range(600):
            handle.write(text + "\n\n")
    out = tmp_path / "out"
    def writing(proc: subprocess.Popen) -> None:  # the event: positions reach a temporary file
        eventually(lambda: proc.poll() is not None or any(
            path.stat().st_size for path in out.glob(".train.jsonl.*.tmp")),
            timeout=120, what="the import to write its first positions")
        assert proc.poll() is None, "the import finished before it could be interrupted"

    proc, _, err = interrupt([INV, "data.import-pgn", str(big), "--out", str(out), "--workers",
                              workers], writing, sig=signal.SIGTERM, env=child_environ())
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"interrupted: the import into {out} stopped before it finished" in err
    assert not list(out.glob(".*.tmp")) and not (out / "train.jsonl").exists()


def test_a_pgn_that_is_a_fifo_is_named_as_such(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "games.pgn"
    os.mkfifo(fifo)
    with pytest.raises(ImportProblem, match="not a regular file"):
        run_import([str(fifo)], tmp_path / "out", Options(), False)


def test_binary_data_is_refused_as_not_pgn_text(pgn: Path, tmp_path: Path) -> None:
    """200 KB of random bytes once imported as '3 of 17 games'; a PGN with a few bytes
    that are not UTF-8 (a Latin-1 name) is still read."""
    noise = tmp_path / "noise.pgn"
    noise.write_bytes(random.Random(3).randbytes(200_000))
    with pytest.raises(ImportProblem, match="not PGN text"):
        run_import([str(noise)], tmp_path / "out", Options(), False)
    latin = tmp_path / "latin.pgn"
    latin.write_bytes(pgn.read_bytes().replace(b'"w1"', b'"Ren\\xe9"', 1))
    report = run_import([str(latin)], tmp_path / "out2", Options(), False)
    assert report["games_kept"] > 0
    # UTF-16 (Windows "Unicode", with or without its byte-order mark, either byte order)
    # was refused as binary data, with a remedy about compressed files.
    import gzip

    text = pgn.read_text()
    for encoding, named in (("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"),
                            ("utf-16-be", "UTF-16BE")):
        wide = tmp_path / f"my {encoding}.pgn"  # a space: the command quotes the paths
        wide.write_bytes(text.encode(encoding))
        with pytest.raises(ImportProblem) as refused:
            run_import([str(wide)], tmp_path / "out3", Options(), False)
        assert refused.value.args[0] == f"{wide}: {named} text, where PGN is read as UTF-8"
        assert refused.value.remedy == (f"convert it: iconv -f {named} -t UTF-8 '{wide}' > "
                                        f"'{tmp_path / f'my {encoding}-utf8.pgn'}'")
    # Compressed, it is converted as it is read (iconv of the .gz failed).
    packed = tmp_path / "games.pgn.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-16")))
    with pytest.raises(ImportProblem) as refused:
        run_import([str(packed)], tmp_path / "out4", Options(), False)
    assert refused.value.remedy == (f"convert it: gzip -dc {packed} | iconv -f UTF-16 -t "
                                    f"UTF-8 > {tmp_path / 'games-utf8.pgn'}")
    # Zeros (a download that failed) are binary data, not UTF-16 text.
    zeros = tmp_path / "zeros.pgn"
    zeros.write_bytes(bytes(4096))
    with pytest.raises(ImportProblem) as refused:
        run_import([str(zeros)], tmp_path / "out5", Options(), False)
    assert "binary data" in refused.value.args[0]
