"""PGN games → a dataset folder (train.jsonl / val.jsonl, one {"fen", "move", "game"} a line).

Reads .pgn, .pgn.gz and .pgn.zst (Lichess database months), one or many files; a file given
twice (another spelling, a symlink, a byte-identical copy) is read once. The reading process
cuts the text into games where python-chess would (comments may span lines and hold "[" or
blank lines; a byte-order mark is skipped; a headers-only game ends where the next game's tags
begin); worker processes parse them with python-chess's reader and label every position of
the main line (comments, variations and NAGs are ignored) with the move played or with
Debian's stockfish at a fixed depth (one engine per worker, always closed). Only positions
that are legal in standard chess are written: a null move ("--", "Z0") gives no row, and a
position made impossible by one (a side that passed while in check) is dropped; variant games
(Chess960, also from a FEN start; Crazyhouse, Atomic, ...) are filtered, not malformed. A game
goes whole to train or to val, chosen by a seeded hash of its moves, so the same game met
twice lands in one split, the split does not depend on the workers, and a second run with the
same seed writes the same bytes. A game python-chess cannot read is skipped and counted by
reason with the file and line of the first one; the run never stops on one bad game.

    python -m chessbot.pgn_import games.pgn.zst --out data/dataset/lichess --min-elo 1800
"""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import chess
import chess.pgn

from chessbot.procpool import ordered_map, stopping

RESULTS = ("1-0", "0-1", "1/2-1/2", "*")
SUFFIXES = (".pgn", ".pgn.gz", ".pgn.zst")
SPEEDS = ("ultrabullet", "bullet", "blitz", "rapid", "classical", "correspondence")
STANDARD_VARIANTS = {"", "standard", "chess", "from position", "fromposition"}


GIVE_PGN = ("pass PGN text files with --pgn (.pgn, .pgn.gz or .pgn.zst; quote a glob: "
            "--pgn 'games/*.pgn')")


class ImportProblem(Exception):
    """A problem with the inputs or options as a whole (not with one game); `remedy` says
    what to do when the message does not already."""

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy


@dataclass
class Options:
    label: str = "played"          # played | stockfish
    depth: int = 8                 # stockfish search depth
    min_elo: int = 0               # both players at least this (0: no filter)
    max_games: int = 0             # stop after this many kept games (0: all)
    skip_plies: int = 0            # drop the first N plies of each game
    time_control: tuple[str, ...] = ()   # speeds kept (Lichess categories); () = all
    val_fraction: float = 0.1
    seed: int = 1
    workers: int = 0
    stockfish: str | None = None


@dataclass
class Report:
    files: list[dict[str, Any]] = field(default_factory=list)
    games_read: int = 0
    games_kept: int = 0
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)   # malformed
    filtered: dict[str, int] = field(default_factory=dict)             # by the filters
    positions: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    games: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    dropped: dict[str, int] = field(default_factory=dict)   # positions, by reason
    ignored: list[dict[str, str]] = field(default_factory=list)  # inputs read once

    def skip(self, reason: str, where: str, detail: str) -> None:
        entry = self.skipped.setdefault(reason, {"count": 0, "first": f"{where}: {detail}"})
        entry["count"] += 1

    def as_dict(self, options: Options, seconds: float) -> dict[str, Any]:
        return {
            "files": self.files, "games_read": self.games_read, "games_kept": self.games_kept,
            "games_skipped": sum(e["count"] for e in self.skipped.values()),
            "skipped_by_reason": self.skipped, "filtered_by_reason": self.filtered,
            "games": self.games, "positions": self.positions,
            "positions_dropped": self.dropped, "inputs_ignored": self.ignored,
            "label": options.label if options.label == "played"
            else f"stockfish depth {options.depth}",
            "options": {"min_elo": options.min_elo, "max_games": options.max_games,
                        "skip_plies": options.skip_plies,
                        "time_control": list(options.time_control),
                        "val_fraction": options.val_fraction, "seed": options.seed},
            "seconds": round(seconds, 2),
        }


# -- inputs ------------------------------------------------------------------------------

def split_inputs(text: str) -> list[str]:
    """The files and globs of --pgn's one argument, separated by commas; an argument that
    names an existing file is that file (`games, 2024.pgn` is no two files)."""
    if os.path.exists(os.path.expanduser(text.strip())):
        return [text.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def expand_inputs(patterns: list[str], ignored: list[dict[str, str]] | None = None
                  ) -> list[Path]:
    """Files and globs → existing PGN files, in the order given (each glob sorted), each file
    once: a second spelling of a path, a symlink to it or a byte-identical copy is left out
    (and listed in `ignored`), so no game can sit in both splits by being read twice."""
    if not patterns:
        raise ImportProblem("no PGN files given: pass one or more .pgn, .pgn.gz or .pgn.zst "
                            "files (globs allowed)")
    files: list[Path] = []
    real: dict[Path, Path] = {}
    for pattern in patterns:
        literal = os.path.expanduser(pattern)
        # A file named like a glob (`g[1].pgn`) is that file; otherwise [1] matched `g1.pgn`.
        matches = sorted(glob.glob(literal)) if glob.has_magic(pattern) \
            and not os.path.exists(literal) else [literal]
        if not matches:
            raise ImportProblem(f"{pattern}: no file matches",
                                GIVE_PGN)
        for match in matches:
            path = Path(match)
            if path.is_dir():
                raise ImportProblem(f"{path} is a folder: pass the files in it, e.g. "
                                    f"'{path}/*.pgn' (quoted)")
            if not path.is_file():
                raise ImportProblem(f"{path}: not a regular file (a FIFO or a device)"
                                    if path.exists() else
                                    f"{path}: a symbolic link that leads to no file (its "
                                    "target is missing, or links lead back in a loop)"
                                    if path.is_symlink() else f"{path}: no such file",
                                    GIVE_PGN)
            if not path.name.lower().endswith(SUFFIXES):
                raise ImportProblem(f"{path}: not a PGN file (expected {', '.join(SUFFIXES)})")
            try:
                open(path, "rb").close()
            except OSError as exc:
                raise ImportProblem(f"{path}: cannot be read ({exc.strerror})") from None
            head = _head(path, 1 << 16)
            if _binary(head):
                wide = _utf16(head)  # Windows "Unicode" text, not binary data
                if wide:
                    raise ImportProblem(f"{path}: {wide} text, where PGN is read as UTF-8",
                                        f"convert it: {_to_utf8(path, wide)}")
                raise ImportProblem(f"{path}: not PGN text (its start is binary data: NUL "
                                    "bytes, or mostly bytes that are not UTF-8)",
                                    "a compressed file must end in .gz or .zst; pass PGN text")
            resolved = path.resolve()
            if resolved in real:
                if path != real[resolved] and ignored is not None:
                    ignored.append({"path": str(path), "same_as": str(real[resolved]),
                                    "why": "the same file"})
                continue
            real[resolved] = path
            files.append(path)
    return _distinct_content(files, ignored)


def _distinct_content(files: list[Path], ignored: list[dict[str, str]] | None) -> list[Path]:
    """Leave out files whose bytes equal an earlier file's (hashed only when sizes match)."""
    by_size: dict[int, list[Path]] = {}
    for path in files:
        by_size.setdefault(path.stat().st_size, []).append(path)
    first_of: dict[str, Path] = {}
    copies: set[Path] = set()
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for path in same_size:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
            key = digest.hexdigest()
            if key in first_of:
                copies.add(path)
                if ignored is not None:
                    ignored.append({"path": str(path), "same_as": str(first_of[key]),
                                    "why": "the same content"})
            else:
                first_of[key] = path
    return [path for path in files if path not in copies]


class CountingReader(io.RawIOBase):
    """Counts the compressed bytes read from a file, for progress and ETA."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class ZstdFrames(io.RawIOBase):
    """Decompressed .zst, every frame in turn, that refuses a file cut inside a frame
    (zstandard's stream_reader returns what it has and says nothing: a half-downloaded
    archive would import as a shorter one)."""

    def __init__(self, raw: Any) -> None:
        import zstandard

        self.raw, self.pending, self.fed = raw, b"", False
        self.new = zstandard.ZstdDecompressor().decompressobj
        self.frame = self.new()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if self.fed and not self.frame.eof:
                    raise EOFError("the data ends inside a zstd frame: the file is truncated")
                return 0
            while chunk:
                if self.frame.eof:
                    self.frame, self.fed = self.new(), False
                self.pending += self.frame.decompress(chunk)
                self.fed = True
                chunk = self.frame.unused_data if self.frame.eof else b""
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def _binary(head: str | None) -> bool:
    """The file's first 64 KiB (decompressed: _head) hold a NUL byte or are over a tenth
    bytes that are not UTF-8: random or binary data, which the lenient PGN reader would
    otherwise mine for a few accidental "games". A damaged archive (no head) is left to the
    import to report."""
    return head is not None and ("\x00" in head or head.count("\ufffd") > len(head) / 10)


def _head(path: Path, size: int) -> str | None:
    """The file's first `size` characters, decompressed; None when it cannot be read."""
    try:
        text, raw = open_text(path)
        with text:
            return text.read(size)
    except _read_errors():
        return None


def _utf16(head: str) -> str | None:
    """The encoding, when a file's start (_head) is UTF-16 text, which was refused as binary
    data: "UTF-16" after a byte-order mark, else "UTF-16LE" or "UTF-16BE" by the side of
    each ASCII character its NUL is on. None for anything else (a file of zeros too: NULs on
    both sides)."""
    marked = head.startswith("\ufffd\ufffd")  # FF FE or FE FF: neither is UTF-8
    body = head[2:] if marked else head
    for nuls, chars, order in ((body[1::2], body[0::2], "LE"), (body[0::2], body[1::2], "BE")):
        if len(chars) >= 4 and nuls.count("\x00") >= 0.9 * len(nuls) and \
                sum(c.isprintable() or c in "\r\n\t" for c in chars) >= 0.9 * len(chars):
            return "UTF-16" if marked else f"UTF-16{order}"
    return None


def _to_utf8(path: Path, encoding: str) -> str:
    """The shell command that writes `path` (compressed or not) as UTF-8 beside it."""
    import shlex

    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    out = path.with_name(name.removesuffix(".pgn") + "-utf8.pgn")
    read = {".gz": "gzip -dc", ".zst": "zstd -dc"}.get(path.suffix.lower())
    convert = f"iconv -f {encoding} -t UTF-8"
    source, target = shlex.quote(str(path)), shlex.quote(str(out))
    return (f"{read} {source} | {convert} > {target}" if read
            else f"{convert} {source} > {target}")


def open_text(path: Path) -> tuple[TextIO, CountingReader]:
    raw = CountingReader(open(path, "rb"))
    name = path.name.lower()
    if name.endswith(".zst"):
        stream: Any = io.BufferedReader(ZstdFrames(raw), buffer_size=1 << 20)
    elif name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=io.BufferedReader(raw))
    else:
        stream = io.BufferedReader(raw)
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None), raw


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or truncated .pgn/.gz/.zst raises while it is read."""
    import zstandard

    return (OSError, EOFError, ValueError, zstandard.ZstdError)


TAG_NAME = re.compile(r"\[\s*([A-Za-z0-9][A-Za-z0-9_+#=:-]*)")
TAG_LINE = re.compile(r"^\[[A-Za-z0-9][A-Za-z0-9_+#=:-]*\s+\"[^\r]*\"\]\s*$")
COMMENT_MARKS = re.compile(r"[;{}]")


def split_games(handle: TextIO) -> Iterator[tuple[int, str]]:
    """Cut PGN text into games: (line number of the game's first line, its text), where
    python-chess's reader would end them: a blank line after movetext ends a game, a comment
    ({...}, which may span lines and hold "[" or blank lines; ; to the end of the line) never
    does. Kinder than python-chess in two ways: tags right after movetext start a new game
    without the blank line, and a headers-only game ends where the next game's tags begin
    (after a blank line, an [Event] or a tag it already has), instead of lending its tags (a
    FEN, a Variant) to that game. Byte-order marks (files joined with cat have them mid-way)
    and % escape lines are dropped."""
    lines: list[str] = []
    start = 0
    phase = ""          # "", "tags" or "moves"
    tags: set[str] = set()
    blanks = 0          # blank lines since the last tag
    in_comment = False
    after_blank = False
    for number, line in enumerate(handle, start=1):
        if in_comment:
            stripped = line.strip()
            # A { never closed would make the rest of the file one game (python-chess reads
            # on to the end): a tag line after a blank line means the comment was cut.
            if after_blank and TAG_LINE.match(stripped) and TAG_NAME.match(stripped).group(1) \
                    == "Event":
                yield start, "".join(lines)
                lines, phase, in_comment = [], "", False
            else:
                after_blank = not stripped
                lines.append(line)
                in_comment = _comment_open(line, True)
                continue
        line = line.lstrip("\ufeff")
        stripped = line.strip()
        if not stripped:
            if phase == "moves":
                yield start, "".join(lines)
                lines, phase = [], ""
            elif phase == "tags":
                blanks += 1
            continue
        if line.startswith("%") or (phase != "moves" and line.startswith(";")):
            continue  # an escape line, or a comment line between tags
        if stripped.startswith("["):
            name_match = TAG_NAME.match(stripped)
            name = name_match.group(1) if name_match else ""
            if phase == "moves" or (phase == "tags" and blanks and (
                    blanks >= 2 or name == "Event" or name in tags)):
                yield start, "".join(lines)
                lines, phase = [], ""
            if not lines:
                start, tags = number, set()
            phase, blanks = "tags", 0
            tags.add(name)
            lines.append(line.lstrip())
            continue
        if not lines:
            start = number
        phase = "moves"
        lines.append(line)
        in_comment = _comment_open(line, False)
        after_blank = False
    if lines:
        yield start, "".join(lines)


def _comment_open(line: str, in_comment: bool) -> bool:
    """Whether a {comment} is still open at the end of this movetext line."""
    for mark in COMMENT_MARKS.finditer(line):
        token = mark.group()
        if in_comment:
            in_comment = token != "}"
        elif token == "{":
            in_comment = True
        elif token == ";":
            break  # the rest of the line is a comment: a { there opens nothing
    return in_comment


# -- one game (in a worker) --------------------------------------------------------------

def speed_of(time_control: str) -> str | None:
    """Lichess's speed category of a TimeControl tag ("300+3", "-"), or None if unknown."""
    if time_control.strip() == "-":
        return "correspondence"
    try:
        base, _, increment = time_control.partition("+")
        seconds = int(base) + 40 * int(increment or 0)
    except ValueError:
        return None
    for limit, name in ((29, "ultrabullet"), (179, "bullet"), (479, "blitz"),
                        (1499, "rapid")):
        if seconds <= limit:
            return name
    return "classical"


def in_val(seed: int, game: int | str, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{game}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64 < fraction


def header_filter(headers: chess.pgn.Headers, options: Options) -> str:
    """Why the game's tags exclude it ("variant atomic", "Elo below minimum", ...) or ""."""
    variant = headers.get("Variant", "").strip().lower()
    if variant not in STANDARD_VARIANTS:
        return f"variant {variant}"
    if options.min_elo:
        try:
            elos = int(headers.get("WhiteElo", "")), int(headers.get("BlackElo", ""))
        except ValueError:
            return "no Elo"
        if min(elos) < options.min_elo:
            return "Elo below minimum"
    if options.time_control:
        speed = speed_of(headers.get("TimeControl", ""))
        if speed not in options.time_control:
            return f"time control {speed or 'unknown'}"
    return ""


class MainLine(chess.pgn.BaseVisitor["MainLine"]):
    """python-chess's reader, keeping the tags, the start position and the main line only:
    side lines are skipped unparsed (a bad move in one does not spoil the game), and a game
    the tags filter out is skipped before any move is parsed."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def begin_game(self) -> None:
        self.headers = chess.pgn.Headers()
        self.start: chess.Board | None = None
        self.moves: list[chess.Move] = []
        self.errors: list[Exception] = []
        self.filtered = ""

    def begin_headers(self) -> chess.pgn.Headers:
        return self.headers

    def visit_header(self, tagname: str, tagvalue: str) -> None:
        if tagname == "Variant" and tagvalue.strip().lower() in STANDARD_VARIANTS:
            return  # python-chess knows some spellings of standard chess, not all of them
        self.headers[tagname] = tagvalue

    def end_headers(self) -> Any:
        self.filtered = header_filter(self.headers, self.options)
        return chess.pgn.SKIP if self.filtered else None

    def visit_board(self, board: chess.Board) -> None:
        if self.start is None:
            self.start = board.copy(stack=False)

    def begin_variation(self) -> Any:
        return chess.pgn.SKIP

    def visit_move(self, board: chess.Board, move: chess.Move) -> None:
        self.moves.append(move)

    def handle_error(self, error: Exception) -> None:
        self.errors.append(error)

    def result(self) -> MainLine:
        return self


_ENGINE: Any = None


def _engine(options: Options) -> Any:
    """This process's engine, started on first use; close_engine() ends it."""
    global _ENGINE
    if _ENGINE is None:
        import chess.engine

        try:
            _ENGINE = chess.engine.SimpleEngine.popen_uci(options.stockfish or "stockfish",
                                                          timeout=ENGINE_TIMEOUT)
            _ENGINE.configure({"Threads": 1, "Hash": 16})
        except (chess.engine.EngineError, OSError, TimeoutError) as exc:
            raise ImportProblem(_engine_failed(options.stockfish, exc)) from None
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            # A pool worker (chessbot.procpool) is ended by its pool's sentinel, and runs
            # multiprocessing's exit hooks before it waits for the engine's reader thread.
            from multiprocessing.util import Finalize

            Finalize(None, close_engine, exitpriority=10)
    return _ENGINE


def close_engine() -> None:
    """Quit this process's engine. Its reader thread is not a daemon, so an engine left
    open keeps the interpreter from exiting (atexit handlers run only after such threads
    end): every path that may have started one closes it."""
    global _ENGINE
    engine, _ENGINE = _ENGINE, None
    if engine is not None:
        try:
            engine.quit()
        except Exception:  # noqa: BLE001 - an engine that died already is closed enough
            engine.close()


ENGINE_TIMEOUT = 20.0  # seconds for the engine to start and answer "uci"


def _engine_failed(path: str | None, exc: BaseException) -> str:
    why = str(exc).strip() or type(exc).__name__
    return (f"--label stockfish: the engine {path or 'stockfish'} does not work as a UCI "
            f"engine ({why}); install Debian's (sudo apt-get install stockfish) and put it "
            "first on PATH, or import with --label played")


def probe_engine(path: str) -> None:
    """Start the engine, ask for one move, quit: a broken engine is refused before any
    work, in one line, not met as a traceback in a worker."""
    import chess.engine

    try:
        with chess.engine.SimpleEngine.popen_uci(path, timeout=ENGINE_TIMEOUT) as engine:
            if engine.play(chess.Board(), chess.engine.Limit(depth=1)).move is None:
                raise chess.engine.EngineError("it gave no move in the start position")
    except (chess.engine.EngineError, OSError, TimeoutError) as exc:
        raise ImportProblem(_engine_failed(path, exc)) from None


def process_game(options: Options, index: int, text: str, last: bool = False
                 ) -> tuple[str, str, list[str], dict[str, int], str]:
    """(status, detail, lines, dropped, key): status "kept", "skip:<reason>" (python-chess
    reports an error, or the file's `last` game has movetext without a result: a file cut
    short) or "filter:<reason>"; lines are the JSONL lines of the game's positions, dropped
    counts positions left out by reason, key (the start and the moves) chooses the split."""
    import logging

    import chess.engine

    logging.getLogger("chess.pgn").setLevel(logging.CRITICAL)  # errors are counted instead
    # "Not transmitting history with null moves to UCI engine", once per such position of a
    # --label stockfish import, reached the terminal: the search is the same without it.
    logging.getLogger("chess.engine").setLevel(logging.ERROR)
    lines_in = text.splitlines()
    tags = next((i for i, line in enumerate(lines_in) if not line.startswith("[")),
                len(lines_in))
    movetext = [line for line in lines_in[tags:] if line.strip()]
    tokens = " ".join(movetext).split()
    ends_with_result = bool(tokens) and tokens[-1] in RESULTS
    if last and movetext and not ends_with_result:
        return "skip:truncated", "no result at the end of the file's last game", [], {}, ""
    try:
        game = chess.pgn.read_game(io.StringIO(text), Visitor=lambda: MainLine(options))
    except Exception as exc:  # noqa: BLE001 - a bad game never stops the import
        return "skip:unreadable", f"{type(exc).__name__}: {exc}", [], {}, ""
    if game is None:
        return "skip:empty", "no game in this text", [], {}, ""
    if game.filtered:
        return f"filter:{game.filtered}", "", [], {}, ""
    if game.errors:
        detail = str(game.errors[0]).splitlines()[0][:200]
        if game.start is None:
            return "skip:bad start position", detail, [], {}, ""
        return f"skip:{'bad move' if ends_with_result else 'truncated'}", detail, [], {}, ""
    board = game.start
    assert board is not None
    if board.chess960 or type(board) is not chess.Board:
        # From a FEN whose castling rights only Chess960 has (king-takes-rook castling):
        # not the rules the trainer's move encoding uses.
        return f"filter:variant {'chess960' if board.chess960 else board.uci_variant}", \
            "", [], {}, ""
    if not game.moves:
        return "filter:no moves", "", [], {}, ""
    key = board.fen() + " " + " ".join(move.uci() for move in game.moves)
    lines: list[str] = []
    dropped: Counter[str] = Counter()
    suspect = not board.is_valid()  # a FEN start, or after a null move: check each position
    for ply, move in enumerate(game.moves):
        if ply >= options.skip_plies:  # a move was played here: the position has one
            if not move:
                dropped["null move"] += 1
            elif suspect and not board.is_valid():
                dropped["impossible position"] += 1
            else:
                label = move
                if options.label == "stockfish":
                    try:
                        label = _engine(options).play(
                            board, chess.engine.Limit(depth=options.depth)).move
                    except chess.engine.EngineError as exc:
                        raise ImportProblem(_engine_failed(options.stockfish, exc)) from None
                if label:
                    lines.append(json.dumps({"fen": board.fen(), "move": label.uci(),
                                             "game": index}))
        board.push(move)
        suspect = suspect or not move
    if not lines:
        if dropped:
            return "filter:no position legal in standard chess", "", [], dict(dropped), key
        return "filter:no positions after --skip-plies", "", [], {}, key
    return "kept", "", lines, dict(dropped), key


def _work(job: tuple[Options, list[tuple[int, str, bool]]]
          ) -> list[tuple[str, str, list[str], dict[str, int], str]]:
    options, games = job
    done = []
    for index, text, last in games:
        if stopping():  # the import has stopped (Ctrl-C, --max-games): this batch is dropped
            break
        done.append(process_game(options, index, text, last))
    return done


# -- the whole import --------------------------------------------------------------------

# A write of the dataset that failed: a full disk, a quota, a file-size limit (ulimit -f).
OUT_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
TEMP_FILE = re.compile(r"^\.(?:train\.jsonl|val\.jsonl|import_report\.json)\.\d+\.tmp$")
DATASET_FILES = ("train.jsonl", "val.jsonl", "import_report.json")


def run_import(patterns: list[str], out: Path, options: Options, overwrite: bool = False,
               progress: Callable[[dict[str, Any]], None] | None = None,
               notice: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Import PGN files into dataset folder `out`; returns the import report (also written
    to out/import_report.json). Raises ImportProblem for bad inputs or options, before
    anything is created. `notice` hears what the import decided on its own (an input read
    once, temporary files of an interrupted import removed)."""
    report = Report()
    files = expand_inputs(patterns, report.ignored)
    for entry in report.ignored:
        if notice:
            notice(f"{entry['path']}: {entry['why']} as {entry['same_as']}; read once")
    check_options(options)
    out = Path(out)
    stale = check_out(out, overwrite)
    workers = options.workers or _cores()
    created = _make_folder(out)
    for path in stale:
        path.unlink(missing_ok=True)
    if stale and notice:
        notice(f"{out}: removed {len(stale)} temporary file(s) left by an interrupted import")
    tmp = {split: out / f".{split}.jsonl.{os.getpid()}.tmp" for split in ("train", "val")}
    handles: dict[str, TextIO] = {}
    started = time.perf_counter()
    total_bytes = sum(p.stat().st_size for p in files)
    done_bytes = 0
    try:
        try:
            for split, path in tmp.items():
                handles[split] = _locked(path)
        except OSError as exc:
            raise ImportProblem(f"--out {out}: cannot write there ({exc.strerror}); choose "
                                "another --out") from None
        for path in files:
            handle, raw = open_text(path)
            entry = {"path": str(path), "bytes": path.stat().st_size, "games": 0}
            report.files.append(entry)
            first_game = report.games_read
            try:
                with handle:
                    stop = _import_file(path, handle, options, workers, report, handles,
                                        lambda base=done_bytes, raw=raw: progress and progress(
                                            _progress(report, started, base + raw.count,
                                                      total_bytes)))
            except _read_errors() as exc:
                if isinstance(exc, OSError) and exc.errno in OUT_FULL:
                    raise  # the dataset's write failed, not the PGN's read: said below
                raise ImportProblem(f"{path}: cannot be read past game {report.games_read} "
                                    f"({type(exc).__name__}: {exc}); is the file complete? "
                                    "the games before it were not kept") from None
            entry["games"] = report.games_read - first_game
            done_bytes += entry["bytes"]
            if stop:
                break
        close_engine()
        for handle in handles.values():
            handle.flush()
        if report.games_kept == 0:
            raise ImportProblem(_nothing_kept(report),
                                "check the files hold PGN games ([Event ...] headers, then "
                                "moves)" if report.games_read == 0 else "")
        for split in ("train", "val"):
            if not report.positions[split]:
                raise ImportProblem(
                    f"the {split} split is empty: {report.games_kept} games kept, split by game "
                    f"with --val-fraction {options.val_fraction}; import more games or change "
                    "--val-fraction")
        summary = report.as_dict(options, time.perf_counter() - started)
        report_tmp = out / f".import_report.json.{os.getpid()}.tmp"
        tmp["report"] = report_tmp
        handles["report"] = _locked(report_tmp)
        handles["report"].write(json.dumps(summary, indent=2) + "\n")
        # Every file written out before anything is renamed: a close that fails for want of
        # room (the report's, last) left train and val in place of the old dataset, with
        # "nothing was kept" said.
        # (Flushed, not closed: each keeps its lock until its rename, see _locked.)
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
        # Old files go first: an import killed between the renames leaves a dataset with a
        # split missing (refused by validation), never new train beside old val.
        for name in DATASET_FILES:
            (out / name).unlink(missing_ok=True)
        for split, path in tmp.items():
            handles[split].close()
            path.replace(out / ("import_report.json" if split == "report"
                                else f"{split}.jsonl"))
    except BaseException as exc:
        close_engine()
        for split, path in tmp.items():
            if split in handles:
                try:
                    handles[split].close()
                except OSError:  # what it still buffers cannot be written either (ENOSPC)
                    pass
            path.unlink(missing_ok=True)  # never left to keep a full disk full
        if created and not any(out.iterdir()):
            out.rmdir()
        if isinstance(exc, OSError) and exc.errno in OUT_FULL:
            raise ImportProblem(f"--out {out}: the dataset could not be written ("
                                f"{exc.strerror or exc}); nothing was kept",
                                "free space there (or raise the file-size limit, ulimit -f), "
                                "or choose another --out") from None
        raise
    if progress:
        progress(_progress(report, started, total_bytes, total_bytes, final=True))
    return summary


def _locked(path: Path) -> TextIO:
    """A new file, open for writing, that holds an OS lock while this process lives: the
    next import tells a live import's temporary file from one a killed import left."""
    import fcntl

    handle = open(path, "w", encoding="utf-8")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def _left_by_a_dead_import(path: Path) -> bool:
    import fcntl

    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True  # gone already, or unreadable: not a live import's file
    return True


def check_out(out: Path, overwrite: bool) -> list[Path]:
    """Refuse an --out that cannot take the dataset, before any work; returns the temporary
    files a killed import left there (removed once the import starts)."""
    if out.exists() and not out.is_dir():
        raise ImportProblem(f"--out {out} is a file: --out must be a folder (new, or holding "
                            "a dataset to replace with --overwrite)")
    existing = out
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            raise ImportProblem(f"--out {out}: {existing} is a broken symlink; choose another "
                                "--out")
        existing = existing.parent
    if not existing.is_dir():
        raise ImportProblem(f"--out {out}: {existing} is a file, so no folder can be made "
                            "there; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImportProblem(f"--out {out}: {existing} is not writable; choose another --out")
    if existing != out:
        return []
    stale, busy, others = [], [], []
    for entry in sorted(out.iterdir()):
        if TEMP_FILE.match(entry.name):
            (stale if _left_by_a_dead_import(entry) else busy).append(entry)
        elif entry.name not in DATASET_FILES or not entry.is_file():
            others.append(entry.name + ("/" if entry.is_dir() else ""))
    if busy:
        raise ImportProblem(f"--out {out}: another import is writing there now ({busy[0].name});"
                            " wait for it to finish, or choose another --out")
    ours = [name for name in DATASET_FILES if (out / name).is_file()]
    if others and (overwrite or not ours):
        raise ImportProblem(f"--out {out} holds files that are not a dataset "
                            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                            "choose another --out (an empty or new folder)")
    if ours and not overwrite:
        raise ImportProblem(f"{out} already has a dataset ({', '.join(ours)}): pass "
                            "--overwrite to replace it, or choose another --out")
    return stale


def _make_folder(out: Path) -> bool:
    """Create --out (and its parents) if needed; True when it was created here."""
    if out.is_dir():
        return False
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise ImportProblem(f"--out {out}: cannot create the folder ({exc.strerror}); choose "
                            "another --out") from None
    return True


def _import_file(path: Path, handle: TextIO, options: Options, workers: int, report: Report,
                 outputs: dict[str, TextIO], tick: Callable[[], Any]) -> bool:
    """Import one file; True when --max-games was reached."""
    batch_size = 64 if options.label == "played" else 4
    starts: dict[int, int] = {}

    def jobs() -> Iterator[tuple[Options, list[tuple[int, str, bool]]]]:
        batch: list[tuple[int, str, bool]] = []
        pending: tuple[int, str] | None = None
        for index, (line, text) in enumerate(split_games(handle), start=report.games_read):
            starts[index] = line
            if pending is not None:
                batch.append((*pending, False))
            pending = index, text
            if len(batch) >= batch_size:
                yield options, batch
                batch = []
        if pending is not None:
            batch.append((*pending, True))  # the file's last game: where a cut file ends
        if batch:
            yield options, batch

    index = report.games_read
    last_tick = time.monotonic()
    for results in _map(jobs(), workers):
        for status, detail, lines, dropped, key in results:
            line = starts.pop(index, 0)
            report.games_read += 1
            kind, _, reason = status.partition(":")
            for why, count in dropped.items():
                report.dropped[why] = report.dropped.get(why, 0) + count
            if kind == "skip":
                report.skip(reason, f"{path}:{line}", detail)
            elif kind == "filter":
                report.filtered[reason] = report.filtered.get(reason, 0) + 1
            else:
                split = "val" if in_val(options.seed, key, options.val_fraction) else "train"
                outputs[split].write("\n".join(lines) + "\n")
                report.games[split] += 1
                report.positions[split] += len(lines)
                report.games_kept += 1
                if options.max_games and report.games_kept >= options.max_games:
                    return True
            index += 1
        now = time.monotonic()
        if now - last_tick >= 2:
            last_tick = now
            tick()
    return False


def _map(jobs: Iterator, workers: int) -> Iterator[list]:
    """_work over the jobs, in order, on `workers` processes, with at most a few batches in
    flight (Pool.imap alone would read the whole input ahead into memory), ending cleanly
    when the import stops early (chessbot.procpool)."""
    return ordered_map(_work, jobs, workers)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _progress(report: Report, started: float, done: int, total: int,
              final: bool = False) -> dict[str, Any]:
    seconds = max(time.perf_counter() - started, 1e-9)
    positions = report.positions["train"] + report.positions["val"]
    fraction = done / total if total else 1.0
    eta = seconds * (1 - fraction) / fraction if 0 < fraction < 1 else 0.0
    return {"games": report.games_read, "kept": report.games_kept, "positions": positions,
            "games_per_s": report.games_read / seconds, "positions_per_s": positions / seconds,
            "fraction": fraction, "eta_s": eta, "seconds": seconds, "final": final}


def _nothing_kept(report: Report) -> str:
    if report.games_read == 0:
        return "no games found in the input: is it PGN text?"
    reasons = sorted({**{k: v["count"] for k, v in report.skipped.items()},
                      **report.filtered}.items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{reason}: {count}" for reason, count in reasons[:3])
    loosen = [flag for flag, words in (("--min-elo", ("Elo",)),
                                       ("--time-control", ("time control",)),
                                       ("--skip-plies", ("--skip-plies",)))
              if any(word in reason for reason, _ in reasons for word in words)]
    if loosen:
        return (f"none of the {report.games_read} games was kept ({top}); loosen "
                f"{', '.join(loosen)}")
    return (f"none of the {report.games_read} games was kept ({top}): the input holds no "
            "standard chess game that python-chess can read; pass other PGN files")


def check_options(options: Options) -> None:
    if options.label not in ("played", "stockfish"):
        raise ImportProblem(f"--label {options.label}: use played or stockfish")
    if options.label == "stockfish":
        found = options.stockfish or shutil.which("stockfish") or (
            "/usr/games/stockfish" if Path("/usr/games/stockfish").exists() else None)
        if not found:
            raise ImportProblem("--label stockfish needs the stockfish engine: sudo apt-get "
                                "install stockfish (Debian puts it in /usr/games)")
        if not 1 <= options.depth <= 40:
            raise ImportProblem(f"--depth {options.depth}: use a depth from 1 to 40")
        probe_engine(found)
        options.stockfish = found
    if not 0 < options.val_fraction < 1:
        raise ImportProblem(f"--val-fraction {options.val_fraction}: use a fraction between 0 "
                            "and 1 (both ends excluded: a dataset needs both splits), e.g. 0.1")
    for name in ("min_elo", "max_games", "skip_plies", "workers"):
        if getattr(options, name) < 0:
            raise ImportProblem(f"--{name.replace('_', '-')} cannot be negative")
    unknown = [t for t in options.time_control if t not in SPEEDS]
    if unknown:
        raise ImportProblem(f"--time-control {','.join(unknown)}: use one or more of "
                            f"{', '.join(SPEEDS)} (comma-separated)")


def format_progress(p: dict[str, Any]) -> str:
    head = "imported" if p["final"] else "importing"
    eta = "" if p["final"] else f", ETA {p['eta_s']:.0f}s"
    return (f"{head}: {p['games']:,} games read, {p['kept']:,} kept, {p['positions']:,} "
            f"positions ({p['games_per_s']:,.0f} games/s, {p['positions_per_s']:,.0f} "
            f"positions/s, {100 * p['fraction']:.0f}%{eta})")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m chessbot.pgn_import",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("pgn", nargs="+", help=".pgn, .pgn.gz or .pgn.zst files (globs ok)")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--label", default="played", choices=("played", "stockfish"))
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--min-elo", type=int, default=0)
    parser.add_argument("--max-games", type=int, default=0)
    parser.add_argument("--skip-plies", type=int, default=0)
    parser.add_argument("--time-control", default="")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    options = Options(label=args.label, depth=args.depth, min_elo=args.min_elo,
                      max_games=args.max_games, skip_plies=args.skip_plies,
                      time_control=tuple(t for t in args.time_control.split(",") if t),
                      val_fraction=args.val_fraction, seed=args.seed, workers=args.workers)
    try:
        report = run_import(args.pgn, args.out, options, args.overwrite,
                            lambda p: print(format_progress(p), file=sys.stderr, flush=True),
                            lambda text: print(text, file=sys.stderr, flush=True))
    except ImportProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
