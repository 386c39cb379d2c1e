"""Matches between two engines: the model under test against an opponent, in game pairs.

Each opening is played twice with colours swapped, so a pair's two results (one of five
pentanomial bins) judge the engines free of the opening's bias, as fishtest and fastchess do.
Engines speak UCI through python-chess's `chess.engine` (one process per engine per worker,
started in their own process group); the uniform random mover plays in-process. An engine that
crashes, hangs past its time or answers an illegal move loses that game (the PGN's Termination
and a comment say why) and is restarted for the next one. Games are appended to the PGN as they
finish, so Ctrl-C keeps every finished game; it stops the match and every engine process.

Opponents: random | stockfish:elo=N | stockfish:skill=N | stockfish:depth=N | model:PATH |
run:RUN_ID | uci:COMMAND.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chess
import chess.engine
import chess.pgn

from podcycle.elo import (
    VERDICT_TEXT,
    Sprt,
    elo_estimate,
    interval_text,
    parse_sprt,
    pentanomial,
    summary_elo_text,
    trinomial,
)
from podcycle.errors import ConfigError, PodCycleError
from podcycle.local import procs
from podcycle.redact import printable
from podcycle.signals import ignored_signals

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OPENINGS = ROOT / "config" / "openings.epd"
OPPONENT_FORMS = ("random, stockfish:elo=N, stockfish:skill=N, stockfish:depth=N, "
                  "model:PATH, run:RUN_ID, uci:COMMAND")
STOCKFISH_PATHS = ("stockfish", "/usr/games/stockfish")
CLOCK_GRACE = 0.1  # seconds an engine may overrun its clock (process and pipe latency)
DRAW_AFTER_MOVE = 30  # score-based draw adjudication starts at this move number


# -- engines ---------------------------------------------------------------------------------
@dataclass
class EngineSpec:
    name: str  # as the PGN and summary show it
    command: list[str] | None = None  # None: the in-process random mover
    options: dict[str, Any] = field(default_factory=dict)
    limit: chess.engine.Limit | None = None  # overrides the match's --tc (stockfish:depth=N)
    model_path: Path | None = None

    @property
    def searches(self) -> bool:
        return self.command is not None and self.model_path is None


def model_spec(path: Path, name: str | None = None, *, flag: str = "--model PATH",
               finished: str = "--run RUN_ID") -> EngineSpec:
    """The chessbot engine of a model file; `flag` is how the user gave it, and `finished`
    how a finished run's model is given there instead (for the hints)."""
    from podcycle.config import expand_path

    path = expand_path(str(path), flag.split()[0])
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a model file",
                          f"pass {flag} to the model.pt in it (or {finished} of a finished "
                          "run)")
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}",
                          f"pass {flag} to a model.pt (or {finished} of a finished run)")
    if not _is_checkpoint(path):
        raise ConfigError(f"{path} is not a model: a chessbot model.pt is a PyTorch checkpoint "
                          "(a zip archive with a data.pkl) of a chessbot-policy-v1 model",
                          f"pass the model.pt a training wrote (or {finished} of a finished "
                          "run)")
    return EngineSpec(name=name or f"chessbot:{path.name}",
                      command=[sys.executable, "-m", "chessbot.uci", "--model", str(path)],
                      model_path=path.resolve())


def _is_checkpoint(path: Path) -> bool:
    """torch.save's format holding a chessbot model, told without importing torch: its
    pickle names the model format (a dict whose first key is "format"). Any other PyTorch
    file passed before, and a cycle's strength match found it out only after the training
    it paid for (the engine process still says why a file that passes will not load)."""
    import zipfile

    from chessbot.infer import FORMAT

    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if not pickles:
                return False
            with archive.open(pickles[0]) as pickled:
                return FORMAT.encode() in pickled.read(4096)
    except (zipfile.BadZipFile, OSError):
        return False


def run_model_path(artifacts_dir: Path, run_id: str) -> Path:
    """The model a run collected, or a ConfigError saying how to get it."""
    from podcycle.runs import RunFolder

    run = RunFolder(Path(artifacts_dir), run_id)
    if not run.path.is_dir():
        raise ConfigError(f"no run {run_id!r} under {artifacts_dir}",
                          "inv runs.list lists the runs; runs elsewhere: set "
                          "POD_CYCLE_ARTIFACTS_DIR")
    from podcycle.errors import StepFailed
    from podcycle.validation import MODEL_IN_MANIFEST, verify_manifest

    model = run.collected / MODEL_IN_MANIFEST
    if not model.is_file():
        import re

        trial = re.fullmatch(r"(.+)-t\d+", run_id)
        # A sweep's trial: its sweep continues it (trains what is left, then collects).
        continued = (f" (or, for a trial of sweep {trial[1]} stopped before it ended: inv "
                     f"sweep.run --resume {trial[1]}; a pruned or failed trial is not "
                     "continued)" if trial else "")
        raise ConfigError(f"run {run_id} has no collected model ({model} is missing)",
                          f"finish the run first: inv cycle.collect --run-id {run_id}"
                          f"{continued}")

    try:  # as local-validate does: a model the pod's manifest does not vouch for is not used
        verify_manifest(run.collected, require=(MODEL_IN_MANIFEST,))
    except StepFailed as failed:
        raise ConfigError(f"run {run_id}: {failed.message}", failed.remedy) from None
    return model


def stockfish_binary() -> str:
    for candidate in STOCKFISH_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    raise ConfigError("stockfish is not installed (looked for `stockfish` on PATH and "
                      "/usr/games/stockfish)", "install it: sudo apt-get install stockfish "
                      "(make setup does), or use --opponent random")


ENGINE_START_SECONDS = 20


def _declared_options(command: list[str]) -> dict[str, chess.engine.Option]:
    # python-chess gives up on an engine that never says uciok by closing its event loop
    # while asyncio's child watcher still reaps the engine: that watcher's warning ("Loop
    # ... that handles pid N is closed") was glued to the end of the refusal's hint.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    try:
        engine = chess.engine.SimpleEngine.popen_uci(command, timeout=ENGINE_START_SECONDS,
                                                     setpgrp=True,
                                                     stderr=asyncio.subprocess.DEVNULL)
    except TimeoutError:
        raise ConfigError(f"{shlex.join(command)} gave no uciok within "
                          f"{ENGINE_START_SECONDS} s: it hangs, or does not speak UCI",
                          "run it by hand and send 'uci': a UCI engine answers 'uciok'") \
            from None
    except chess.engine.EngineTerminatedError as exc:  # it ran and ended: no UCI engine
        raise ConfigError(f"cannot start {shlex.join(command)}: it ended before answering "
                          f"'uci' ({exc})", "check that the engine runs and speaks UCI") \
            from None
    except (OSError, chess.engine.EngineError) as exc:
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot start {shlex.join(command)}: {said}",
                          "check that the engine runs and speaks UCI") from None
    try:
        return dict(engine.options)
    finally:
        _kill(engine)


def _option_in_range(options: dict[str, chess.engine.Option], option: str, value: int,
                     flag: str) -> None:
    declared = options.get(option)
    if declared is None or declared.min is None or declared.max is None:
        raise ConfigError(f"--opponent {flag}: this stockfish declares no {option} option",
                          "use --opponent stockfish:depth=N instead")
    if not declared.min <= value <= declared.max:
        raise ConfigError(f"--opponent {flag}: {value} is outside the {option} range "
                          f"{declared.min}..{declared.max} that the installed stockfish "
                          "declares", f"choose a value between {declared.min} and "
                          f"{declared.max}")


def parse_opponent(text: str, *, artifacts_dir: Path | None = None,
                   flag: str = "--opponent", probe: bool = False) -> EngineSpec:
    """An --opponent value as an engine, checked before any game (a stockfish strength is
    checked against the range the installed binary declares). `flag`: where the value came
    from, as the errors name it (--strength-opponent, a sweep file's strength_opponent).
    `probe`: a `uci:` engine is started and must answer uciok now (a cycle or a sweep plays
    it only after a paid training: `uci:/bin/true` failed there, trial after trial)."""
    try:
        spec = _parse_opponent(text, artifacts_dir=artifacts_dir)
        if probe and spec.command and (text or "").strip().lower().startswith("uci:"):
            try:
                _declared_options(spec.command)
            except ConfigError as exc:
                raise ConfigError(f"--opponent {(text or '').strip()}: {exc.message}",
                                  exc.remedy) from None
        return spec
    except ConfigError as exc:
        if flag == "--opponent":
            raise
        raise ConfigError(exc.message.replace("--opponent", flag),
                          exc.remedy.replace("--opponent", flag)) from None


def _parse_opponent(text: str, *, artifacts_dir: Path | None = None) -> EngineSpec:
    text = (text or "").strip()
    kind, sep, value = text.partition(":")
    kind = kind.lower()
    if text.lower() == "random":
        return EngineSpec(name="random")
    if not sep or not value.strip():
        raise ConfigError(f"--opponent {text!r} is not an opponent", f"use one of: "
                          f"{OPPONENT_FORMS}")
    value = value.strip()
    if kind == "stockfish":
        key, eq, number = value.partition("=")
        key = key.strip().lower()
        if not eq or key not in ("elo", "skill", "depth"):
            raise ConfigError(f"--opponent {text!r}: stockfish takes elo=N, skill=N or "
                              "depth=N", "e.g. --opponent stockfish:elo=1400")
        try:
            n = int(number)
        except ValueError:
            raise ConfigError(f"--opponent {text!r}: {key} must be an integer",
                              "e.g. --opponent stockfish:elo=1400") from None
        command = [stockfish_binary()]
        options: dict[str, Any] = {"Threads": 1, "Hash": 16}
        limit = None
        if key == "depth":
            if not 1 <= n <= 60:
                raise ConfigError(f"--opponent {text!r}: depth must be 1..60",
                                  "e.g. --opponent stockfish:depth=3")
            limit = chess.engine.Limit(depth=n)
        else:
            declared = _declared_options(command)
            option = "UCI_Elo" if key == "elo" else "Skill Level"
            _option_in_range(declared, option, n, text)
            if key == "elo":
                options.update({"UCI_LimitStrength": True, "UCI_Elo": n})
            else:
                options["Skill Level"] = n
            options = {k: v for k, v in options.items() if k in declared}
        return EngineSpec(name=f"stockfish {key}={n}", command=command, options=options,
                          limit=limit)
    if kind == "model":
        return model_spec(Path(value), name=f"chessbot:{Path(value).name}",
                          flag="the opponent as model:PATH", finished="run:RUN_ID")
    if kind == "run":
        from podcycle.runs import validate_run_id

        validate_run_id(value)
        path = run_model_path(artifacts_dir or Path("artifacts/runpod_cycles"), value)
        return model_spec(path, name=f"chessbot:{value}")
    if kind == "uci":
        try:
            command = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"--opponent {text!r}: cannot split the command ({exc})",
                              "quote it like a shell command") from None
        if not command or not shutil.which(command[0]):
            engine = command[0] if command else "?"
            if Path(engine).is_file() and os.access(engine, os.X_OK):  # a bare name
                raise ConfigError(f"--opponent {text!r}: {engine} is not on PATH",
                                  f"give its path: uci:./{engine}")
            if Path(engine).is_file():  # there, but it cannot be run: said now, not per game
                raise ConfigError(f"--opponent {text!r}: {engine} is not executable (no "
                                  "execute permission)", f"chmod +x {shlex.quote(engine)}")
            quoted = _quoted_engine_path(command)
            if quoted:  # a path with a space, unquoted
                raise ConfigError(f"--opponent {text!r}: {engine} is not an executable (the "
                                  "command is split at spaces, as a shell splits it)",
                                  f"quote the engine's path: {quoted}")
            raise ConfigError(f"--opponent {text!r}: {engine} is not an executable",
                              "give the engine's path: uci:/path/to/engine")
        return EngineSpec(name=engine_name(command), command=command)
    raise ConfigError(f"--opponent {text!r} is not an opponent", f"use one of: {OPPONENT_FORMS}")


INTERPRETERS = re.compile(r"(python|pypy|node|ruby|perl|java|bash|sh)[0-9.]*")
SCRIPT_SUFFIXES = (".py", ".js", ".mjs", ".rb", ".pl", ".jar", ".sh")


def engine_name(command: list[str]) -> str:
    """A `uci:` engine's name in PGNs and summaries: its program's file name, or for an
    interpreter (`python engine.py`) the script's, which tells engines apart."""
    words = list(command)
    if Path(words[0]).name == "env":  # /usr/bin/env [VAR=value ...] python3 engine.py
        words = [w for w in words[1:] if "=" not in w and not w.startswith("-")] or words
    name = Path(words[0]).name
    if INTERPRETERS.fullmatch(name):
        # The script: a file that exists, else a word with a script's suffix (an option's
        # value, `-W ignore` or `--max-old-space-size 4096`, is neither).
        script = next((w for w in words[1:] if not w.startswith("-") and Path(w).is_file()),
                      None) or next((w for w in words[1:] if Path(w).suffix in SCRIPT_SUFFIXES
                                     and not w.startswith("-")), None)
        if script:
            return Path(script).name
    return name


def _quoted_engine_path(words: list[str]) -> str | None:
    """For `uci:/opt/my engines/sf --threads 1`, split at its spaces: the --opponent to type
    instead (the longest run of leading words that is an executable, quoted), or None."""
    for count in range(len(words), 1, -1):
        path = " ".join(words[:count])
        if shutil.which(path):
            given = "uci:" + shlex.join([path, *words[count:]])
            if any(c in given for c in '"$`\\!'):
                return f"--opponent {shlex.quote(given)}"
            return f'--opponent "{given}"'
    return None


# -- time control and rules ------------------------------------------------------------------
@dataclass(frozen=True)
class TimeControl:
    """nodes=N, depth=N, movetime=SECONDS or BASE+INC (seconds, a clock per side)."""

    text: str
    limit: chess.engine.Limit | None = None  # a fixed limit per move
    base: float | None = None
    inc: float = 0.0

    @property
    def clock(self) -> bool:
        return self.base is not None


def parse_tc(text: str) -> TimeControl:
    example = "e.g. --tc nodes=2000, --tc depth=4, --tc movetime=0.1 or --tc 10+0.1"
    text = (text or "").strip()
    key, eq, value = text.partition("=")
    try:
        if eq and key == "nodes" and int(value) > 0:
            return TimeControl(text, limit=chess.engine.Limit(nodes=int(value)))
        if eq and key == "depth" and 0 < int(value) <= 60:
            return TimeControl(text, limit=chess.engine.Limit(depth=int(value)))
        if eq and key == "movetime" and 0 < float(value) <= 600:
            return TimeControl(text, limit=chess.engine.Limit(time=float(value)))
        if not eq and "+" in text:
            base, inc = (float(x) for x in text.split("+", 1))
            if 0 < base <= 86400 and 0 <= inc <= 600:
                return TimeControl(text, base=base, inc=inc)
    except ValueError:
        pass
    raise ConfigError(f"--tc {text!r} is not a time control", example)


@dataclass(frozen=True)
class Rules:
    max_moves: int = 200  # full moves, then a draw by adjudication (0 = no limit)
    resign_cp: int | None = None  # a side whose own score is <= -cp for resign_moves moves
    resign_moves: int = 3
    draw_cp: int | None = None  # both sides |score| <= cp for draw_moves moves each
    draw_moves: int = 8
    move_timeout: float = 10.0  # seconds past the move's time before the engine forfeits


def parse_threshold(flag: str, text: str | None) -> tuple[int | None, int]:
    """'CP/MOVES' (e.g. 700/3) → (cp, moves); empty → (None, 0)."""
    if not text:
        return None, 0
    cp, sep, moves = str(text).partition("/")
    try:
        value, count = int(cp), int(moves)
    except ValueError:
        value = count = -1
    if not sep or value < 0 or count < 1:
        raise ConfigError(f"--{flag} {text!r}: expected CENTIPAWNS/MOVES",
                          f"e.g. --{flag} {'700/3' if flag == 'resign' else '10/8'}")
    return value, count


# -- openings --------------------------------------------------------------------------------
@dataclass
class Opening:
    name: str
    board: chess.Board  # its move stack (from a PGN book) is kept for the game's PGN


def load_openings(path: Path) -> list[Opening]:
    path = Path(path)
    if not path.is_file():
        # /dev/zero, a FIFO: "not found" sent the user looking for a path that is there.
        raise ConfigError(f"opening book {path} is a folder, not a file" if path.is_dir()
                          else f"opening book {path} is not a regular file (a device, a "
                          "FIFO?)" if path.exists()
                          else f"opening book not found: {path}",
                          f"pass --openings FILE (EPD or PGN), or leave it out for "
                          f"{DEFAULT_OPENINGS.relative_to(ROOT)}")
    openings: list[Opening] = []
    if path.suffix.lower() == ".pgn":
        with open(path, encoding="utf-8", errors="replace") as handle:
            while (game := chess.pgn.read_game(handle)) is not None:
                if game.errors:
                    raise ConfigError(f"{path}: game {len(openings) + 1} does not parse "
                                      f"({game.errors[0]})", "fix or remove that game")
                # python-chess reads any text as a game: words as none at all, `--` as a
                # null move. An opening is moves from the start, or a FEN.
                moves = list(game.mainline_moves())
                if not moves and "FEN" not in game.headers:
                    raise ConfigError(f"{path}: game {len(openings) + 1} holds no moves and "
                                      "no FEN: not a PGN opening book",
                                      "pass an EPD or PGN book (--openings FILE), or leave "
                                      "it out for the built-in one")
                if chess.Move.null() in moves:
                    raise ConfigError(f"{path}: game {len(openings) + 1} holds a null move "
                                      "(--): not an opening", "fix or remove that game")
                try:
                    start = game.board()  # python-chess's board for its Variant tag
                except ValueError:
                    start = None
                if type(start) is not chess.Board or start.chess960:
                    # Its moves are not chess's (or the engines were never told the rules):
                    # every game was scored as the model's illegal move.
                    variant = game.headers.get("Variant", "?").strip()
                    raise ConfigError(f"{path}: game {len(openings) + 1} is of the variant "
                                      f"'{printable(variant[:40])}': the engines play "
                                      "standard chess only", "use a book of standard chess "
                                      "openings, or leave --openings out for the built-in one")
                board = game.end().board()
                name = game.headers.get("Opening") or game.headers.get("ECO") or \
                    f"{path.name} #{len(openings) + 1}"
                openings.append(Opening(name, board))
    else:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                board, ops = chess.Board.from_epd(line.strip())
            except ValueError as exc:
                raise ConfigError(f"{path}:{number}: not an EPD position ({exc})",
                                  "fix or remove that line") from None
            name = str(ops.get("id") or ops.get("c0") or f"{path.name}:{number}")
            openings.append(Opening(name, board))
    for opening in openings:
        if not opening.board.is_valid() or opening.board.is_game_over():
            raise ConfigError(f"{path}: opening {opening.name!r} is not a playable position",
                              "fix or remove it")
    if not openings:
        raise ConfigError(f"{path} holds no opening", "add EPD lines or PGN games")
    return openings


# -- players ---------------------------------------------------------------------------------
NOT_STARTED = "did not start"  # in a game's reason: an engine that never played


class EngineFailure(Exception):
    def __init__(self, termination: str, detail: str) -> None:
        super().__init__(detail)
        self.termination = termination  # the PGN Termination tag value
        self.detail = detail


@dataclass
class Reply:
    move: chess.Move
    score: int | None  # centipawns from the mover's side, when the engine reports one
    seconds: float | None = None  # the engine's time on it, the host's pauses left out


# How often the host looks at an engine thinking, and how far past a look it may wake before
# the gap counts as the host's own pause (a laptop asleep, Ctrl-Z then fg, SIGSTOP): that time
# is not the engine's. Counted, a pause of 15 s during a 20-game match scored 2 or 3 games as
# time forfeits ("sent no move within 10.05s") though both engines had answered, and put the
# skewed result in the run's strength.
LOOK_EVERY = 0.1
PAUSE_GAP = 1.0


def awaited(future: Any, wait: float, *, clock: Callable[[], float] = time.monotonic
            ) -> tuple[Any, float]:
    """The result of `future` (a concurrent.futures.Future) and the seconds spent waiting for
    it, the host's pauses left out; TimeoutError (the future cancelled) once those seconds
    pass `wait`. A look that wakes more than PAUSE_GAP late counts as one look."""
    import concurrent.futures

    counted = 0.0
    last = clock()
    while True:
        done, _ = concurrent.futures.wait([future], timeout=LOOK_EVERY)
        now = clock()
        gap, last = now - last, now
        counted += gap if gap <= LOOK_EVERY + PAUSE_GAP else LOOK_EVERY
        if done:
            return future.result(), counted  # or the coroutine's own error
        if counted > wait:
            future.cancel()
            raise TimeoutError(f"no result within {wait:g}s")


class RandomPlayer:
    """The floor: a uniformly random legal move (seeded per game)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.rng = random.Random(0)

    def new_game(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def move(self, board: chess.Board, tc: TimeControl, clocks: dict[bool, float],
             rules: Rules) -> Reply:
        return Reply(self.rng.choice(list(board.legal_moves)), None)

    def kill(self) -> None:
        pass

    def close(self) -> None:
        pass


def _quiet_loop(engine: chess.engine.SimpleEngine) -> None:
    """A killed engine (its game lost, or Ctrl-C) leaves its pending command failed on the
    engine's own event loop; asyncio would print that as an 'unhandled exception' traceback
    when the loop shuts down. The match has already recorded why: stay quiet about it."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        error = context.get("exception")
        if isinstance(error, (chess.engine.EngineError, asyncio.CancelledError)):
            return
        loop.default_exception_handler(context)

    engine.protocol.loop.call_soon_threadsafe(engine.protocol.loop.set_exception_handler,
                                              handler)


KILL_WAIT = 5.0  # seconds for a closed engine's exit code before its group is killed


def _kill(engine: chess.engine.SimpleEngine) -> None:
    """Stop an engine process now. Closing the transport kills it, but on the engine's own
    event loop thread, later: when no exit code comes within 5 s (a loaded machine, or
    the loop already stopping as Ctrl-C ends the match) its process group (setpgrp: the
    engine leads it) is killed here, so no engine outlives the match. An engine with an
    exit code has been reaped, and its pid is not touched again; a killed one is waited for
    (up to 5 s more) until it is gone, so that it does not outlive the match by a moment."""
    try:
        pid = engine.transport.get_pid()
    except Exception:  # noqa: BLE001 - no process behind it
        pid = None
    # What the engine started in its group (a wrapper script's helper, `sleep 300 &`): it
    # outlived the match once the engine itself had quit. Seen now, while the engine leads
    # the group; ended after, each one only if it is still in that group.
    helpers = _group_members(pid) - {pid} if pid is not None else set()
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - already gone
        pass
    try:
        engine.returncode.result(timeout=KILL_WAIT)
        _end_helpers(helpers, pid)
        return
    except Exception:  # noqa: BLE001 - no exit code yet, or the event loop ended first
        pass
    _end_helpers(helpers, pid)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            return  # it ended meanwhile
        procs.wait_gone({pid}, KILL_WAIT)  # SIGKILL takes effect when it is next scheduled


def _group_members(pgid: int) -> set[int]:
    """The processes of process group `pgid` (the pids Linux's /proc lists)."""
    return {pid for pid in procs.all_pids() if _pgrp(pid) == pgid}


def _pgrp(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # gone
        return None


def _end_helpers(helpers: set[int], pgid: int | None) -> None:
    """SIGKILL each of `helpers` still in group `pgid` (a pid given out again is in another
    group, and left alone), and wait for them to go."""
    killed = set()
    for pid in helpers:
        if _pgrp(pid) == pgid:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
    procs.wait_gone(killed, KILL_WAIT)


class UciPlayer:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.engine: chess.engine.SimpleEngine | None = None
        self.lock = threading.Lock()
        self.game_key: object = None
        self.closed = False  # the match is stopping: no engine starts again

    def start(self) -> None:
        assert self.spec.command is not None
        if self.closed:
            raise EngineFailure("abandoned", f"{self.spec.name}: the match is stopping")
        try:
            engine = chess.engine.SimpleEngine.popen_uci(
                self.spec.command, timeout=30, setpgrp=True, stderr=asyncio.subprocess.DEVNULL)
        except (TimeoutError, OSError, chess.engine.EngineError) as exc:
            why = ("no uciok within 30 s: it does not speak UCI" if isinstance(exc, TimeoutError)
                   else f"{type(exc).__name__}: {exc}")
            raise EngineFailure("abandoned", f"{self.spec.name} {NOT_STARTED} ({why})"
                                ) from None
        _quiet_loop(engine)
        with self.lock:
            closed = self.closed
            if not closed:
                self.engine = engine
        if closed:  # Ctrl-C came while it started: it must not outlive the match
            _kill(engine)
            raise EngineFailure("abandoned", f"{self.spec.name}: the match is stopping")
        if self.spec.options:
            try:
                engine.configure(self.spec.options)
            except Exception as exc:  # noqa: BLE001 - refused options end the game
                self.kill()
                raise EngineFailure("abandoned", f"{self.spec.name} refused its options "
                                    f"({type(exc).__name__}: {exc})") from None

    def new_game(self, seed: int) -> None:
        self.game_key = object()  # python-chess sends ucinewgame when it changes

    def move(self, board: chess.Board, tc: TimeControl, clocks: dict[bool, float],
             rules: Rules) -> Reply:
        if self.engine is None:
            self.start()
        engine = self.engine
        assert engine is not None
        if self.spec.limit is not None:
            limit, budget = self.spec.limit, 0.0
        elif tc.clock:
            limit = chess.engine.Limit(white_clock=clocks[chess.WHITE],
                                       black_clock=clocks[chess.BLACK],
                                       white_inc=tc.inc, black_inc=tc.inc)
            budget = clocks[board.turn]
        else:
            assert tc.limit is not None
            limit = tc.limit
            budget = tc.limit.time or 0.0
        wait = budget + rules.move_timeout
        coro = engine.protocol.play(board, limit, game=self.game_key,
                                    info=chess.engine.INFO_SCORE)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, engine.protocol.loop)
            result, seconds = awaited(future, wait)
        except TimeoutError:
            self.kill()
            raise EngineFailure("time forfeit", f"{self.spec.name} sent no move within "
                                f"{wait:g}s") from None
        except chess.engine.EngineTerminatedError:
            code = self.kill()
            raise EngineFailure("abandoned", f"{self.spec.name} crashed (exit code "
                                f"{code})") from None
        except chess.engine.EngineError as exc:
            self.kill()
            raise EngineFailure("rules infraction", f"{self.spec.name} sent an illegal move "
                                f"({exc})") from None
        except RuntimeError as exc:  # the engine's event loop is gone (killed meanwhile)
            self.kill()
            raise EngineFailure("abandoned", f"{self.spec.name} stopped ({exc})") from None
        if result.move is None or result.move not in board.legal_moves:
            self.kill()
            raise EngineFailure("rules infraction", f"{self.spec.name} sent no legal move "
                                f"({result.move})")
        score = result.info.get("score")
        cp = score.pov(board.turn).score(mate_score=100_000) if score is not None else None
        return Reply(result.move, cp, seconds)

    def close(self) -> None:
        """Kill the engine for good: a game still running cannot start it again."""
        with self.lock:
            self.closed = True
        self.kill()

    def kill(self) -> int | None:
        with self.lock:
            engine, self.engine = self.engine, None
        if engine is None:
            return None
        _kill(engine)
        try:
            return engine.returncode.result(timeout=0)
        except Exception:  # noqa: BLE001
            return None


def make_player(spec: EngineSpec) -> RandomPlayer | UciPlayer:
    return RandomPlayer(spec) if spec.command is None else UciPlayer(spec)


# -- one game --------------------------------------------------------------------------------
@dataclass
class GameResult:
    index: int  # 0-based game number; pair = index // 2
    model_white: bool
    result: str  # 1-0, 0-1, 1/2-1/2
    termination: str  # PGN Termination: normal, adjudication, time forfeit, ...
    reason: str
    plies: int
    opening: str
    pgn: str = ""
    engine_failed: bool = False  # lost by a crash, a silent engine or an illegal move

    @property
    def model_score(self) -> float:
        white = {"1-0": 1.0, "0-1": 0.0}.get(self.result, 0.5)
        return white if self.model_white else 1 - white

    @property
    def failure(self) -> bool:
        """Lost by an engine's failure, not by play: a clock that ran out in a game played
        on (a flag fall in blitz) is play, a move never sent is not."""
        return self.engine_failed


COLOR = {chess.WHITE: "White", chess.BLACK: "Black"}


def _outcome_reason(outcome: chess.Outcome) -> str:
    if outcome.termination == chess.Termination.CHECKMATE:
        return f"{COLOR[bool(outcome.winner)]} mates"
    return outcome.termination.name.lower().replace("_", " ")


def play_game(index: int, opening: Opening, white: Any, black: Any, *, model_white: bool,
              tc: TimeControl, rules: Rules, seed: int, names: tuple[str, str],
              stop: threading.Event | None = None) -> GameResult:
    board = opening.board.copy()
    players = {chess.WHITE: white, chess.BLACK: black}
    for number, player in enumerate((white, black)):
        player.new_game(seed * 100_003 + index * 2 + number)
    clocks = {chess.WHITE: tc.base or 0.0, chess.BLACK: tc.base or 0.0}
    scores: dict[bool, list[int | None]] = {chess.WHITE: [], chess.BLACK: []}
    start_ply = board.ply()
    result = termination = reason = None
    engine_failed = False
    while result is None:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        outcome = board.outcome(claim_draw=True)
        if outcome is not None:
            result, termination, reason = outcome.result(), "normal", _outcome_reason(outcome)
            break
        if rules.max_moves and board.ply() - start_ply >= 2 * rules.max_moves:
            result, termination = "1/2-1/2", "adjudication"
            reason = f"draw by the move limit ({rules.max_moves} moves)"
            break
        mover = board.turn
        started = time.monotonic()
        try:
            reply = players[mover].move(board, tc, clocks, rules)
        except EngineFailure as failure:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt from None
            result = "0-1" if mover == chess.WHITE else "1-0"
            termination, reason = failure.termination, f"{COLOR[mover]} loses: {failure.detail}"
            engine_failed = True
            break
        if tc.clock:
            clocks[mover] -= reply.seconds if reply.seconds is not None else \
                time.monotonic() - started
            if clocks[mover] < -CLOCK_GRACE:
                result = "0-1" if mover == chess.WHITE else "1-0"
                termination, reason = "time forfeit", f"{COLOR[mover]} loses on time"
                break
            clocks[mover] += tc.inc
        board.push(reply.move)
        scores[mover].append(reply.score)
        if rules.resign_cp is not None:
            last = scores[mover][-rules.resign_moves:]
            if len(last) == rules.resign_moves and all(
                    s is not None and s <= -rules.resign_cp for s in last):
                result = "0-1" if mover == chess.WHITE else "1-0"
                termination = "adjudication"
                reason = f"{COLOR[mover]} resigns (score <= -{rules.resign_cp} cp for " \
                         f"{rules.resign_moves} moves)"
        if result is None and rules.draw_cp is not None and board.fullmove_number >= \
                DRAW_AFTER_MOVE:
            recent = [s for side in (chess.WHITE, chess.BLACK)
                      for s in scores[side][-rules.draw_moves:]]
            if len(recent) == 2 * rules.draw_moves and all(
                    s is not None and abs(s) <= rules.draw_cp for s in recent):
                result, termination = "1/2-1/2", "adjudication"
                reason = f"draw by score (|score| <= {rules.draw_cp} cp for " \
                         f"{rules.draw_moves} moves)"
    game = chess.pgn.Game.from_board(board)
    game.headers.update({
        "Event": "pod-cycle eval.match", "Site": "local",
        "Date": time.strftime("%Y.%m.%d", time.gmtime()),  # UTC, as every time we show
        "Round": f"{index // 2 + 1}.{index % 2 + 1}", "White": names[0], "Black": names[1],
        "Result": result, "Termination": termination, "Opening": opening.name,
        "TimeControl": tc.text, "PlyCount": str(board.ply() - opening.board.ply())})
    game.end().comment = reason or ""
    return GameResult(index=index, model_white=model_white, result=result,
                      termination=termination or "", reason=reason or "",
                      plies=board.ply() - start_ply, opening=opening.name,
                      pgn=str(game), engine_failed=engine_failed)


# -- the match -------------------------------------------------------------------------------
@dataclass
class MatchConfig:
    games: int = 20
    openings: list[Opening] = field(default_factory=list)
    concurrency: int = 1
    tc: TimeControl = field(default_factory=lambda: parse_tc("movetime=0.05"))
    rules: Rules = field(default_factory=Rules)
    sprt: Sprt | None = None
    pgn: Path = Path("match.pgn")
    seed: int = 1


@dataclass
class MatchResult:
    model: str
    opponent: str
    games: list[GameResult]
    planned: int
    pgn: Path
    sprt: Sprt | None
    interrupted: bool = False
    stopped_by_sprt: bool = False

    @property
    def pairs(self) -> list[tuple[float, float]]:
        # Over the games played, never the games planned: this runs after every game, with
        # the match's lock held (a --games of 10^20 once spun here, deaf to Ctrl-C).
        by_index = {g.index: g for g in self.games}
        return [(by_index[i].model_score, by_index[i + 1].model_score)
                for i in sorted(by_index) if i % 2 == 0 and i + 1 in by_index]

    def summary(self) -> dict[str, Any]:
        scores = [g.model_score for g in self.games]
        losses, draws, wins = trinomial(scores)
        pairs = self.pairs
        bins = pentanomial(pairs) if pairs else None
        results = bins if pairs else ([losses, draws, wins] if scores else None)
        estimate = elo_estimate(results) if results else None
        out: dict[str, Any] = {
            "model": self.model, "opponent": self.opponent, "games": len(self.games),
            "planned_games": self.planned, "wins": wins, "draws": draws, "losses": losses,
            "score": round(sum(scores) / len(scores), 4) if scores else None,
            "pentanomial": bins,
            "elo": round(estimate.elo, 1) if estimate else None,
            # None for an interval with one end (a score of 1 or 0: elo is fishtest's clamp)
            "elo_low": _rounded(estimate.low) if estimate else None,
            "elo_high": _rounded(estimate.high) if estimate else None,
            "los": round(estimate.los, 4) if estimate else None,
            "pgn": str(self.pgn), "interrupted": self.interrupted,
            "failures": [{"game": g.index + 1, "termination": g.termination,
                          "loser": "model" if g.model_score == 0 else "opponent",
                          "reason": g.reason} for g in self.games if g.failure],
        }
        if self.sprt is not None:
            out["sprt"] = self.sprt.report(bins or [0] * 5)
            out["sprt"]["stopped_early"] = self.stopped_by_sprt
        return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


FAILURES_SHOWN = 10  # games lost by an engine failure listed one per line in the summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['model']} vs {summary['opponent']}: {summary['games']} games "
             f"(of {summary['planned_games']})" + (", interrupted" if summary["interrupted"]
                                                   else "")]
    if summary["games"]:
        lines.append(f"  W {summary['wins']}  D {summary['draws']}  L {summary['losses']}  "
                     f"score {summary['score']:.3f}")
    if summary["elo"] is not None:
        lines.append(f"  Elo {summary_elo_text(summary)}  ({interval_text(summary)}"
                     + (f", pairs LL/LD/WL+DD/WD/WW {summary['pentanomial']}"
                        if summary["pentanomial"] else "") + ")")
    if "sprt" in summary:
        s = summary["sprt"]
        lines.append(f"  SPRT elo0={s['elo0']:g} elo1={s['elo1']:g} alpha={s['alpha']:g} "
                     f"beta={s['beta']:g}: LLR {s['llr']:.2f} (bounds {s['lower']:.2f}, "
                     f"{s['upper']:.2f}): {VERDICT_TEXT[s['verdict']]}")
    pairs = sum(summary.get("pentanomial") or [])
    if summary["elo"] is not None and pairs < FEW_PAIRS:
        lines.append(f"  note: only {pairs} game pair(s): fishtest's interval is made for "
                     f"hundreds, and under {FEW_PAIRS} it is too narrow to hold (play more "
                     "games: --games)")
    failures = summary["failures"]
    if failures:
        # A crash, a hang or an illegal move loses the game (as cutechess-cli scores it), so
        # a score made of them measures the engines' failures, not their play: say so.
        by = collections.Counter(f["loser"] for f in failures)
        lines.append(f"  warning: {len(failures)} of {summary['games']} games ended by an "
                     f"engine failure, not by play ({summary['model']} {by['model']}, "
                     f"{summary['opponent']} {by['opponent']}); the score counts them as "
                     "lost by the engine that failed")
    for failure in failures[:FAILURES_SHOWN]:
        lines.append(f"  game {failure['game']}: {failure['termination']}: "
                     f"{failure['reason']}")
    if len(failures) > FAILURES_SHOWN:
        lines.append(f"  ... and {len(failures) - FAILURES_SHOWN} more (--json lists them all; "
                     "the PGN has each game's reason)")
    lines.append(f"  PGN: {summary['pgn']}")
    return "\n".join(lines)


class PgnUnwritable(PodCycleError):
    """The games' file took no write: a full disk, a file replaced or gone read-only, one that
    takes no writes (/proc/version)."""

    def __init__(self, path: Path, exc: OSError, when: str) -> None:
        super().__init__(f"the games could not be written to {path} ({exc.strerror or exc}); "
                         f"the match stopped {when}",
                         "free space or give another file, e.g. --pgn matches/today.pgn")


def run_match(model: EngineSpec, opponent: EngineSpec, config: MatchConfig,
              progress: Callable[[str], None] | None = None) -> MatchResult:
    """Play config.games games (in pairs) of model against opponent; Ctrl-C stops them,
    keeping the finished games. The PGN is appended as games finish."""
    if config.games < 2 or config.games % 2:
        raise ConfigError(f"--games must be an even number of at least 2 (each opening is "
                          f"played with both colours), got {config.games}", "e.g. --games 40")
    if config.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1", "e.g. --concurrency 2")
    if not config.openings:
        config.openings = load_openings(DEFAULT_OPENINGS)
    # python-chess logs what an engine says that it cannot read ("Unexpected engine output",
    # an info line it cannot parse), each in full, at every move: a chatty or garbage
    # opponent wrote megabytes to stderr (4 MB for two games in the hunt). What decides a
    # game (a crash, an illegal or missing move) is recorded as the game's end instead.
    if os.environ.get("POD_CYCLE_DEBUG") != "1":  # debugging an engine: every line
        logging.getLogger("chess.engine").setLevel(logging.CRITICAL)
    try:
        config.pgn.parent.mkdir(parents=True, exist_ok=True)
        config.pgn.write_text("")
    except OSError as exc:
        raise PgnUnwritable(config.pgn, exc, "before the first game") from None
    names = (model.name, opponent.name if opponent.name != model.name
             else f"{opponent.name} (opponent)")
    result = MatchResult(model=names[0], opponent=names[1], games=[], planned=config.games,
                         pgn=config.pgn, sprt=config.sprt)
    stop = threading.Event()
    lock = threading.Lock()
    next_game = iter(range(config.games))
    players: list[Any] = []
    errors: list[BaseException] = []

    def take() -> int | None:
        with lock:
            if stop.is_set():
                return None
            return next(next_game, None)

    def record(game: GameResult) -> None:
        with lock:
            if stop.is_set() and result.interrupted:
                return
            result.games.append(game)
            try:
                with open(config.pgn, "a") as handle:
                    handle.write(game.pgn + "\n\n")
            except OSError as exc:  # a full disk, a file that takes no writes (/proc/...)
                raise PgnUnwritable(config.pgn, exc,
                                    f"at game {len(result.games)}") from None
            summary = result.summary()
            if len(result.games) >= 2 and all(_never_started(g) for g in result.games):
                stop.set()  # it will not start for the next game either: no 20 more waits
            if config.sprt is not None and summary["sprt"]["verdict"] != "continue" and \
                    not result.stopped_by_sprt:
                result.stopped_by_sprt = True
                stop.set()
        if progress:
            line = (f"game {len(result.games)}/{config.games} ({game.opening}): "
                    f"{'model' if game.model_white else names[1]} (white) {game.result} "
                    f"[{game.termination}: {game.reason}] | W {summary['wins']} "
                    f"D {summary['draws']} L {summary['losses']}")
            if summary["elo"] is not None:
                line += f" | Elo {summary_elo_text(summary, 0)}"
            if "sprt" in summary:
                line += f" | LLR {summary['sprt']['llr']:.2f}"
            progress(line)

    def worker(done: threading.Event) -> None:
        mine: tuple[Any, ...] = ()
        try:
            mine = (make_player(model), make_player(opponent))
            with lock:
                players.extend(mine)
            while (index := take()) is not None:
                opening = config.openings[(index // 2) % len(config.openings)]
                model_white = index % 2 == 0
                white, black = mine if model_white else mine[::-1]
                game_names = names if model_white else names[::-1]
                try:
                    game = play_game(index, opening, white, black, model_white=model_white,
                                     tc=config.tc, rules=config.rules, seed=config.seed,
                                     names=game_names, stop=stop)
                except KeyboardInterrupt:
                    return
                record(game)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            stop.set()
        finally:
            try:
                for player in mine:
                    player.kill()
            finally:
                done.set()

    # The workers are awaited through events, not Thread.join: on Python 3.11 a join that
    # Ctrl-C interrupts marks the thread as ended while it still runs (the bpo-45274 clean-up
    # releases the lock the thread holds), and the match would exit before its engines do.
    finished = [threading.Event() for _ in range(min(config.concurrency, config.games))]
    threads = [threading.Thread(target=worker, args=(done,), name=f"match-worker-{i}",
                                daemon=True) for i, done in enumerate(finished)]
    for thread in threads:
        thread.start()
    try:
        for done in finished:
            done.wait()  # Ctrl-C and SIGTERM interrupt it
    except KeyboardInterrupt:
        # Bounded (5 s per engine, 15 s per worker): a second Ctrl-C, or the SIGTERM a CI
        # runner sends after its SIGINT, must not leave engines running.
        with ignored_signals():
            with lock:
                result.interrupted = True
                stop.set()
                alive = list(players)
            for player in alive:
                player.close()  # and no engine starts again for a move already under way
            for done in finished:
                done.wait(15)  # each worker's own engines killed and gone
    for thread in threads:
        thread.join(1)  # done: it is returning (a join nothing interrupted is exact)
    if errors and not result.interrupted:
        if isinstance(errors[0], PodCycleError):
            raise errors[0]
        raise PodCycleError(f"the match stopped: {type(errors[0]).__name__}: {errors[0]}",
                            "run it again with --concurrency 1; report it if it repeats")
    result.games.sort(key=lambda g: g.index)
    if result.games and not result.interrupted and all(_never_started(g)
                                                       for g in result.games):
        # Not a score: an engine that never played (a model file that is no model, an
        # opponent that does not start) must not read as a lost match with an Elo.
        by_hand = [shlex.join(spec.command) for spec in (model, opponent)
                   if spec.command and any(f"{spec.name} {NOT_STARTED}" in g.reason
                                           for g in result.games)]
        raise PodCycleError(f"no game was played: every one of the {len(result.games)} was "
                            f"abandoned ({result.games[0].reason})",
                            (f"run it by hand to see why: {by_hand[0]}; " if by_hand else "")
                            + f"the PGN {config.pgn} has each game's reason")
    return result


def _never_started(game: GameResult) -> bool:
    return game.termination == "abandoned" and NOT_STARTED in game.reason


# -- from flags ------------------------------------------------------------------------------
MAX_GAMES = 1_000_000  # far past any SPRT's need (fishtest's tests end within ~10^5 games)
# Seconds an engine may overrun its time before it forfeits: past an hour, a silent engine
# held a match (and a machine) for ever.
MAX_MOVE_TIMEOUT = 3600.0

def prepare(*, model: str | None, run_id: str | None, opponent: str, games: Any,
            openings: str | None, concurrency: Any, tc: str, max_moves: Any,
            resign: str | None, draw: str | None, move_timeout: Any, sprt: str | None,
            pgn: str | None, seed: Any, artifacts_dir: Path
            ) -> tuple[EngineSpec, EngineSpec, MatchConfig]:
    """Check every flag and build the match, before any game or engine starts. A number
    left out (None) takes MatchConfig's or Rules' default."""
    from podcycle.cli import number

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    if model and run_id:  # "one of them" read as a request for one of the two, not both
        raise ConfigError(f"--model and --run both name the model under test ({model}, run "
                          f"{run_id}): give one, not both",
                          f"e.g. inv eval.match --run {run_id} (its collected model)")
    if not model and not run_id:
        raise ConfigError("give the model under test: --model PATH or --run RUN_ID (one of "
                          "them)", "e.g. inv eval.match --model artifacts/.../model.pt")
    games_n = given(number("games", games, minimum=2, maximum=MAX_GAMES, example=40),
                    MatchConfig.games)
    if games_n % 2:
        raise ConfigError(f"--games must be even (each opening is played with both colours), "
                          f"got {games_n}", f"e.g. --games {games_n + 1}")
    rules = Rules(max_moves=given(number("max-moves", max_moves, minimum=0), Rules.max_moves),
                  move_timeout=given(number("move-timeout", move_timeout, float, minimum=0.1,
                                            maximum=MAX_MOVE_TIMEOUT), Rules.move_timeout))
    resign_cp, resign_moves = parse_threshold("resign", resign)
    draw_cp, draw_moves = parse_threshold("draw", draw)
    rules = Rules(rules.max_moves, resign_cp, resign_moves or 3, draw_cp, draw_moves or 8,
                  rules.move_timeout)
    config = MatchConfig(
        # Each game runs two engines, each a process (the model's loads torch): 64 at a
        # time is more than any machine's cores; more only ran it out of memory.
        games=games_n, concurrency=given(number("concurrency", concurrency, minimum=1,
                                                maximum=MAX_CONCURRENCY),
                                         MatchConfig.concurrency),
        openings=load_openings(Path(openings) if openings else DEFAULT_OPENINGS),
        tc=parse_tc(tc), rules=rules, sprt=parse_sprt(sprt) if sprt else None,
        seed=given(number("seed", seed, minimum=0), MatchConfig.seed))
    stamp = utc_stamp()
    if run_id:
        from podcycle.runs import RunFolder, validate_run_id

        validate_run_id(run_id)
        under_test = model_spec(run_model_path(artifacts_dir, run_id), name=f"chessbot:{run_id}")
        default_pgn = RunFolder(artifacts_dir, run_id).path / "strength" / f"match-{stamp}.pgn"
    else:
        under_test = model_spec(Path(str(model)))
        default_pgn = Path(artifacts_dir).parent / "matches" / f"match-{stamp}.pgn"
    opponent_spec = parse_opponent(opponent, artifacts_dir=artifacts_dir, probe=True)
    config.pgn = Path(pgn) if pgn else default_pgn
    if pgn:
        check_pgn_target(config.pgn)
    if pgn and config.pgn.is_file() and config.pgn.stat().st_size:
        # A match writes a new PGN: --pgn naming the opening book, the model or last
        # night's 400 games emptied it, exit 0.
        raise ConfigError(f"--pgn {config.pgn} exists ({config.pgn.stat().st_size:,} bytes): "
                          "a match writes a new PGN and would replace it",
                          "give a new file name (without --pgn each match gets its own "
                          "match-<time>.pgn), or move that file away first")
    return under_test, opponent_spec, config


MAX_CONCURRENCY = 64


def check_pgn_target(path: Path) -> None:
    """--pgn before any game: a file that can be written, not a folder, a FIFO (a match that
    hung for ever) or a device; a new one under a folder that can be written."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ConfigError(f"--pgn {path} cannot be used ({exc.strerror})",
                          "give a file in a folder you can write") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, a device)"
        raise ConfigError(f"--pgn {path} is {kind}: a match writes its games to a file",
                          "give a file name, e.g. --pgn matches/today.pgn")
    if mode is None:  # a new file: its folder made now, under one it can write
        from podcycle.runs import nearest_existing

        existing = nearest_existing(path.parent)  # a file on the way: stat said ENOTDIR
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"--pgn {path}: {existing} cannot be written",
                              "give a file in a folder you can write")
        try:
            # os.access says yes to root everywhere: /proc/x/y.pgn failed only once the
            # match had played, told to "free space".
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--pgn {path}: its folder {path.parent} cannot be made "
                              f"({exc.strerror})",
                              "give a file in a folder you can write") from None


# -- the cycle's strength check --------------------------------------------------------------
STRENGTH_TC = "movetime=0.05"
STRENGTH_MAX_MOVES = 150
STRENGTH_SPRT = "elo0=0,elo1=10"


def check_strength_flags(games: Any, opponent: str | None, artifacts_dir: Path) -> int:
    """--strength-games/--strength-opponent checked before a cycle creates anything."""
    from podcycle.cli import number

    # eval.match's bound: 10^11 games were taken, trained for, then played for ever.
    n = number("strength-games", games, minimum=0, maximum=MAX_GAMES, example=2) or 0
    if n % 2:
        raise ConfigError(f"--strength-games must be even (each opening is played with both "
                          f"colours), got {n}",
                          f"e.g. --strength-games {n + 1 if n < MAX_GAMES else n - 1}")
    if opponent and not n:
        # Taken and dropped in silence: no match was played, and a --resume plays the run's
        # own check (its own opponent) when it gives no count.
        raise ConfigError(f"--strength-opponent {opponent} is used only with --strength-games "
                          "N (the games to play against it)",
                          "add --strength-games N (even, e.g. 20), or leave out "
                          "--strength-opponent")
    if n and opponent:
        parse_opponent(opponent, artifacts_dir=artifacts_dir, flag="--strength-opponent",
                       probe=True)
    return n


def previous_run(artifacts_dir: Path, run_id: str, dataset_sha256: str | None,
                 before: float | None = None) -> str | None:
    """The latest other finished run on the same dataset that collected a model, among those
    created before `before` (the run's own creation, when known): a run validated again later
    was matched against a newer run, where "the previous run" was said."""
    from podcycle.runs import RunFolder

    if not dataset_sha256 or not Path(artifacts_dir).is_dir():
        return None
    found: list[tuple[float, str]] = []
    for folder in Path(artifacts_dir).iterdir():
        if folder.name == run_id or not (folder / "state.json").is_file():
            continue
        try:
            state = RunFolder(Path(artifacts_dir), folder.name).state
        except (PodCycleError, ValueError, TypeError, KeyError):
            continue  # another version's state, or not a run
        if before is not None and (state.created_at is None or state.created_at >= before):
            continue
        if state.outcome == "ok" and state.dataset is not None and \
                state.dataset.sha256 == dataset_sha256 and \
                (folder / "collected" / "run_artifacts" / "model.pt").is_file():
            found.append((state.created_at or 0.0, folder.name))
    return max(found)[1] if found else None


def utc_stamp() -> str:
    """A match file's time, in UTC as run ids and every time pod-cycle shows (the local
    time named files 08:02 that the reports said were 02:17)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def strength_check(run: Any, games: int, opponent: str | None, artifacts_dir: Path,
                   announce: Callable[[str], None]) -> dict[str, Any]:
    """The collected model of `run` against an opponent (default: the previous finished run
    on the same dataset, else random), with an SPRT [0, 10]; the summary is returned."""
    model = run.run_artifacts / "model.pt"
    if not opponent:
        dataset = run.state.dataset
        earlier = previous_run(artifacts_dir, run.run_id, dataset.sha256 if dataset else None,
                               run.state.created_at)
        opponent = f"run:{earlier}" if earlier else "random"
    rival = parse_opponent(opponent, artifacts_dir=artifacts_dir, flag="--strength-opponent")
    config = MatchConfig(games=games, openings=load_openings(DEFAULT_OPENINGS),
                         tc=parse_tc(STRENGTH_TC), rules=Rules(max_moves=STRENGTH_MAX_MOVES),
                         sprt=parse_sprt(STRENGTH_SPRT),
                         pgn=run.path / "strength" / f"match-{utc_stamp()}.pgn")
    announce(f"strength: {games} games against {rival.name} (PGN {config.pgn})")
    result = run_match(model_spec(model, name=f"chessbot:{run.run_id}"), rival, config,
                       progress=announce)
    if result.interrupted:
        raise KeyboardInterrupt
    summary = result.summary()
    summary["opponent_spec"] = opponent
    return summary


# Under this many game pairs the pentanomial interval (fishtest's, made for hundreds of
# pairs) is too narrow to hold: 4 pairs all won-and-drawn gave ±14 Elo where W/D/L alone
# give ±189. It is still shown, with this said beside it.
FEW_PAIRS = 20


def caveats(summary: dict[str, Any]) -> list[str]:
    """What makes a match's numbers weaker than they look: games ended by an engine's
    failure rather than by play, and too few pairs for the interval."""
    said = []
    failures = summary.get("failures") or []
    if failures:
        said.append(f"{len(failures)} of {summary['games']} games ended by an engine failure, "
                    "not by play")
    pairs = sum(summary.get("pentanomial") or [])
    if summary.get("elo") is not None and pairs < FEW_PAIRS:
        said.append(f"only {pairs} game pair(s): too few for the interval to hold")
    return said


def strength_line(summary: dict[str, Any]) -> str:
    """One line for reports and summaries."""
    text = (f"W {summary['wins']} D {summary['draws']} L {summary['losses']} against "
            f"{summary['opponent']}")
    if summary.get("elo") is not None:
        text += f", Elo {summary_elo_text(summary)}"
    if summary.get("sprt"):
        text += f", SPRT [{summary['sprt']['elo0']:g}, {summary['sprt']['elo1']:g}]: " \
                f"{summary['sprt']['verdict']} (LLR {summary['sprt']['llr']:.2f})"
    said = caveats(summary)
    return text + (f" ({'; '.join(said)})" if said else "")
