"""Dataset validation before any pod exists (the format lives in chessbot.data).

A dataset that passed once is remembered by its content hash (in ~/.cache/pod-cycle, or
POD_CYCLE_CACHE_DIR), so re-running a cycle on the same data does not parse it again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from podcycle.errors import DatasetError

# Bump when the validation rules change: older "valid" verdicts no longer count.
VALIDATOR_VERSION = 1


def _cache_dir() -> Path:
    return Path(os.environ.get("POD_CYCLE_CACHE_DIR") or
                Path.home() / ".cache" / "pod-cycle") / "validated"


def dataset_files(folder: Path) -> tuple[list[str], list[str]]:
    """(files of the dataset, other entries left behind), names relative to the folder. The
    dataset format (chessbot.data.SPLITS) names the only files push-dataset sends."""
    from chessbot.data import SPLITS as DATASET_FILES

    folder = Path(folder)
    keep = [name for name in DATASET_FILES if (folder / name).is_file()]
    skipped = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                     if p.name not in DATASET_FILES)
    return keep, skipped


def validate(folder: Path) -> dict[str, int | str]:
    from chessbot.data import DatasetProblem, dataset_hash, validate_dir

    folder = Path(folder)
    if not folder.is_dir():
        what = (f"{folder} is a file, not a folder" if folder.exists()
                else f"dataset folder not found: {folder}")
        raise DatasetError(f"dataset rejected: {what}",
                           "pass --dataset-dir pointing at a folder with train.jsonl and "
                           "val.jsonl")
    try:
        digest = dataset_hash(folder)
    except FileNotFoundError:
        digest = None
    cached = _cache_dir() / f"{digest}.v{VALIDATOR_VERSION}.json" if digest else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())
        except ValueError:
            pass
    try:
        summary = validate_dir(folder)
    except DatasetProblem as exc:
        raise DatasetError(f"dataset rejected: {exc}",
                           "fix that line (JSONL: {\"fen\": FEN, \"move\": UCI}) and run again"
                           ) from None
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset rejected: {exc}",
                           "pass --dataset-dir pointing at a folder with train.jsonl and "
                           "val.jsonl") from None
    if cached is not None and summary.get("sha256") == digest:
        try:
            from podcycle.runs import atomic_write

            atomic_write(cached, json.dumps(summary))
        except OSError:
            pass  # a read-only home only costs the next run a re-validation
    return summary
