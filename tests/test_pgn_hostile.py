"""data.import-pgn / data.encode on PGN written by real tools and on hostile inputs (issue 18):
null moves, byte-order marks, wrapped comments, headers-only games, variants, one file under
two spellings, a broken or hanging engine, an --out that cannot be written, a killed import,
a --cache-dir that is a file, and the remedies the data tasks suggest. Real python-chess, real
stockfish (Debian's), real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import chess
import pytest
from invoke import Context
from invoke.exceptions import Exit

from chessbot.pgn_import import ImportProblem, Options, process_game, run_import, split_games
from podcycle import dataset
from podcycle.errors import ConfigError, DatasetError
from tests.conftest import ROOT, eventually, run_inv

REAL = ROOT / "tests" / "data" / "pgn_real"


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "val")
            for line in (folder / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def _assert_every_row_legal(folder: Path) -> None:
    rows = _rows(folder)
    assert rows
    for row in rows:
        board = chess.Board(row["fen"])
        assert board.is_valid(), row
        assert chess.Move.from_uci(row["move"]) in board.legal_moves, row
    dataset.stats(folder, workers=1)  # what `inv data.stats` runs: must accept the import


def _game(moves: str, result: str = "*", **tags: str) -> str:
    head = {"Event": "t", "Result": result, **tags}
    return "".join(f'[{k} "{v}"]\n' for k, v in head.items()) + f"\n{moves} {result}\n\n"


def _split(text: str) -> list[str]:
    import io

    return [game for _, game in split_games(io.StringIO(text))]


# -- PGN as real tools write it --------------------------------------------------------------

def test_null_moves_make_no_rows_and_a_null_move_in_check_no_impossible_row(tmp_path: Path
                                                                            ) -> None:
    text = (_game("1. e4 e5 2. Z0 Nf6 3. -- Nc6 4. Nf3 d6")
            + _game("1. e4 f5 2. Qh5+ Z0 3. Qxf5 g6 4. Qe5 Nf6"))  # black "passes" in check
    (tmp_path / "nulls.pgn").write_text(text)
    report = run_import([str(tmp_path / "nulls.pgn")], tmp_path / "ds",
                        Options(workers=1, val_fraction=0.5, seed=3))
    rows = _rows(tmp_path / "ds")
    assert all(row["move"] != "0000" for row in rows)
    _assert_every_row_legal(tmp_path / "ds")
    assert report["games_kept"] == 2 and not report["skipped_by_reason"]
    assert report["positions_dropped"] == {"null move": 3, "impossible position": 1}
    # After the null move in check, the position (white to move, black in check) is dropped;
    # the next one (black to move, in check) is legal again and kept.
    assert any(row["fen"].startswith("rnbqkbnr/ppppp2p/6p1/5Q2/4P3") for row in rows)


def test_a_byte_order_mark_is_not_a_malformed_game(tmp_path: Path) -> None:
    (tmp_path / "bom.pgn").write_text("\ufeff" + _game("1. e4 e5") + "\ufeff" + _game("1. d4 d5"))
    report = run_import([str(tmp_path / "bom.pgn")], tmp_path / "ds",
                        Options(workers=1, val_fraction=0.5, seed=2))
    assert report["games_read"] == 2 and report["games_kept"] == 2
    assert not report["skipped_by_reason"]


def test_a_wrapped_comment_line_that_starts_with_a_bracket_stays_in_its_game() -> None:
    text = _game("1. e4 { [%eval 0.2]\n[%clk 0:03:00] } 1... e5 { a note\n\n[with a blank line] }"
                 " 2. Nf3") + _game("1. d4 d5")
    games = _split(text)
    assert len(games) == 2
    status, _, lines, _, _ = process_game(Options(), 0, games[0])
    assert status == "kept" and len(lines) == 3


def test_a_headers_only_game_does_not_swallow_the_next_game(tmp_path: Path) -> None:
    only_headers = '[Event "adjourned"]\n[FEN "8/8/4k3/8/8/4K3/4P3/8 w - - 0 1"]\n[SetUp "1"]\n\n'
    text = only_headers + _game("1. e4 e5 2. Nf3") + only_headers + only_headers
    games = _split(text)
    assert len(games) == 4
    (tmp_path / "h.pgn").write_text(text + _game("1. d4 d5"))
    report = run_import([str(tmp_path / "h.pgn")], tmp_path / "ds",
                        Options(workers=1, val_fraction=0.5, seed=5))
    assert report["games_read"] == 5 and report["games_kept"] == 2
    assert not report["skipped_by_reason"]
    assert report["filtered_by_reason"] == {"no moves": 3}


def test_what_python_chess_reads_without_error_is_never_malformed() -> None:
    """A bad move inside a side line does not spoil the main line; a game without a result
    token is read, not called truncated; an unknown variant is filtered, not malformed."""
    cases = {
        "side line": _game("1. e4 e5 ( 1... Ke3 ) 2. Nf3"),
        "no result": '[Event "t"]\n\n1. e4 e5 2. Nf3\n\n',
        "unknown variant": _game("1. e4 e5", Variant="Fischerandom"),
        "result only": _game("", "1-0"),
    }
    expected = {"side line": "kept", "no result": "kept",
                "unknown variant": "filter:variant fischerandom", "result only": "filter:no moves"}
    for name, text in cases.items():
        assert process_game(Options(), 0, text)[0] == expected[name], name


def test_the_directory_of_pgn_written_by_real_tools(tmp_path: Path) -> None:
    """Done-when 4: lichess exports with [%clk]/[%eval], NAGs and variations, a BOM with CRLF
    and 80-column wrapping, ChessBase null moves, UCI-notation moves, variant games, a
    headers-only game, a game with a result and no moves."""
    report = run_import([str(REAL / "*.pgn")], tmp_path / "ds",
                        Options(workers=2, val_fraction=0.2))
    assert report["skipped_by_reason"] == {}  # nothing clean is called malformed
    assert report["filtered_by_reason"] == {
        "variant chess960": 1, "variant crazyhouse": 1, "variant atomic": 1, "no moves": 3}
    assert report["games_read"] == 31 and report["games_kept"] == 25
    assert report["positions_dropped"]["null move"] == 5
    _assert_every_row_legal(tmp_path / "ds")
    # The "From Position" game was read from its FEN, the UCI-notation games were read.
    fens = {row["fen"] for row in _rows(tmp_path / "ds")}
    assert "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3" in fens


# -- the same file twice ---------------------------------------------------------------------

def test_the_same_pgn_under_two_spellings_or_a_copy_is_read_once(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    source = REAL / "lichess_blitz_evals.pgn"
    (folder / "x.pgn").write_bytes(source.read_bytes())
    (folder / "link.pgn").symlink_to(folder / "x.pgn")
    (folder / "copy.pgn").write_bytes(source.read_bytes())
    notes: list[str] = []
    spellings = [str(folder / "x.pgn"), f"{folder}/../a/./x.pgn", str(folder / "link.pgn"),
                 str(folder / "copy.pgn"), str(folder / "x.pgn")]
    report = run_import(spellings, tmp_path / "ds", Options(workers=1, val_fraction=0.3),
                        notice=notes.append)
    assert report["games_read"] == 8 and len(report["files"]) == 1
    assert len(notes) == 3 and all("read once" in note for note in notes)
    assert [entry["path"] for entry in report["inputs_ignored"]] == [
        str(Path(spellings[1])), spellings[2], spellings[3]]


def test_a_game_in_two_files_lands_in_one_split(tmp_path: Path) -> None:
    """The split is keyed by the game's moves, so the same game met twice (two databases, a
    .pgn and its .pgn.gz) cannot sit in train and in val."""
    import gzip

    source = (REAL / "lichess_blitz_evals.pgn").read_bytes()
    (tmp_path / "x.pgn").write_bytes(source)
    (tmp_path / "x.pgn.gz").write_bytes(gzip.compress(source))
    run_import([str(tmp_path / "x.pgn"), str(tmp_path / "x.pgn.gz")], tmp_path / "ds",
               Options(workers=1, val_fraction=0.4))
    train = {(r["fen"], r["move"]) for r in _rows_of(tmp_path / "ds", "train")}
    val = {(r["fen"], r["move"]) for r in _rows_of(tmp_path / "ds", "val")}
    assert val and train and not train & val


def _rows_of(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


# -- the engine ------------------------------------------------------------------------------

@pytest.fixture
def broken_stockfish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    engine = folder / "stockfish"
    engine.write_text("#!/bin/sh\n" + request.param)
    engine.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return engine


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, remedy", [
    (lambda d: d / "missing.pgn", "pass PGN text files with --pgn"),
    (lambda d: d / "*.none.pgn", "quote a glob"),
    (lambda d: written(d / "empty.pgn", b""), "hold PGN games"),
    (lambda d: written(d / "b.pgn", bytes(range(256)) * 8), ".gz or .zst"),
])
def test_a_refused_input_says_what_to_do(tmp_path: Path, make, remedy: str) -> None:
    # Each of these said only what was wrong (data.import-pgn printed no remedy line).
    with pytest.raises(ImportProblem) as err:
        run_import([str(make(tmp_path))], tmp_path / "ds", Options(label="played", workers=1))
    assert remedy in err.value.remedy


@pytest.mark.parametrize("broken_stockfish", [
    "exit 1\n",
    "echo 'Segmentation fault'; echo garbage; exit 0\n",
    "read line; echo 'id name nothing'; exit 3\n",
], indirect=True)
def test_a_broken_stockfish_first_on_path_is_one_clear_refusal(broken_stockfish: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ImportProblem) as err:
        run_import([str(REAL / "uci_notation.pgn")], tmp_path / "ds",
                   Options(label="stockfish", depth=1, workers=1))
    text = str(err.value)
    assert str(broken_stockfish) in text and "--label stockfish" in text
    assert len(text.splitlines()) <= 2
    assert not (tmp_path / "ds").exists()  # refused before anything was created


@pytest.mark.slow
def test_stockfish_labels_with_one_worker_exit(tmp_path: Path) -> None:
    """The engine's thread used to keep the interpreter alive after the dataset was written."""
    made = run_inv("data.import-pgn", str(REAL / "uci_notation.pgn"), "--out",
                   str(tmp_path / "ds"), "--label", "stockfish", "--depth", "1", "--workers",
                   "1", "--val-fraction", "0.5", timeout=300)
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "ds" / "import_report.json").read_text())["label"] == \
        "stockfish depth 1"
    _assert_every_row_legal(tmp_path / "ds")


# -- where the files go ----------------------------------------------------------------------

def test_an_out_under_a_file_or_unwritable_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    if os.geteuid() == 0:  # root writes anywhere a mode allows: use a filesystem that refuses
        unwritable = Path("/sys/pgn-import-test/ds")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        unwritable = tmp_path / "ro" / "ds"
    for out in (tmp_path / "file" / "sub", tmp_path / "file", unwritable):
        with pytest.raises(ImportProblem) as err:
            run_import([str(REAL / "uci_notation.pgn")], out, Options(workers=1))
        assert f"--out {out}" in str(err.value), str(err.value)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_the_task_names_the_flag_without_a_traceback(tmp_path: Path) -> None:
    from tasks.data import import_pgn

    (tmp_path / "file").write_text("x")
    with pytest.raises(Exit) as err:
        import_pgn(Context(), str(REAL / "uci_notation.pgn"), out=str(tmp_path / "file" / "sub"))
    assert err.value.code == 2 and "--out" in str(err.value.message)


def test_an_import_report_that_cannot_be_written_keeps_the_old_dataset(
        tmp_path: Path, monkeypatch) -> None:
    """The report is written last: its close failing for want of room (here /dev/full in
    its place) came after train and val had replaced the old dataset, and "nothing was
    kept" was said. Every file is written out before anything is renamed."""
    import chessbot.pgn_import as pgn_import

    out = tmp_path / "ds"
    run_import([str(REAL / "lichess_blitz_evals.pgn")], out, Options(workers=1))
    before = {name: (out / name).read_bytes() for name in ("train.jsonl", "val.jsonl")}
    real = pgn_import._locked
    monkeypatch.setattr(pgn_import, "_locked", lambda path: open("/dev/full", "w")  # noqa: SIM115
                        if path.name.startswith(".import_report") else real(path))
    with pytest.raises(ImportProblem, match="the dataset could not be written"):
        run_import([str(REAL / "uci_notation.pgn")], out, Options(workers=1, val_fraction=0.5),
                   overwrite=True)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["import_report.json", "train.jsonl",
                                                     "val.jsonl"]


def test_the_next_steps_hint_can_be_pasted_for_an_out_with_a_space(tmp_path: Path,
                                                                   capsys) -> None:
    from tasks.data import import_pgn

    out = tmp_path / "my imports"
    import_pgn(Context(), str(REAL / "uci_notation.pgn"), out=str(out), workers=1,
               val_fraction=0.5)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"next: inv data.stats '{out}'   then: inv cycle.full-smoke --dataset-dir '{out}'")


@pytest.mark.slow
def test_a_killed_import_leaves_nothing_the_next_import_trips_on(tmp_path: Path) -> None:
    big = tmp_path / "big.pgn"
    big.write_text((REAL / "lichess_blitz_evals.pgn").read_text() * 400)
    out = tmp_path / "ds"
    importer = subprocess.Popen([sys.executable, "-m", "chessbot.pgn_import", str(big),
                                 "--out", str(out), "--workers", "1"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: out.is_dir() and any(p.name.startswith(".") for p in out.iterdir()),
                   what="the import's temporary files")
        importer.send_signal(signal.SIGKILL)
    finally:
        importer.wait(timeout=60)
    assert importer.returncode == -signal.SIGKILL
    assert list(out.iterdir()) and not list(out.glob("*.jsonl"))  # hidden files only
    notes: list[str] = []
    small = REAL / "lichess_blitz_evals.pgn"
    run_import([str(small)], out, Options(workers=1, val_fraction=0.3), notice=notes.append)
    assert any("interrupted import" in note for note in notes)
    assert sorted(p.name for p in out.iterdir()) == [
        "import_report.json", "train.jsonl", "val.jsonl"]
    (out / ".val.jsonl.999999999.tmp").write_text("stale")  # another one, then --overwrite
    run_import([str(small)], out, Options(workers=1, val_fraction=0.3, seed=5), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "import_report.json", "train.jsonl", "val.jsonl"]


def test_an_out_that_cannot_take_the_dataset_is_named_and_left_clean(tmp_path: Path) -> None:
    """A full --out disk, or a file-size limit (here a real one: ulimit -f 16 KiB), failed
    the import as "the PGN cannot be read past game 19; is the file complete?", blaming a
    sound input; and the failed close left its .tmp files, keeping the disk full."""
    script = ("import resource, sys\nfrom pathlib import Path\n"
              "from chessbot.pgn_import import ImportProblem, Options, run_import\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))\n"
              "try:\n    run_import([sys.argv[1]], Path(sys.argv[2]), Options(workers=1))\n"
              "except ImportProblem as e:\n    print(e)\n    print(e.remedy)\n")
    out = tmp_path / "ds"
    done = subprocess.run([sys.executable, "-c", script, str(REAL / "*.pgn"), str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"--out {out}: the dataset could not be written (File too large); nothing was kept",
        "free space there (or raise the file-size limit, ulimit -f), or choose another --out"]
    assert not out.exists()  # the folder it made, with no .tmp file left in it


def test_overwrite_refuses_a_folder_with_files_that_are_not_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ImportProblem, match="notes.txt"):
        run_import([str(REAL / "lichess_blitz_evals.pgn")], out, Options(workers=1),
                   overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_encode_cache_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from tasks.data import encode

    folder = tmp_path / "ds"
    run_import([str(REAL / "lichess_blitz_evals.pgn")], folder, Options(workers=1,
                                                                        val_fraction=0.3))
    (tmp_path / "cache").write_text("a file")
    with pytest.raises(ConfigError, match="--cache-dir"):
        dataset.encode(folder, tmp_path / "cache", workers=1)
    with pytest.raises(Exit) as err:
        encode(Context(), dataset_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    assert err.value.code == 2 and "--cache-dir" in str(err.value.message)
    assert (tmp_path / "cache").read_text() == "a file"


@pytest.mark.parametrize(("cache", "said"), [
    ("/sys/pod-cycle-cache", "--cache-dir /sys/pod-cycle-cache: /sys is not writable ("),
    ("FILE/sub", "--cache-dir {tmp}/cache/sub lies under a file ({tmp}/cache): the encodings "
                 "need a folder")])
def test_a_cache_dir_that_cannot_be_made_is_refused_naming_where(tmp_path: Path, cache: str,
                                                                  said: str) -> None:
    """Checked at the nearest folder that exists: /sys stands for one nobody may write into
    (root included), a file for one that can hold no folder."""
    (tmp_path / "cache").write_text("a file")
    cache = cache.replace("FILE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as err:
        dataset.check_cache_dir(Path(cache))
    assert err.value.message.startswith(said.format(tmp=tmp_path))


def test_a_refused_encode_leaves_no_cache_folder_it_made(tmp_path: Path) -> None:
    """data.encode of a dataset that is not UTF-8, with a new --cache-dir: refused, and the
    empty cache folder it had made was left behind. One that held a cache before stays."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(b'{"fen": "\xff\xfe"}\n')
    (folder / "val.jsonl").write_text('{"fen": "8/8/8/8/8/8/8/8 w - - 0 1", "move": "a1a2"}\n')
    fresh = tmp_path / "fresh-cache"
    with pytest.raises(DatasetError):
        dataset.encode(folder, fresh, workers=1)
    assert not fresh.exists()
    kept = tmp_path / "kept-cache"
    kept.mkdir()
    with pytest.raises(DatasetError):
        dataset.encode(folder, kept, workers=1)
    assert kept.is_dir()


def test_a_killed_encode_leaves_no_temporary_folder_behind(tmp_path: Path) -> None:
    """A temporary encoding folder left by a killed encode (a pid no longer running) is
    removed by the next encode into the same cache."""
    folder = tmp_path / "ds"
    run_import([str(REAL / "lichess_blitz_evals.pgn")], folder, Options(workers=1,
                                                                        val_fraction=0.3))
    cache = tmp_path / "cache"
    stale = cache / ".0123456789abcdef01234567.v1.999999999.tmp"
    stale.mkdir(parents=True)
    (stale / "rows.bin").write_bytes(b"\0" * 1000)
    dataset.encode(folder, cache, workers=1)
    assert not stale.exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


# -- what the tasks say ----------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["ds\nx", "ds\x1b[31m", "ds\tx"])
def test_an_out_path_with_a_control_character_is_refused_before_the_import(
        tmp_path: Path, bad: str) -> None:
    """--out with a line break or an escape imported, exit 0, printed a `wrote` line broken
    (or coloured) by it, and named a dataset every later check refuses (data.stats: "the
    folder's name holds a control character")."""
    from tasks.data import import_pgn

    with pytest.raises(Exit) as err:
        import_pgn(Context(), str(REAL / "lichess_blitz_evals.pgn"),
                   out=str(tmp_path / bad), workers="1")
    message = str(err.value.message)
    assert "holds a control character" in message and "--out" in message
    assert not any(ch in message.splitlines()[0] for ch in "\x1b\t")
    assert list(tmp_path.iterdir()) == []


def test_flags_that_would_change_nothing_are_said(tmp_path: Path, capsys) -> None:
    """`--time-control ,` kept every game as if no filter were given, and `--depth 3`
    without `--label stockfish` was taken without a word: neither did anything."""
    from tasks.data import import_pgn

    with pytest.raises(Exit) as err:
        import_pgn(Context(), str(REAL / "odd_games.pgn"), out=str(tmp_path / "tc"),
                   time_control=" , ")
    assert "--time-control ' , ' names no speed" in str(err.value.message)
    assert not (tmp_path / "tc").exists()
    import_pgn(Context(), str(REAL / "odd_games.pgn"), out=str(tmp_path / "ds"),
               val_fraction="0.5", workers="1", depth="3")
    assert "warning: --depth is stockfish's search depth, and --label is 'played'" in \
        capsys.readouterr().err


def test_a_depth_out_of_range_is_refused_before_any_note(tmp_path: Path, capsys) -> None:
    """`--depth 41` (label played) printed the "--depth changes nothing" warning, then the
    refusal of 41: the note was about a value that was never taken."""
    from tasks.data import import_pgn

    with pytest.raises(Exit) as err:
        import_pgn(Context(), str(REAL / "odd_games.pgn"), out=str(tmp_path / "ds"),
                   depth="41")
    assert "--depth" in str(err.value.message) and "40" in str(err.value.message)
    assert "warning" not in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


@pytest.mark.slow
def test_stockfish_labels_of_null_move_games_print_no_engine_chatter(tmp_path: Path) -> None:
    """python-chess logs "Not transmitting history with null moves to UCI engine" for each
    position after a null move (`--`) it sends to stockfish: those lines reached the
    terminal, once per position, in the middle of the import's own."""
    games = tmp_path / "null.pgn"
    games.write_text("".join(f'[Event "g{i}"]\n[Result "*"]\n\n1. e4 e5 2. -- Nc6 3. Nf3 '
                             f'Nf6 4. {last} *\n\n'
                             for i, last in enumerate(["a3", "a4", "b3", "b4", "c3", "c4",
                                                       "d3", "d4", "g3", "g4", "h3", "h4"])))
    made = run_inv("data.import-pgn", str(games), "--out", str(tmp_path / "ds"), "--label",
                   "stockfish", "--depth", "1", "--workers", "1", "--val-fraction", "0.5",
                   timeout=300)
    assert made.returncode == 0, made.stderr
    assert "Not transmitting" not in made.stderr + made.stdout, made.stderr


def test_skip_plies_is_not_blamed_when_it_is_zero(tmp_path: Path, capsys) -> None:
    from tasks.data import import_pgn

    import_pgn(Context(), str(REAL / "odd_games.pgn"), out=str(tmp_path / "ds"),
               val_fraction="0.5", workers="1")
    printed = capsys.readouterr().out
    assert "skip-plies" not in printed and "filtered 3 (no moves)" in printed


@pytest.mark.parametrize("flag", ["depth", "min_elo", "max_games", "skip_plies", "val_fraction",
                                  "seed", "workers"])
def test_each_remedy_suggests_a_value_the_import_accepts(flag: str, tmp_path: Path) -> None:
    from tasks.data import import_pgn

    rated = re.sub(r'(White|Black)Elo "\d+"', r'\1Elo "2000"',
                   (REAL / "lichess_blitz_evals.pgn").read_text())
    (tmp_path / "rated.pgn").write_text(rated)
    pgn = str(tmp_path / "rated.pgn")
    with pytest.raises(Exit) as err:
        import_pgn(Context(), pgn, out=str(tmp_path / "refused"), **{flag: "nonsense"})
    suggested = re.search(r"e\.g\. --[\w-]+ (\S+)", str(err.value.message))
    assert suggested, err.value.message
    value = suggested.group(1)
    settings = {"val_fraction": "0.3", "workers": "1", flag: value}
    import_pgn(Context(), pgn, out=str(tmp_path / "ok"), **settings)
    assert (tmp_path / "ok" / "train.jsonl").is_file()


def test_a_symlink_loop_or_dangling_link_is_named_as_such(tmp_path: Path) -> None:
    """A symbolic link in a loop (or to nothing) was refused as `no such file`, though the
    file the user named is right there: the link is what is wrong."""
    loop = tmp_path / "loop.pgn"
    loop.symlink_to(loop)
    dangling = tmp_path / "gone.pgn"
    dangling.symlink_to(tmp_path / "moved-away.pgn")
    for link in (loop, dangling):
        with pytest.raises(ImportProblem) as refused:
            run_import([str(link)], tmp_path / "ds", Options(workers=1))
        assert str(refused.value).startswith(f"{link}: a symbolic link that leads to no file")
    with pytest.raises(ImportProblem, match="no such file"):
        run_import([str(tmp_path / "absent.pgn")], tmp_path / "ds", Options(workers=1))


def test_a_folder_given_as_pgn_and_a_jsonl_with_a_bom_get_a_remedy(tmp_path: Path) -> None:
    with pytest.raises(ImportProblem, match=r"is a folder: pass the files in it"):
        run_import([str(REAL)], tmp_path / "ds", Options(workers=1))
    folder = tmp_path / "bom"
    folder.mkdir()
    line = json.dumps({"fen": chess.STARTING_FEN, "move": "e2e4"}) + "\n"
    (folder / "train.jsonl").write_text("\ufeff" + line)  # as Notepad saves UTF-8
    (folder / "val.jsonl").write_text(line)
    with pytest.raises(dataset.DatasetError, match="byte-order mark"):
        dataset.validate(folder)


def test_stats_read_a_hostile_import_report_and_odd_game_ids(tmp_path: Path, capsys) -> None:
    """data.stats on a dataset whose files were edited or came from elsewhere: an
    import_report.json that is a list was an AttributeError, a row whose game is a list a
    TypeError, and a label with escape sequences drove the terminal."""
    from tasks import data as data_tasks

    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [json.loads(line) for line in
            (ROOT / "data" / "dataset" / "_smoke_runpod" / "val.jsonl").read_text()
            .splitlines()[:40]]
    for split, part in (("train", rows[:30]), ("val", rows[30:])):
        with open(folder / f"{split}.jsonl", "w") as out:
            for i, row in enumerate(part):
                out.write(json.dumps({**row, "game": [i, 1] if i % 2 else f"g{i}"}) + "\n")
    (folder / "import_report.json").write_text("[1, 2]")
    assert dataset.stats(folder, workers=1)["label_source"].startswith("unknown")
    (folder / "import_report.json").write_text(json.dumps({"label": "played\x1b]0;owned\x07"}))
    data_tasks.stats(Context(), str(folder))
    out = capsys.readouterr().out
    assert "labels        played\\x1b]0;owned\\x07" in out and "\x1b" not in out


@pytest.mark.parametrize("name", ["games, 2024.pgn", "g[1].pgn", "what?.pgn"])
def test_a_pgn_file_named_like_a_list_or_a_glob_is_that_file(tmp_path: Path,
                                                              name: str) -> None:
    """`inv data.import-pgn "games, 2024.pgn"` looked for `games` and ` 2024.pgn`, and
    `g[1].pgn` was taken as a glob matching `g1.pgn`: "no such file", "no file matches"."""
    from chessbot.pgn_import import expand_inputs, split_inputs

    source = ROOT / "tests" / "data" / "pgn_real" / "odd_games.pgn"
    (tmp_path / name).write_bytes(source.read_bytes())
    given = str(tmp_path / name)
    assert split_inputs(given) == [given]
    assert expand_inputs(split_inputs(given)) == [tmp_path / name]
    # A list stays a list, and a glob a glob, when no file has the whole name.
    assert split_inputs(f"{tmp_path}/a.pgn, {tmp_path}/b.pgn") == [f"{tmp_path}/a.pgn",
                                                                   f"{tmp_path}/b.pgn"]
    assert expand_inputs([f"{tmp_path}/*.pgn"]) == [tmp_path / name]
