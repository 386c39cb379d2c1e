"""Dataset validation before any pod exists (the format lives in chessbot.data).

A dataset that passed once is remembered by its content hash (in ~/.cache/pod-cycle, or
POD_CYCLE_CACHE_DIR), so re-running a cycle on the same data does not parse it again."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from podcycle.errors import DatasetError

# Bump when the validation rules change: older "valid" verdicts no longer count.
VALIDATOR_VERSION = 2


def _cache_dir() -> Path:
    from podcycle.config import cache_root

    return cache_root() / "validated"


def dataset_files(folder: Path) -> tuple[list[str], list[str]]:
    """(files of the dataset, other entries left behind), names relative to the folder. The
    dataset format (chessbot.data.SPLITS) names the only files push-dataset sends."""
    from chessbot.data import SPLITS as DATASET_FILES

    folder = Path(folder)
    keep = [name for name in DATASET_FILES if (folder / name).is_file()]
    skipped = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                     if p.name not in DATASET_FILES)
    return keep, skipped


@contextmanager
def rejected_as_dataset_error() -> Iterator[None]:
    """A bad line or a missing split as a DatasetError: file:line, then the remedy."""
    from chessbot.data import DatasetProblem

    try:
        yield
    except DatasetProblem as exc:
        raise DatasetError(f"dataset rejected: {exc}",
                           "fix that line (JSONL: {\"fen\": FEN, \"move\": UCI}) and run again"
                           ) from None
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset rejected: {exc}",
                           "pass --dataset-dir pointing at a folder with train.jsonl and "
                           "val.jsonl") from None


def encode(folder: Path, cache_dir: Path | None = None, workers: int | None = None,
           progress: Any = None) -> Any:
    """chessbot.compact.encode_dataset with a bad dataset reported as a DatasetError and a
    `cache_dir` (the --cache-dir flag) that cannot hold the cache refused, not replaced."""
    from chessbot.compact import encode_dataset
    from chessbot.data import SPLITS
    from podcycle.config import say

    # data.encode -d train.jsonl said "Not a directory: .../train.jsonl/train.jsonl" (exit 1)
    # where data.stats and the cycle reject the dataset (exit 3).
    check_is_folder(Path(folder))
    if cache_dir is not None:
        check_cache_dir(Path(cache_dir))
    check_regular_files(Path(folder))
    for name in SPLITS:  # refused before an (empty) encoding is cached
        if _blank(Path(folder) / name):
            raise _no_positions(folder, name.split(".")[0])
    made = cache_dir is not None and not Path(cache_dir).exists()
    try:
        with rejected_as_dataset_error():
            encoded = encode_dataset(folder, cache_dir, workers, progress=progress,
                                     warn=say)
    except BaseException:
        if made:  # a --cache-dir this encode made and filled with nothing goes again
            try:
                Path(cache_dir).rmdir()
            except OSError:
                pass  # it holds a split encoded before the failure: kept, as the cache
        raise
    for split, data in encoded.splits.items():
        if len(data) == 0:
            raise _no_positions(folder, split)
    return encoded


def _no_positions(folder: Path, split: str) -> DatasetError:
    return DatasetError(f"dataset rejected: {Path(folder) / (split + '.jsonl')}:1: file has "
                        "no positions", "a dataset needs positions in both train.jsonl and "
                                        "val.jsonl")


def _blank(path: Path) -> bool:
    """A file with nothing but white space (read up to its first other byte); False for one
    that is missing (the encoder names it)."""
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 16):
                if chunk.decode("utf-8", "replace").strip():  # as the encoder strips a line
                    return False
    except FileNotFoundError:
        return False
    return True


def check_regular_files(folder: Path) -> None:
    """train.jsonl and val.jsonl are files to read to their end: a FIFO would block every
    reader forever, a device or a folder cannot be one."""
    from chessbot.data import SPLITS

    for name in SPLITS:
        path = folder / name
        if path.exists() and not path.is_file():
            raise DatasetError(f"dataset rejected: {path} is not a regular file (a folder, "
                               "a FIFO or a device)", f"put the {name} file there")


def check_cache_dir(cache_dir: Path) -> None:
    """A --cache-dir that is a file, lies under a file or cannot be written: a ConfigError."""
    from podcycle.errors import ConfigError
    from podcycle.runs import nearest_existing, write_refusal

    existing = nearest_existing(cache_dir)
    if not existing.is_dir():
        what = ("is a file" if existing == cache_dir.absolute()
                else f"lies under a file ({existing})")
        raise ConfigError(f"--cache-dir {cache_dir} {what}: the encodings need a folder",
                          "pass a folder (it is created if missing), or leave --cache-dir out "
                          "to use DATASET_DIR/../.encoded_cache")
    why = write_refusal(existing)
    if why:
        raise ConfigError(f"--cache-dir {cache_dir}: {existing} is not writable ({why})",
                          "pass a folder you can write, or leave --cache-dir out")


def wire_estimate(folder: Path, files: list[str]) -> dict[str, Any]:
    """Bytes a push would move, estimated by compressing a sample (zstd, as rsync
    --compress negotiates with a current rsync): the dataset as compressed JSONL, and as the
    compact encoding when a local cache of it exists (inv data.encode). On the smoke set:
    15.5 bytes a position as JSONL, 34.8 as encoded files, so JSONL is what is sent and the
    pod encodes it on all its cores."""
    import zstandard

    from chessbot.compact import cache_path, default_cache_dir
    from chessbot.data import digests

    def compressed(paths: list[Path]) -> int:
        total = 0
        for path in paths:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                sample = handle.read(1 << 21)
            if sample:
                ratio = len(zstandard.ZstdCompressor(level=3).compress(sample)) / len(sample)
                total += int(size * ratio)
        return total

    jsonl = [Path(folder) / name for name in files]
    result: dict[str, Any] = {"raw": sum(p.stat().st_size for p in jsonl),
                              "jsonl_compressed": compressed(jsonl), "encoded_compressed": None}
    cache = default_cache_dir(folder)
    each = digests(folder)[1]
    encoded = [cache_path(cache, each[name]) for name in files]
    if all((e / "meta.json").is_file() for e in encoded):
        result["encoded_compressed"] = compressed(
            [e / name for e in encoded for name in ("rows.bin", "legal.bin", "offsets.bin")])
    return result


def check_name(folder: Path) -> None:
    """The folder's name becomes the pushed copy's on the pod: one with a control character
    (a line break, a tab, an escape) reached the pod as another name, and the training
    failed there ("train.jsonl is missing"), after the pod was made."""
    from podcycle.redact import has_control, printable

    if has_control(folder.name):
        raise DatasetError(
            f"dataset rejected: the folder's name '{printable(folder.name)}' holds a control "
            "character (a line break, a tab or an escape), which its copy on the pod cannot "
            "keep", f"rename the folder (or copy it) to a plain name, e.g. "
            f"{folder.with_name('dataset')}")
    try:
        as_sent = folder.name.encode("utf-8")
    except UnicodeEncodeError:  # bytes Python could not read as text here (surrogates)
        as_sent = None
    if as_sent != os.fsencode(folder.name):
        # rsync copies the name's bytes, while the train command goes to the pod as UTF-8 of
        # the name as read here: under a Latin-1 locale `dé` (C3 A9) was read as `dÃ©` and
        # sent as C3 83 C2 A9, and the training failed on the pod ("train.jsonl is
        # missing"); under LC_ALL=C with PYTHONUTF8=0 the name could not be sent at all.
        raise DatasetError(
            f"dataset rejected: the folder's name '{printable(folder.name)}' is not UTF-8 "
            f"text in this locale (Python reads file names as {sys.getfilesystemencoding()}"
            "), so the pod would look for it under another name",
            "run in a UTF-8 locale (export LC_ALL=C.UTF-8), or rename the folder (or copy "
            f"it) to a plain name, e.g. {folder.with_name('dataset')}")


def check_is_folder(folder: Path) -> None:
    """A dataset given as a file (its train.jsonl), or a path that is not there, refused as
    the dataset's, before anything reads under it."""
    if not folder.is_dir():
        what = (f"{folder} is a file, not a folder" if folder.exists()
                else f"dataset folder not found: {folder}")
        raise DatasetError(f"dataset rejected: {what}",
                           "pass --dataset-dir pointing at a folder with train.jsonl and "
                           "val.jsonl")


def validate(folder: Path) -> dict[str, int | str]:
    from chessbot.data import dataset_hash

    folder = Path(folder)
    check_is_folder(folder)
    check_name(folder)
    check_regular_files(folder)
    try:
        digest = dataset_hash(folder)
    except FileNotFoundError:
        digest = None
    cached = _cache_dir() / f"{digest}.v{VALIDATOR_VERSION}.json" if digest else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())
        except (ValueError, RecursionError):
            pass
    # The compact encoder makes every check of chessbot.data.parse_line (same words, same
    # line numbers) on all cores, and leaves the encoding where the trainer, local
    # validation and data.stats find it.
    encoded = encode(folder)  # refuses a split without positions
    summary = {split: len(data) for split, data in encoded.splits.items()}
    summary["sha256"] = encoded.digest
    if cached is not None and summary.get("sha256") == digest:
        try:
            from podcycle.runs import atomic_write

            atomic_write(cached, json.dumps(summary))
        except OSError:
            pass  # a read-only home only costs the next run a re-validation
    return summary


def stats(folder: Path, workers: int | None = None) -> dict[str, Any]:
    """What a user checks before paying for a GPU: positions and games per split, where the
    labels came from, how the moves are spread, how many positions repeat, and the top-1 of
    a random legal move (from the compact encoding, the trainer's cache)."""
    import math
    from collections import Counter

    import numpy as np

    from chessbot.data import SPLITS

    folder = Path(folder)
    validate(folder)  # refuses a bad dataset with file:line before anything else
    encoded = encode(folder, workers=workers)
    result: dict[str, Any] = {"dataset": str(folder), "splits": {}}
    moves: Counter[str] = Counter()
    fen_hashes = []
    games_by_split: dict[str, set] = {}
    for name in SPLITS:
        split = name.split(".")[0]
        games: set = set()
        positions = 0
        with open(folder / name, encoding="utf-8") as handle:
            for text in handle:
                if not text.strip():
                    continue
                obj = json.loads(text)
                positions += 1
                moves[obj["move"]] += 1
                # The position without its move counters: the same position reached again.
                fen_hashes.append(hash(" ".join(obj["fen"].split()[:4])))
                if isinstance(obj.get("game"), str | int):  # anything else: not a game id
                    games.add(obj["game"])
        games_by_split[split] = games
        counts = encoded.splits[split].legal_counts()
        result["splits"][split] = {
            "positions": positions, "games": len(games) if games else None,
            "legal_moves_mean": round(float(counts.mean()), 2),
            "random_legal_top1": round(encoded.splits[split].random_legal_top1(), 5)}
    total = sum(moves.values())
    unique = len(np.unique(np.array(fen_hashes, dtype=np.int64)))
    entropy = -sum(c / total * math.log2(c / total) for c in moves.values())
    shared = games_by_split["train"] & games_by_split["val"]
    report_path = folder / "import_report.json"
    label = "unknown (not made by data.import-pgn)"
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except (ValueError, RecursionError):
            report = None
        if isinstance(report, dict) and isinstance(report.get("label"), str):
            label = report["label"]
    result.update({
        "positions": total,
        "games": sum(len(g) for g in games_by_split.values()) or None,
        "games_in_both_splits": len(shared) if shared or any(games_by_split.values()) else None,
        "label_source": label,
        "duplicate_rate": round(1 - unique / total, 5) if total else 0.0,
        "moves": {"distinct": len(moves), "entropy_bits": round(entropy, 3),
                  "top": [{"move": m, "share": round(c / total, 5)}
                          for m, c in moves.most_common(5)]},
        "random_legal_top1": result["splits"]["val"]["random_legal_top1"],
    })
    return result
