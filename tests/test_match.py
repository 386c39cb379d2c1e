"""Matches: real engine processes (chessbot.uci, stockfish, small misbehaving UCI engines in
tests/fake_uci_engine.py), game pairs, adjudication, PGN, SPRT stop, Ctrl-C, and the flag
checks that refuse bad input before any engine starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import chess.engine
import chess.pgn
import pytest

from podcycle.errors import ConfigError, PodCycleError
from podcycle.local.procs import alive
from podcycle.match import (
    EngineFailure,
    EngineSpec,
    GameResult,
    MatchConfig,
    MatchResult,
    Rules,
    UciPlayer,
    format_summary,
    load_openings,
    model_spec,
    parse_opponent,
    parse_tc,
    prepare,
    run_match,
    strength_line,
)
from tests.conftest import INV, ROOT, child_environ, cmdline_of, eventually
from tests.test_uci import make_model

FAKE = Path(__file__).with_name("fake_uci_engine.py")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("match-model") / "model.pt", seed=5)


def fake(mode: str, pidfile: Path | None = None) -> str:
    return f"uci:{sys.executable} {FAKE} {mode}" + (f" {pidfile}" if pidfile else "")


def read_games(pgn: Path) -> list[chess.pgn.Game]:
    games = []
    with open(pgn) as handle:
        while (game := chess.pgn.read_game(handle)) is not None:
            games.append(game)
    return games


def config(tmp_path: Path, games: int = 2, **rules: object) -> MatchConfig:
    return MatchConfig(games=games, openings=load_openings(ROOT / "config" / "openings.epd"),
                       tc=parse_tc("nodes=1"),
                       rules=Rules(**{"max_moves": 40, "move_timeout": 2.0, **rules}),
                       pgn=tmp_path / "games.pgn")


def test_shipped_opening_book_is_legal_and_balanced() -> None:
    openings = load_openings(ROOT / "config" / "openings.epd")
    assert len(openings) >= 16
    assert len({o.board.board_fen() for o in openings}) == len(openings)
    for opening in openings:
        assert opening.board.is_valid() and not opening.board.is_game_over()
        assert opening.name[:1].isalpha() and opening.name[1:3].isdigit()  # ECO code first
        # Balanced: no side is a piece up.
        values = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5,
                  chess.QUEEN: 9}
        white = sum(v * len(opening.board.pieces(p, chess.WHITE)) for p, v in values.items())
        black = sum(v * len(opening.board.pieces(p, chess.BLACK)) for p, v in values.items())
        assert abs(white - black) <= 1, opening.name


def book_refusal(path: Path, text: str) -> str:
    """The refusal of an opening book holding `text`."""
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_openings(path)
    return refused.value.message


def test_pgn_and_bad_opening_books(tmp_path: Path) -> None:
    book = tmp_path / "book.pgn"
    book.write_text('[Opening "Ruy"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5 *\n\n'
                    '[ECO "B20"]\n\n1. e4 c5 *\n')
    openings = load_openings(book)
    assert [o.name for o in openings] == ["Ruy", "B20"]
    assert len(openings[0].board.move_stack) == 5
    broken = tmp_path / "broken.epd"
    broken.write_text("rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq -\nnot an epd\n")
    with pytest.raises(ConfigError, match="broken.epd:2"):
        load_openings(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_openings(tmp_path / "missing.epd")
    # Any text reads as PGN to python-chess: words as a game of no moves (played from the
    # start as an "opening"), a TOML comment's `--` as a null move.
    words = tmp_path / "words.pgn"
    assert book_refusal(words, "this is not a chess file at all\n") == (
        f"{words}: game 1 holds no moves and no FEN: not a PGN opening book")
    nulls = tmp_path / "nulls.pgn"
    nulls.write_text("1. e4 -- 2. d4 *\n")
    with pytest.raises(ConfigError, match="holds a null move"):
        load_openings(nulls)
    fen = tmp_path / "fen.pgn"  # a position with no moves, given by its FEN: an opening
    fen.write_text('[SetUp "1"]\n[FEN "rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - '
                   '0 1"]\n\n*\n')
    assert load_openings(fen)[0].board.fen().startswith("rnbqkbnr/pppppppp/8/8/4P3")
    # A book of a chess variant: every game was scored as the model's illegal move (the
    # engines are never told the variant), exit 0, W 0 D 0 L 2.
    atomic = tmp_path / "atomic.pgn"
    assert book_refusal(atomic, '[Variant "Atomic"]\n[Opening "Atomic line"]\n\n1. e4 d5 *\n'
                        ) == (f"{atomic}: game 1 is of the variant 'Atomic': the engines play "
                              "standard chess only")
    for name in ("Standard", "Classical", "From Position"):  # python-chess's names of chess
        standard = tmp_path / "standard.pgn"
        standard.write_text(f'[Variant "{name}"]\n\n1. e4 e5 *\n')
        assert len(load_openings(standard)) == 1, name
    chess960 = tmp_path / "960.pgn"  # the engines are not told UCI_Chess960
    chess960.write_text('[Variant "Chess960"]\n\n1. e4 e5 *\n')
    with pytest.raises(ConfigError, match="variant 'Chess960'"):
        load_openings(chess960)


@pytest.mark.parametrize(("flags", "message"), [
    ({"games": 3}, "--games must be even"),
    ({"games": "x"}, "--games must be an integer"),
    ({"tc": "fast"}, "--tc 'fast'"),
    ({"sprt": "elo0=5,elo1=1"}, "--sprt"),
    ({"resign": "700"}, "--resign"),
    ({"concurrency": 0}, "--concurrency"),
    # Two engine processes a game (the model's loads torch): 1000 ran the machine out of memory.
    ({"concurrency": 65}, "--concurrency must be at most 64"),
    ({"opponent": "stockfish:elo=99999"}, "outside the UCI_Elo range"),
    ({"opponent": "stockfish:skill=99"}, "outside the Skill Level range"),
    ({"opponent": "stockfish:speed=3"}, "elo=N, skill=N or depth=N"),
    ({"opponent": "model:/nonexistent/model.pt"}, "model file not found"),
    ({"opponent": "run:../etc"}, "invalid run id"),
    ({"opponent": "run:no-such-run"}, "no run 'no-such-run'"),
    ({"opponent": "uci:/nonexistent/engine"}, "not an executable"),
    ({"games": "100000000000000000000"}, "--games must be at most 1000000"),
    ({"opponent": "model:/tmp"}, "is a folder, not a model file"),
    ({"opponent": "chess-god"}, "not an opponent"),
    ({"model": None}, "--model PATH or --run RUN_ID"),
    ({"run_id": "r1"}, "--model and --run both name the model under test .*: give one, not "
                       "both"),
    ({"openings": "/nonexistent/book.epd"}, "opening book not found"),
    ({"openings": "/tmp"}, "opening book /tmp is a folder, not a file"),
    ({"openings": "/dev/zero"}, "opening book /dev/zero is not a regular file"),
    # A silent engine held the match for ever.
    ({"move_timeout": "1e308"}, "--move-timeout must be at most 3600"),
    # A folder or a FIFO for --pgn: the banner, then "Is a directory", or a hang for ever.
    ({"pgn": "/tmp"}, "--pgn /tmp is a folder"),
    ({"pgn": "/dev/null"}, "--pgn /dev/null is not a regular file"),
    ({"pgn": "/dev/null/m.pgn"}, "--pgn /dev/null/m.pgn cannot be used"),
    # A folder that cannot be made where os.access says yes (root): found once the games
    # were played, and told to "free space". (Not root: /proc cannot be written.)
    ({"pgn": "/proc/pod-cycle-x/m.pgn"},
     "its folder /proc/pod-cycle-x cannot be made|: /proc cannot be written"),
])
def test_bad_flags_are_refused_before_any_game(model_file: Path, tmp_path: Path, flags: dict,
                                               message: str) -> None:
    args = {"model": str(model_file), "run_id": None, "opponent": "random", "games": 4,
            "openings": None, "concurrency": 1, "tc": "nodes=1", "max_moves": 10,
            "resign": None, "draw": None, "move_timeout": 5, "sprt": None,
            "pgn": str(tmp_path / "m.pgn"), "seed": 1, "artifacts_dir": tmp_path / "runs"}
    args.update(flags)
    with pytest.raises(ConfigError, match=message) as caught:
        prepare(**args)
    assert caught.value.remedy
    assert not (tmp_path / "m.pgn").exists()


def test_a_pgn_file_that_exists_is_never_emptied(model_file: Path, tmp_path: Path) -> None:
    """A match writes a new PGN: --pgn naming the opening book, the model itself or last
    night's games emptied it, exit 0 (the model then failed to load as an engine)."""
    book = tmp_path / "book.pgn"
    book.write_text('[Event "x"]\n\n1. e4 e5 *\n')
    args = {"model": str(model_file), "run_id": None, "opponent": "random", "games": 4,
            "openings": str(book), "concurrency": 1, "tc": "nodes=1", "max_moves": 10,
            "resign": None, "draw": None, "move_timeout": 5, "sprt": None, "seed": 1,
            "artifacts_dir": tmp_path / "runs"}
    model = model_file.read_bytes()
    for target in (book, model_file):
        before = target.read_bytes()
        with pytest.raises(ConfigError, match="exists .* would replace it") as refused:
            prepare(**args, pgn=str(target))
        assert target.read_bytes() == before and "new file name" in refused.value.remedy
    assert model_file.read_bytes() == model
    (tmp_path / "empty.pgn").touch()  # an empty file holds nothing to lose
    assert prepare(**args, pgn=str(tmp_path / "empty.pgn"))[2].pgn == tmp_path / "empty.pgn"
    # A new folder: the match makes it, as it does for the default matches/ folder.
    fresh = tmp_path / "results" / "new" / "today.pgn"
    assert prepare(**args, pgn=str(fresh))[2].pgn == fresh


def test_a_helper_an_engine_started_ends_with_it() -> None:
    """An engine given as a wrapper script that starts a helper (`sleep 300 &`, then exec's
    the engine): the helper, in the engine's process group, outlived the match under init.
    Whatever the engine started is ended with it, and nothing else."""
    from types import SimpleNamespace

    from podcycle import match

    # The helper must really live on: `sleep 300 <a path>` (as this test had it) is an invalid
    # interval, so the helper died by itself at once, the test passed only when it caught
    # that instant, and then proved nothing.
    proc = subprocess.Popen(["bash", "-c", "sleep 300 & exec sleep 299"],
                            start_new_session=True)  # the engine leads its group (setpgrp)

    def helpers() -> list[int]:
        return [pid for pid in match._group_members(proc.pid) if pid != proc.pid]

    eventually(lambda: helpers(), what="the wrapper's helper to start")
    [helper] = helpers()
    outsider = subprocess.Popen(["sleep", "298"])  # not in the group: left alone

    def close() -> None:  # as the engine's quit does: the engine ends, its helper does not
        proc.kill()
        proc.wait()

    import concurrent.futures

    done = concurrent.futures.Future()
    done.set_result(0)
    engine = SimpleNamespace(transport=SimpleNamespace(get_pid=lambda: proc.pid),
                             close=close, returncode=done)
    try:
        match._kill(engine)
        assert not alive(helper) and outsider.poll() is None
    finally:
        outsider.kill()
        outsider.wait()
        if alive(helper):
            os.kill(helper, signal.SIGKILL)


def test_a_run_opponent_must_be_vouched_for_by_its_manifest(model_file: Path,
                                                            tmp_path: Path) -> None:
    """run:ID plays the run's collected model.pt only when the pod's manifest lists it with
    its sha256, as local-validate requires (it was read unchecked)."""
    import hashlib
    import shutil

    collected = tmp_path / "runs" / "r1" / "collected"
    (collected / "run_artifacts").mkdir(parents=True)
    shutil.copy(model_file, collected / "run_artifacts" / "model.pt")
    manifest = collected / "MANIFEST.sha256"
    manifest.write_text("")
    with pytest.raises(ConfigError, match="run r1: .*run_artifacts/model.pt is not in the "
                                          "manifest of the last collect") as unlisted:
        parse_opponent("run:r1", artifacts_dir=tmp_path / "runs")
    assert "inv cycle.train" in unlisted.value.remedy
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    manifest.write_text(f"{'0' * 64}  run_artifacts/model.pt\n")
    with pytest.raises(ConfigError, match="model.pt does not match its sha256"):
        parse_opponent("run:r1", artifacts_dir=tmp_path / "runs")
    manifest.write_text(f"{digest}  run_artifacts/model.pt\n")
    assert parse_opponent("run:r1", artifacts_dir=tmp_path / "runs").name == "chessbot:r1"



def test_an_interpreted_uci_engine_is_named_by_its_script() -> None:
    """`uci:python engine.py` was named "python" in every PGN, summary and runs.list."""
    assert parse_opponent(f"uci:{sys.executable} {FAKE} crash").name == "fake_uci_engine.py"
    assert parse_opponent(f"uci:{sys.executable} -u {FAKE}").name == "fake_uci_engine.py"
    from podcycle.match import engine_name

    assert engine_name(["/usr/bin/env", "python3", str(FAKE)]) == "fake_uci_engine.py"
    assert engine_name(["python3", "-W", "ignore", str(FAKE)]) == "fake_uci_engine.py"
    assert engine_name(["node", "--max-old-space-size", "4096", "bot.js"]) == "bot.js"
    assert engine_name(["/usr/games/stockfish"]) == "stockfish"


def test_stockfish_elo_range_is_read_from_the_binary() -> None:
    from podcycle.match import _declared_options, stockfish_binary

    declared = _declared_options([stockfish_binary()])["UCI_Elo"]
    inside = parse_opponent(f"stockfish:elo={declared.min}")
    assert inside.options["UCI_LimitStrength"] is True
    assert inside.options["UCI_Elo"] == declared.min
    with pytest.raises(ConfigError, match=f"{declared.min}..{declared.max}"):
        parse_opponent(f"stockfish:elo={declared.min - 1}")


def test_a_score_made_of_engine_failures_is_called_so_and_the_list_is_bounded(tmp_path
                                                                               ) -> None:
    """Games lost by a crash, a hang or an illegal move count as lost (as cutechess-cli scores
    them), so an Elo of +1200 over an opponent that crashes every game must not read as
    strength: the summary says how many games failed and whose, and lists at most 10."""
    games = [GameResult(i, i % 2 == 0, "1-0" if i % 2 == 0 else "0-1", "abandoned",
                        f"{'Black' if i % 2 == 0 else 'White'} loses: eng crashed (exit code 3)",
                        1, "C60", engine_failed=True) for i in range(22)]
    games += [GameResult(22, True, "0-1", "time forfeit", "White loses: model sent no move",
                         9, "C60", engine_failed=True),
              GameResult(23, False, "1/2-1/2", "normal", "draw by repetition", 40, "C60"),
              # A flag fall in a game played on is play, not a failure.
              GameResult(24, True, "0-1", "time forfeit", "White loses on time", 80, "C60"),
              GameResult(25, False, "1-0", "normal", "White mates", 31, "C60")]
    result = MatchResult("chessbot:m.pt", "eng", games, 26, tmp_path / "m.pgn", None)
    summary = result.summary()
    assert [f["loser"] for f in summary["failures"]] == ["opponent"] * 22 + ["model"]
    text = format_summary(summary)
    assert "warning: 23 of 26 games ended by an engine failure, not by play " \
           "(chessbot:m.pt 1, eng 22)" in text
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("  game ")] \
        == [f"  game {n}" for n in range(1, 11)]
    assert "... and 13 more (--json lists them all" in text
    clean = MatchResult("chessbot:m.pt", "eng", games[23:], 3, tmp_path / "m.pgn", None)
    assert "warning" not in format_summary(clean.summary())
    assert clean.summary()["failures"] == []
    # Every line that shows the result says it too (runs.show, the report, the summary).
    assert "(23 of 26 games ended by an engine failure, not by play; only 13 game pair(s)" \
        in strength_line(summary)


def test_too_few_pairs_for_the_interval_is_said_beside_it() -> None:
    """fishtest's pentanomial interval is made for hundreds of pairs: 4 pairs all won and
    drawn gave +190.6 ± 13.8 Elo, where W/D/L alone give ±189. Still shown, never bare."""
    summary = {"model": "m", "opponent": "random", "games": 8, "planned_games": 8,
               "interrupted": False, "wins": 4, "draws": 4, "losses": 0, "score": 0.75,
               "pentanomial": [0, 0, 0, 4, 0], "elo": 190.6, "elo_low": 176.7,
               "elo_high": 204.4, "failures": [], "pgn": "m.pgn"}
    assert strength_line(summary) == ("W 4 D 4 L 0 against random, Elo +190.6 ± 13.8 (only 4 "
                                      "game pair(s): too few for the interval to hold)")
    assert "note: only 4 game pair(s)" in format_summary(summary)
    many = dict(summary, pentanomial=[0, 0, 0, 40, 0], games=80)
    assert "pair" not in strength_line(many) and "note" not in format_summary(many)


def test_a_match_won_in_every_game_shows_the_interval_s_one_end(tmp_path) -> None:
    """20 pairs all won (the cycle's default opponent, random, is often beaten so): the
    summary said "Elo +1199.8 ± 128.3 (95% interval +1071.5 .. +1328.2)", fishtest's clamp,
    where those games prove about +277. Every line that shows the result says the one end."""
    from podcycle.history import RunRow, strength_text

    games = [GameResult(i, i % 2 == 0, "1-0" if i % 2 == 0 else "0-1", "checkmate",
                        "mate", 30, "C60") for i in range(40)]
    summary = MatchResult("chessbot:m.pt", "random", games, 40, tmp_path / "m.pgn",
                          None).summary()
    assert summary["score"] == 1 and summary["pentanomial"] == [0, 0, 0, 0, 20]
    assert summary["elo_low"] == 277.4 and summary["elo_high"] is None
    text = format_summary(summary)
    assert "  Elo > +277.4  (the 95% interval's low end: every game pair won, so it has no " \
           "upper end, pairs LL/LD/WL+DD/WD/WW [0, 0, 0, 0, 20])" in text, text
    assert "1199" not in text and "±" not in text
    assert strength_line(summary) == "W 40 D 0 L 0 against random, Elo > +277.4"
    row = RunRow(id="r", path="r", status="finished", elo=summary["elo"],
                 elo_low=summary["elo_low"], elo_high=None)
    assert strength_text(row) == ">+277"
    lost = dict(summary, elo=-summary["elo"], elo_low=None, elo_high=-277.4,
                pentanomial=[20, 0, 0, 0, 0], wins=0, losses=40)
    assert "Elo < -277.4  (the 95% interval's high end: every game pair lost, so it has no " \
           "lower end" in format_summary(lost)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "termination", "reason"), [
    ("crash", "abandoned", "crashed (exit code 3)"),
    ("hang", "time forfeit", "sent no move within"),
    ("illegal", "rules infraction", "illegal move"),
])
def test_a_failing_engine_loses_its_games_and_the_match_completes(
        model_file: Path, tmp_path: Path, mode: str, termination: str, reason: str) -> None:
    cfg = config(tmp_path, games=2, move_timeout=1.0)
    result = run_match(model_spec(model_file), parse_opponent(fake(mode)), cfg)
    summary = result.summary()
    assert (summary["wins"], summary["draws"], summary["losses"]) == (2, 0, 0)
    assert [f["termination"] for f in summary["failures"]] == [termination] * 2
    assert [f["loser"] for f in summary["failures"]] == ["opponent"] * 2
    assert all(reason in f["reason"] for f in summary["failures"])
    games = read_games(cfg.pgn)
    assert len(games) == 2
    for game in games:
        assert game.headers["Termination"] == termination
        assert reason in game.end().comment
        assert game.headers["Result"] == ("1-0" if game.headers["White"].startswith(
            "chessbot") else "0-1")
        assert {"White", "Black", "Opening", "Result", "Termination"} <= set(game.headers)


@pytest.mark.slow
def test_an_engine_that_says_what_python_chess_cannot_read_fills_no_terminal(
        model_file: Path, tmp_path: Path, caplog) -> None:
    """Hunt: an opponent that printed garbage beside its moves had python-chess log each
    line in full at every move (`Unexpected engine output: ...`, 4 MB of stderr for two
    games: with no handler set, Python writes such records to stderr), while its moves were
    played and scored as any engine's. (pytest's own handler takes the records here.)"""
    import logging

    caplog.set_level(logging.DEBUG, logger="pytest-never")  # records at every level, kept
    cfg = config(tmp_path, games=2)
    summary = run_match(model_spec(model_file), parse_opponent(fake("chatty")), cfg).summary()
    assert summary["wins"] + summary["draws"] + summary["losses"] == 2
    assert not summary["failures"]
    logged = [r for r in caplog.records if r.name.startswith("chess.engine")]
    assert not logged, logged[0].getMessage()[:300]


def test_the_hosts_pause_is_not_counted_as_an_engines_thinking_time() -> None:
    """A laptop asleep (or Ctrl-Z, SIGSTOP) while an engine thought: the pause counted
    against it, and a 15-s pause scored games as time forfeits ("sent no move within
    10.05s") though the engine had answered. A look that wakes far past its time counts
    as one look; an engine really silent still forfeits."""
    import concurrent.futures

    from podcycle.match import LOOK_EVERY, awaited

    future: concurrent.futures.Future = concurrent.futures.Future()
    times = iter([0.0, 0.1, 0.2, 15.2, 15.3, 15.35])  # the host paused between 0.2 and 15.2

    def clock() -> float:
        now = next(times)
        if now == 15.3:
            future.set_result("e2e4")  # the answer, there on waking
        return now

    assert awaited(future, 1.0, clock=clock) == ("e2e4", pytest.approx(0.35 + LOOK_EVERY))
    silent: concurrent.futures.Future = concurrent.futures.Future()
    ticks = iter([0.0, 0.5, 1.0, 1.5])
    with pytest.raises(TimeoutError):
        awaited(silent, 1.0, clock=lambda: next(ticks))
    assert silent.cancelled()


@pytest.mark.slow
def test_a_match_whose_host_was_stopped_mid_move_scores_no_forfeit(model_file: Path,
                                                                   tmp_path: Path) -> None:
    """A real pause: the opponent stops the eval.match process with SIGSTOP while it thinks;
    once the 1.05 s a move may take have gone by, it continues it and answers. The game is
    played on, not lost on time."""
    pgn, fifo = tmp_path / "games.pgn", tmp_path / "go-on"
    os.mkfifo(fifo)
    match = subprocess.Popen(
        [INV, "eval.match", "--model", str(model_file), "--opponent",
         fake("stop-host", fifo), "--games", "2", "--tc", "movetime=0.05", "--move-timeout",
         "1", "--max-moves", "10", "--pgn", str(pgn), "--json"], cwd=ROOT,
        env=child_environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: fifo.with_name("go-on.stopped").exists() or match.poll() is not None,
                   what="the engine to stop the match process")
        stopped = time.monotonic()
        eventually(lambda: time.monotonic() > stopped + 2.5, timeout=10,
                   what="the stopped match's move deadline to pass")
    finally:
        with open(os.open(fifo, os.O_RDWR), "w") as go_on:  # never blocks, even if no reader
            go_on.write("go on\n")
        out, err = match.communicate(timeout=300)
    assert match.returncode == 0, out[-2000:] + err[-2000:]
    summary = json.loads(out)
    assert summary["failures"] == [], summary["failures"]
    assert [g.headers["Termination"] for g in read_games(pgn)] == ["adjudication"] * 2


@pytest.mark.slow
def test_a_pgn_that_takes_no_writes_stops_the_match_naming_the_file(
        model_file: Path, tmp_path: Path) -> None:
    """The games' file failing mid-match (a full disk, a file that takes no writes, such as
    /proc/version): the refusal named an OSError and said to report it. It now names the
    game, the file and the cause, and says what to do."""
    cfg = config(tmp_path, games=4, max_moves=3)

    def replaced(line: str) -> None:  # after game 1: the file becomes a folder
        if line.startswith("game 1/"):
            cfg.pgn.unlink()
            cfg.pgn.mkdir()  # opened for appending: IsADirectoryError, as root too

    with pytest.raises(PodCycleError, match=r"the games could not be written to .*games\.pgn "
                       r"\(Is a directory\); the match stopped at game 2\n") as stopped:
        run_match(model_spec(model_file), parse_opponent("random"), cfg, progress=replaced)
    assert "give another file" in stopped.value.remedy
    with pytest.raises(PodCycleError, match=r"games\.pgn \(Is a directory\); the match "
                       r"stopped before the first game\n"):
        run_match(model_spec(model_file), parse_opponent("random"), cfg)


def test_an_engine_that_never_says_uciok_is_refused_in_its_two_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """`--opponent uci:cat`: the refusal's hint was followed by asyncio's child-watcher warning
    ("Loop ... that handles pid N is closed"), glued to it on stderr."""
    import logging

    from podcycle import match

    monkeypatch.setattr(match, "ENGINE_START_SECONDS", 1)
    pidfile = tmp_path / "pid"
    caplog.set_level(logging.WARNING)
    with pytest.raises(ConfigError, match="gave no uciok within 1 s"):
        parse_opponent(fake("mute", pidfile), probe=True)
    pid = int(pidfile.read_text())
    eventually(lambda: not alive(pid), what="the mute engine to be ended")
    # The watcher logs once it has reaped the engine: give its thread the moment it needs by
    # waiting on what it does (the zombie gone from the process table).
    eventually(lambda: not os.path.exists(f"/proc/{pid}"), what="the engine to be reaped")
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.records


@pytest.mark.slow
def test_resign_and_move_limit_adjudication(model_file: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, games=2, resign_cp=700, resign_moves=3)
    summary = run_match(model_spec(model_file), parse_opponent(fake("resigning")), cfg).summary()
    assert summary["wins"] == 2
    games = read_games(cfg.pgn)
    assert all(g.headers["Termination"] == "adjudication" and "resigns" in g.end().comment
               for g in games)
    cfg = config(tmp_path, games=2, max_moves=3)
    run_match(model_spec(model_file), parse_opponent("random"), cfg)
    games = read_games(cfg.pgn)
    assert all(g.headers["Result"] == "1/2-1/2" and "move limit" in g.end().comment
               for g in games if g.headers["Termination"] == "adjudication")


@pytest.mark.slow
def test_self_match_interval_contains_zero(model_file: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, games=6)
    cfg.concurrency = 2
    result = run_match(model_spec(model_file), parse_opponent(f"model:{model_file}"), cfg)
    summary = result.summary()
    assert summary["games"] == 6 and sum(summary["pentanomial"]) == 3
    assert summary["elo_low"] <= 0 <= summary["elo_high"]
    rounds = sorted(g.headers["Round"] for g in read_games(cfg.pgn))
    assert rounds == ["1.1", "1.2", "2.1", "2.2", "3.1", "3.2"]
    # Both games of a pair start from the same opening, colours swapped.
    by_round = {g.headers["Round"]: g for g in read_games(cfg.pgn)}
    for pair in "123":
        first, second = by_round[f"{pair}.1"], by_round[f"{pair}.2"]
        assert first.headers["Opening"] == second.headers["Opening"]
        assert first.headers["White"] == second.headers["Black"]


@pytest.mark.slow
def test_sprt_stops_the_match_once_it_decides(model_file: Path, tmp_path: Path) -> None:
    from podcycle.elo import Sprt

    cfg = config(tmp_path, games=40)
    cfg.sprt = Sprt(elo0=0, elo1=300)
    result = run_match(model_spec(model_file), parse_opponent(fake("crash")), cfg)
    summary = result.summary()
    assert summary["sprt"]["verdict"] == "H1" and summary["sprt"]["stopped_early"]
    assert summary["sprt"]["llr"] >= summary["sprt"]["upper"]
    assert summary["games"] < 40 and len(read_games(cfg.pgn)) == summary["games"]


@pytest.mark.slow
def test_stockfish_opponent_plays(model_file: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, games=2, max_moves=10)
    summary = run_match(model_spec(model_file), parse_opponent("stockfish:depth=1"),
                        cfg).summary()
    assert summary["games"] == 2 and not summary["failures"]
    assert {g.headers["Black"] for g in read_games(cfg.pgn)} >= {"stockfish depth=1"}


def _fake_running(pid: int, pidfile: Path) -> bool:
    """Whether the fake engine that wrote `pid` to `pidfile` still runs. Its command line must
    name that file: a busy suite starts more processes than pid_max (32768 here), so a pid
    may already belong to another process."""
    return alive(pid) and str(pidfile) in cmdline_of(pid)


def _engines_of(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd and "chessbot.uci" in cmd and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_match_and_every_engine_keeping_finished_games(
        model_file: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C, or SIGTERM (a kill, a cancelled CI job), alike."""
    pids = tmp_path / "pids"
    pgn = tmp_path / "match.pgn"
    env = child_environ()
    proc = subprocess.Popen(
        [INV, "eval.match", "--model", str(model_file), "--opponent",
         fake("hang-game-3", pids), "--games", "8", "--tc", "nodes=1", "--max-moves", "20",
         "--move-timeout", "600", "--pgn", str(pgn)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the progress lines are the events to wait on
            if line.startswith("game 2/8"):
                break
        else:
            raise AssertionError(f"the match ended early: {proc.wait()}")
        assert len(read_games(pgn)) == 2
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert len(read_games(pgn)) == 2  # the finished games, not the one cut short
    assert "2 games (of 8), interrupted" in out
    fakes = [int(p) for p in pids.read_text().split()]
    assert fakes and not [p for p in fakes if _fake_running(p, pids)]
    assert not _engines_of(str(model_file))


@pytest.mark.slow
def test_ctrl_c_returns_once_every_worker_has_killed_its_engines(tmp_path: Path) -> None:
    """Ctrl-C while the model's engine hangs on a move: the main thread kills that engine,
    and the worker, its game ended, races it to kill the opponent's. The match returns only
    once the worker is done (a Thread.join that Ctrl-C interrupts, on Python 3.11, let it
    return while the worker was still killing, and an engine outlived the match)."""
    model_pids, rival_pids = tmp_path / "model-pids", tmp_path / "rival-pids"
    model = EngineSpec(name="hangs", command=[sys.executable, str(FAKE), "hang-game-2",
                                              str(model_pids)])
    hung = Path(f"{model_pids}.hung")
    main = threading.main_thread().ident
    assert main is not None

    def ctrl_c_once_it_hangs() -> None:
        eventually(hung.exists, what="the model's engine to hang in game 2")
        signal.pthread_kill(main, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_it_hangs, daemon=True).start()
        result = run_match(model, parse_opponent(fake("random", rival_pids)),
                           config(tmp_path, games=4, move_timeout=600.0))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.interrupted and len(result.games) == 1
    assert not [t.name for t in threading.enumerate() if t.name.startswith("match-worker")]
    for pidfile in (model_pids, rival_pids):
        started = [int(p) for p in pidfile.read_text().split()]
        assert len(started) == 1 and not _fake_running(started[0], pidfile), pidfile.name


@pytest.mark.slow
def test_no_engine_starts_once_the_match_is_stopping(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C closes every player: a move already under way cannot start its engine again,
    and an engine whose start was under way is killed as it arrives, not left running."""
    pids = tmp_path / "pids"
    spec = parse_opponent(fake("random", pids))
    rules, tc = Rules(max_moves=40, move_timeout=5.0), parse_tc("nodes=1")
    closed = UciPlayer(spec)
    closed.close()
    with pytest.raises(EngineFailure, match="the match is stopping"):
        closed.move(chess.Board(), tc, {True: 0.0, False: 0.0}, rules)
    assert not pids.exists()  # nothing was started

    racing = UciPlayer(spec)
    real_popen = chess.engine.SimpleEngine.popen_uci

    def popen_then_ctrl_c(*args, **kwargs):  # the close lands while the engine starts
        engine = real_popen(*args, **kwargs)
        racing.close()
        return engine

    monkeypatch.setattr(chess.engine.SimpleEngine, "popen_uci", popen_then_ctrl_c)
    with pytest.raises(EngineFailure, match="the match is stopping"):
        racing.move(chess.Board(), tc, {True: 0.0, False: 0.0}, rules)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 1 and not _fake_running(started[0], pids)
    assert racing.engine is None


def test_the_strength_flags_name_themselves_in_their_errors(tmp_path: Path,
                                                           monkeypatch) -> None:
    from podcycle import match
    from podcycle.match import check_strength_flags

    with pytest.raises(ConfigError) as info:
        check_strength_flags("2", "stockfsh:elo=1400", tmp_path)
    assert info.value.message == "--strength-opponent 'stockfsh:elo=1400' is not an opponent"
    with pytest.raises(ConfigError) as info:
        check_strength_flags("2", "stockfish:level=3", tmp_path)
    assert info.value.render() == (
        "--strength-opponent 'stockfish:level=3': stockfish takes elo=N, skill=N or depth=N\n"
        "  → e.g. --strength-opponent stockfish:elo=1400")
    with pytest.raises(ConfigError) as info:
        parse_opponent("stockfsh:elo=1400")  # eval.match's own flag
    assert info.value.message.startswith("--opponent 'stockfsh")
    # An executable that is no UCI engine: the cycle played it only after a paid training.
    true = shutil.which("true")
    with pytest.raises(ConfigError) as info:
        check_strength_flags("2", f"uci:{true}", tmp_path)
    assert info.value.message.startswith(f"--strength-opponent uci:{true}: cannot start")
    assert "speaks UCI" in info.value.remedy
    # A program that runs and ends: python-chess's class name was the reason given.
    assert "it ended before answering 'uci'" in info.value.message
    assert "EngineTerminatedError" not in info.value.message
    stockfish = Path("/usr/games/stockfish")
    if stockfish.exists():  # a real UCI engine passes the same check
        assert check_strength_flags("2", f"uci:{stockfish}", tmp_path) == 2
    # One that hangs: the error was "cannot start sleep 1000: TimeoutError: " (no words).
    # Last, with its 1 s bound: a real engine on a busy machine may take longer to answer.
    monkeypatch.setattr(match, "ENGINE_START_SECONDS", 1)
    sleep = shutil.which("sleep")
    with pytest.raises(ConfigError) as info:
        check_strength_flags("2", f"uci:{sleep} 1000", tmp_path)
    assert info.value.message == (f"--strength-opponent uci:{sleep} 1000: {sleep} 1000 gave "
                                  "no uciok within 1 s: it hangs, or does not speak UCI")


def test_strength_games_are_bounded_as_a_matchs_games_are(tmp_path: Path) -> None:
    """--strength-games 100000000000 was taken: the cycle trained, then played for ever; an
    odd count past it was told "e.g. --strength-games 100000000000". Bounded as eval.match's
    --games, and the even count a remedy offers is one the bound takes."""
    from podcycle.match import MAX_GAMES, check_strength_flags

    assert check_strength_flags(str(MAX_GAMES), None, tmp_path) == MAX_GAMES
    with pytest.raises(ConfigError) as info:
        check_strength_flags(str(MAX_GAMES + 2), None, tmp_path)
    assert info.value.message == (f"--strength-games must be at most {MAX_GAMES}, got "
                                  f"'{MAX_GAMES + 2}'")
    with pytest.raises(ConfigError) as info:
        check_strength_flags("99999999999", None, tmp_path)
    assert "100000000000" not in info.value.render()
    with pytest.raises(ConfigError) as info:
        check_strength_flags("3", None, tmp_path)
    assert info.value.remedy == "e.g. --strength-games 4"
    # An opponent with no games to play against it was taken and dropped in silence.
    for games in (None, "0"):
        with pytest.raises(ConfigError) as info:
            check_strength_flags(games, "random", tmp_path)
        assert info.value.message == ("--strength-opponent random is used only with "
                                      "--strength-games N (the games to play against it)")


def test_an_engine_file_that_cannot_be_run_is_refused_before_any_game(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # There but not executable: before, each game was "played" as abandoned (an Elo of
    # +1130 on the progress lines) and the match ended on a PermissionError.
    engine = tmp_path / "engine.sh"
    engine.write_text("#!/bin/sh\necho uciok\n")
    engine.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        parse_opponent(f"uci:{engine}")
    assert info.value.message == (f"--opponent 'uci:{engine}': {engine} is not executable "
                                   "(no execute permission)")
    assert info.value.remedy == f"chmod +x {engine}"
    engine.chmod(0o755)
    assert parse_opponent(f"uci:{engine}").command == [str(engine)]
    monkeypatch.chdir(tmp_path)  # a bare name is looked up on PATH, as a shell would
    with pytest.raises(ConfigError) as info:
        parse_opponent("uci:engine.sh")
    assert info.value.message == "--opponent 'uci:engine.sh': engine.sh is not on PATH"
    assert info.value.remedy == "give its path: uci:./engine.sh"


def test_an_engine_path_with_a_space_left_unquoted_is_told_to_quote_it(tmp_path: Path) -> None:
    """`uci:COMMAND` is split as a shell splits it: an engine under "my engines" given bare
    was "not an executable" (its first word), with no word on why."""
    engine = tmp_path / "my engines" / "engine.sh"
    engine.parent.mkdir()
    engine.write_text("#!/bin/sh\necho uciok\n")
    engine.chmod(0o755)
    with pytest.raises(ConfigError) as info:
        parse_opponent(f"uci:{engine}")
    assert info.value.message == (f"--opponent 'uci:{engine}': {tmp_path}/my is not an "
                                  "executable (the command is split at spaces, as a shell "
                                  "splits it)")
    assert info.value.remedy == f"quote the engine's path: --opponent \"uci:'{engine}'\""
    assert parse_opponent(f"uci:'{engine}'").command == [str(engine)]
    with pytest.raises(ConfigError) as info:  # with arguments after the path
        parse_opponent(f"uci:{engine} --threads 1")
    assert info.value.remedy == (f"quote the engine's path: --opponent \"uci:'{engine}' "
                                 "--threads 1\"")
    assert parse_opponent(f"uci:'{engine}' --threads 1").command == [str(engine), "--threads",
                                                                       "1"]


@pytest.mark.timeout(30)  # on the old code it never ends
def test_pairs_are_counted_over_the_games_played_not_planned() -> None:
    """MatchResult.pairs runs after every game under the match's lock; it looped over the
    planned games, so --games 10^20 spun for good, deaf to Ctrl-C (now also refused)."""
    from podcycle.match import GameResult, MatchResult

    def game(index: int, result: str) -> GameResult:
        return GameResult(index, index % 2 == 0, result, "normal", "", 10, "start")

    played = MatchResult("m", "o", [game(3, "1-0"), game(0, "1-0"), game(1, "1-0"),
                                    game(4, "0-1")], planned=10**20, pgn=Path("m.pgn"),
                         sprt=None)
    assert played.pairs == [(1.0, 0.0)]  # pair 0 only: game 2 and 5 are not played


def test_a_file_that_is_no_model_is_refused_before_any_game(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    with pytest.raises(ConfigError) as info:
        model_spec(text)
    assert info.value.message.startswith(f"{text} is not a model: a chessbot model.pt is a "
                                         "PyTorch checkpoint")
    # A PyTorch file, but not a chessbot model: a cycle's strength match took it, and found
    # out after the training it paid for.
    import torch

    other = tmp_path / "tensors.pt"
    torch.save({"a": torch.zeros(2)}, other)
    with pytest.raises(ConfigError) as info:
        model_spec(other)
    assert "of a chessbot-policy-v1 model" in info.value.message
    # Given as an opponent (eval.match, a cycle's or a sweep's strength match), the hint
    # names the opponent's forms, not eval.match's --run.
    with pytest.raises(ConfigError) as info:
        parse_opponent(f"model:{tmp_path / 'gone.pt'}")
    assert info.value.remedy == ("pass the opponent as model:PATH to a model.pt (or "
                                 "run:RUN_ID of a finished run)")


@pytest.mark.slow
def test_a_match_no_engine_of_which_started_is_an_error_not_an_elo(tmp_path: Path) -> None:
    """A zip that looks like a checkpoint but is none passes the cheap check; its engine
    then never starts, and every game is abandoned: that is no result (before, it read as
    a lost match, an Elo and exit 0)."""
    import zipfile

    from podcycle.errors import PodCycleError

    fake_model = tmp_path / "model.pt"
    with zipfile.ZipFile(fake_model, "w") as archive:
        archive.writestr("model/data.pkl", b"chessbot-policy-v1, but not a pickle")
    cfg = config(tmp_path, games=20)
    with pytest.raises(PodCycleError) as info:
        run_match(model_spec(fake_model), parse_opponent("random"), cfg)
    # Stopped after two: an engine that failed to start twice is not waited for 18 times.
    assert info.value.message.startswith("no game was played: every one of the 2 was "
                                         "abandoned (")
    assert "did not start" in info.value.message
    assert info.value.remedy.startswith(f"run it by hand to see why: {sys.executable} -m "
                                        f"chessbot.uci --model {fake_model};")
    assert len(read_games(cfg.pgn)) == 2  # the PGN keeps each game's reason


def test_numbers_left_out_take_the_matchs_own_defaults(model_file: Path, tmp_path: Path) -> None:
    """eval.match passes None for a number not given: prepare fills MatchConfig's and Rules'
    defaults (one place), the ones --help names."""
    _, _, cfg = prepare(model=str(model_file), run_id=None, opponent="random", games=None,
                        openings=None, concurrency=None, tc="nodes=1", max_moves=None,
                        resign=None, draw=None, move_timeout=None, sprt=None, pgn=None,
                        seed=None, artifacts_dir=tmp_path / "runs")
    assert (cfg.games, cfg.concurrency, cfg.seed) == (20, 1, 1)
    assert (cfg.rules.max_moves, cfg.rules.move_timeout) == (200, 10.0)
    from tasks.eval import match

    helps = match.help
    assert "(default: 20)" in helps["games"] and "(default: 1)" in helps["concurrency"]
    assert "(default: 200)" in helps["max_moves"] and "(default: 10)" in helps["move_timeout"]
    assert "(default: 1)" in helps["seed"]


def test_an_engine_whose_close_never_lands_is_killed_with_its_group(monkeypatch) -> None:
    """SimpleEngine.close() kills the engine later, on its own event loop thread; when that
    loop is busy or ending (Ctrl-C ends the match) the engine could outlive the match. After
    KILL_WAIT without an exit code, _kill kills the engine's process group itself."""
    import concurrent.futures
    from types import SimpleNamespace

    from podcycle import match

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group of its own
    never = concurrent.futures.Future()  # the exit code that the loop never reports
    engine = SimpleNamespace(transport=SimpleNamespace(get_pid=lambda: proc.pid),
                             close=lambda: None, returncode=never)
    monkeypatch.setattr(match, "KILL_WAIT", 0.1)
    try:
        match._kill(engine)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_match_files_and_game_dates_are_in_utc(monkeypatch) -> None:
    """Under TZ=Asia/Kathmandu a match file was named 08:02 and its games dated by the local
    day, beside run ids and reports in UTC."""
    import time

    from podcycle.match import utc_stamp

    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    try:
        moment = time.time()
        assert utc_stamp() in {time.strftime("%Y%m%d-%H%M%S", time.gmtime(moment + d))
                               for d in (0, 1)}
        assert utc_stamp() != time.strftime("%Y%m%d-%H%M%S")  # +05:45 is never UTC
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_sweep_trials_run_without_a_model_names_its_sweeps_resume(tmp_path: Path) -> None:
    """run:s3-t0 as an opponent, a sweep's trial that had not collected: the remedy said only
    `inv cycle.collect --run-id s3-t0`, on a run its sweep continues (`--resume` trains what is
    left, then collects). Both are named now; a run of another name keeps the one remedy."""
    from podcycle.match import parse_opponent

    for run_id in ("s3-t0", "r1"):
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        with pytest.raises(ConfigError, match=f"run {run_id} has no collected model") as no:
            parse_opponent(f"run:{run_id}", artifacts_dir=tmp_path / "runs")
        assert no.value.remedy.startswith(f"finish the run first: inv cycle.collect --run-id "
                                          f"{run_id}")
        assert ("inv sweep.run --resume s3" in no.value.remedy) == (run_id == "s3-t0")
