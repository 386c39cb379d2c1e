"""PGN games → a dataset folder (train.jsonl / val.jsonl, one {"fen", "move", "game"} a line).

Reads .pgn, .pgn.gz and .pgn.zst (Lichess database months), one or many files. The reading
process cuts the text into games; worker processes parse them (python-chess) and label every
position of the main line (comments, variations and NAGs are ignored) with the move played or
with Debian's stockfish at a fixed depth (one engine per worker). A game goes whole to train or
to val, chosen by a seeded hash of its number, so the split does not depend on the workers and
a second run with the same seed writes the same bytes. A malformed game is skipped and counted
by reason with the file and line of the first one; the run never stops on one bad game.

    python -m chessbot.pgn_import games.pgn.zst --out data/dataset/lichess --min-elo 1800
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

RESULTS = ("1-0", "0-1", "1/2-1/2", "*")
SUFFIXES = (".pgn", ".pgn.gz", ".pgn.zst")
SPEEDS = ("ultrabullet", "bullet", "blitz", "rapid", "classical", "correspondence")
STANDARD_VARIANTS = {"", "standard", "chess", "from position", "fromposition"}


class ImportProblem(Exception):
    """A problem with the inputs or options as a whole (not with one game)."""


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

    def skip(self, reason: str, where: str, detail: str) -> None:
        entry = self.skipped.setdefault(reason, {"count": 0, "first": f"{where}: {detail}"})
        entry["count"] += 1

    def as_dict(self, options: Options, seconds: float) -> dict[str, Any]:
        return {
            "files": self.files, "games_read": self.games_read, "games_kept": self.games_kept,
            "games_skipped": sum(e["count"] for e in self.skipped.values()),
            "skipped_by_reason": self.skipped, "filtered_by_reason": self.filtered,
            "games": self.games, "positions": self.positions,
            "label": options.label if options.label == "played"
            else f"stockfish depth {options.depth}",
            "options": {"min_elo": options.min_elo, "max_games": options.max_games,
                        "skip_plies": options.skip_plies,
                        "time_control": list(options.time_control),
                        "val_fraction": options.val_fraction, "seed": options.seed},
            "seconds": round(seconds, 2),
        }


# -- inputs ------------------------------------------------------------------------------

def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files and globs → existing PGN files, in the order given (each glob sorted)."""
    if not patterns:
        raise ImportProblem("no PGN files given: pass one or more .pgn, .pgn.gz or .pgn.zst "
                            "files (globs allowed)")
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) \
            else [os.path.expanduser(pattern)]
        if not matches:
            raise ImportProblem(f"{pattern}: no file matches")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise ImportProblem(f"{path}: no such file")
            if not path.name.lower().endswith(SUFFIXES):
                raise ImportProblem(f"{path}: not a PGN file (expected {', '.join(SUFFIXES)})")
            if path not in files:
                files.append(path)
    return files


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


def split_games(handle: TextIO) -> Iterator[tuple[int, str]]:
    """Cut PGN text into games: (line number of the game's first line, its text). A game
    starts at a tag line ([...) that follows movetext, or at the first tag."""
    lines: list[str] = []
    start = 0
    in_moves = False
    for number, line in enumerate(handle, start=1):
        stripped = line.strip()
        if stripped.startswith("[") and in_moves:
            yield start, "".join(lines)
            lines, in_moves = [], False
        if not lines:
            if not stripped:
                continue
            start = number
        if stripped and not stripped.startswith(("[", "%")):
            in_moves = True
        lines.append(line)
    if lines:
        yield start, "".join(lines)


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


def in_val(seed: int, game: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{game}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64 < fraction


_ENGINE: Any = None


def _engine(options: Options) -> Any:
    global _ENGINE
    if _ENGINE is None:
        import atexit

        import chess.engine

        _ENGINE = chess.engine.SimpleEngine.popen_uci(options.stockfish or "stockfish")
        _ENGINE.configure({"Threads": 1, "Hash": 16})
        atexit.register(_ENGINE.quit)
    return _ENGINE


def process_game(options: Options, index: int, text: str) -> tuple[str, str, list[str]]:
    """(status, detail, lines): status "kept", "skip:<reason>" (malformed) or
    "filter:<reason>"; lines are the JSONL lines of the game's positions."""
    import logging

    import chess
    import chess.engine
    import chess.pgn

    logging.getLogger("chess.pgn").setLevel(logging.CRITICAL)  # errors are counted instead
    tokens = text.split()
    if not tokens or tokens[-1] not in RESULTS:
        return "skip:truncated", "no result at the end of the movetext", []
    try:
        game = chess.pgn.read_game(io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 - a bad game never stops the import
        return "skip:unreadable", f"{type(exc).__name__}: {exc}", []
    if game is None:
        return "skip:empty", "no game in this text", []
    if game.errors:
        return "skip:bad move", str(game.errors[0]).splitlines()[0][:200], []
    headers = game.headers
    variant = headers.get("Variant", "").strip().lower()
    if variant not in STANDARD_VARIANTS:
        return f"filter:variant {variant}", "", []
    if options.min_elo:
        try:
            elos = int(headers.get("WhiteElo", "")), int(headers.get("BlackElo", ""))
        except ValueError:
            return "filter:no Elo", "", []
        if min(elos) < options.min_elo:
            return "filter:Elo below minimum", "", []
    if options.time_control:
        speed = speed_of(headers.get("TimeControl", ""))
        if speed not in options.time_control:
            return f"filter:time control {speed or 'unknown'}", "", []
    board = game.board()
    if not board.is_valid():
        return "skip:bad start position", headers.get("FEN", ""), []
    lines = []
    for ply, move in enumerate(game.mainline_moves()):
        if ply >= options.skip_plies:  # a move was played here: the position has one
            label = move
            if options.label == "stockfish":
                label = _engine(options).play(board, chess.engine.Limit(depth=options.depth)).move
            if label is not None:
                lines.append(json.dumps({"fen": board.fen(), "move": label.uci(),
                                         "game": index}))
        board.push(move)
    if not lines:
        return "filter:no positions after --skip-plies", "", []
    return "kept", "", lines


def _work(job: tuple[Options, list[tuple[int, str]]]) -> list[tuple[str, str, list[str]]]:
    options, games = job
    return [process_game(options, index, text) for index, text in games]


# -- the whole import --------------------------------------------------------------------

def run_import(patterns: list[str], out: Path, options: Options, overwrite: bool = False,
               progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Import PGN files into dataset folder `out`; returns the import report (also written
    to out/import_report.json). Raises ImportProblem for bad inputs or options."""
    files = expand_inputs(patterns)
    check_options(options)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImportProblem(f"{out} is a file: --out must be a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ImportProblem(f"{out} already has files: pass --overwrite to replace the "
                            "dataset there, or choose another --out")
    workers = options.workers or _cores()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = {split: out / f".{split}.jsonl.{os.getpid()}.tmp" for split in ("train", "val")}
    report = Report()
    started = time.perf_counter()
    total_bytes = sum(p.stat().st_size for p in files)
    done_bytes = 0
    handles = {split: open(path, "w", encoding="utf-8") for split, path in tmp.items()}
    try:
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
                raise ImportProblem(f"{path}: cannot be read past game {report.games_read} "
                                    f"({type(exc).__name__}: {exc}); is the file complete? "
                                    "the games before it were not kept") from None
            entry["games"] = report.games_read - first_game
            done_bytes += entry["bytes"]
            if stop:
                break
        for handle in handles.values():
            handle.close()
        if report.games_kept == 0:
            raise ImportProblem(_nothing_kept(report))
        for split in ("train", "val"):
            if not report.positions[split]:
                raise ImportProblem(
                    f"the {split} split is empty: {report.games_kept} games kept, split by game "
                    f"with --val-fraction {options.val_fraction}; import more games or change "
                    "--val-fraction")
        for split, path in tmp.items():
            path.replace(out / f"{split}.jsonl")
    except BaseException:
        for split, path in tmp.items():
            handles[split].close()
            path.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    summary = report.as_dict(options, time.perf_counter() - started)
    (out / "import_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    if progress:
        progress(_progress(report, started, total_bytes, total_bytes, final=True))
    return summary


def _import_file(path: Path, handle: TextIO, options: Options, workers: int, report: Report,
                 outputs: dict[str, TextIO], tick: Callable[[], Any]) -> bool:
    """Import one file; True when --max-games was reached."""
    batch_size = 64 if options.label == "played" else 4
    starts: dict[int, int] = {}

    def jobs() -> Iterator[tuple[Options, list[tuple[int, str]]]]:
        batch: list[tuple[int, str]] = []
        for index, (line, text) in enumerate(split_games(handle), start=report.games_read):
            starts[index] = line
            batch.append((index, text))
            if len(batch) >= batch_size:
                yield options, batch
                batch = []
        if batch:
            yield options, batch

    index = report.games_read
    last_tick = time.monotonic()
    for results in _map(jobs(), workers):
        for status, detail, lines in results:
            line = starts.pop(index, 0)
            report.games_read += 1
            kind, _, reason = status.partition(":")
            if kind == "skip":
                report.skip(reason, f"{path}:{line}", detail)
            elif kind == "filter":
                report.filtered[reason] = report.filtered.get(reason, 0) + 1
            else:
                split = "val" if in_val(options.seed, index, options.val_fraction) else "train"
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
    flight (Pool.imap alone would read the whole input ahead into memory)."""
    if workers <= 1:
        yield from map(_work, jobs)
        return
    import multiprocessing
    import threading

    slots = threading.Semaphore(workers * 4)
    stop = threading.Event()

    def bounded() -> Iterator:
        for job in jobs:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            yield job

    context = multiprocessing.get_context("forkserver")
    pool = context.Pool(workers)
    try:
        for result in pool.imap(_work, bounded(), chunksize=1):
            slots.release()
            yield result
    finally:
        stop.set()
        pool.terminate()
        pool.join()


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
    return (f"none of the {report.games_read} games was kept ({top}); loosen the filters "
            "(--min-elo, --time-control, --skip-plies)")


def check_options(options: Options) -> None:
    if options.label not in ("played", "stockfish"):
        raise ImportProblem(f"--label {options.label}: use played or stockfish")
    if options.label == "stockfish":
        found = options.stockfish or shutil.which("stockfish") or (
            "/usr/games/stockfish" if Path("/usr/games/stockfish").exists() else None)
        if not found:
            raise ImportProblem("--label stockfish needs the stockfish engine: sudo apt-get "
                                "install stockfish (Debian puts it in /usr/games)")
        options.stockfish = found
        if not 1 <= options.depth <= 40:
            raise ImportProblem(f"--depth {options.depth}: use a depth from 1 to 40")
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
                            lambda p: print(format_progress(p), file=sys.stderr, flush=True))
    except ImportProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
