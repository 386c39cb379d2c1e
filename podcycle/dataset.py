"""Dataset validation before any pod exists (the format lives in chessbot.data)."""

from __future__ import annotations

from pathlib import Path

from podcycle.errors import DatasetError


def validate(folder: Path) -> dict[str, int | str]:
    from chessbot.data import DatasetProblem, validate_dir

    try:
        return validate_dir(folder)
    except DatasetProblem as exc:
        raise DatasetError(f"dataset rejected: {exc}",
                           "fix that line (JSONL: {\"fen\": FEN, \"move\": UCI}) and run again"
                           ) from None
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset rejected: {exc}",
                           "pass --dataset-dir pointing at a folder with train.jsonl and "
                           "val.jsonl") from None
