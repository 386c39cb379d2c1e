"""Host-side validation of a run's collected results: the manifest check (every collected file
against the sha256 the pod wrote), the model's answer on a fixed position (legal, or the run
fails), and its top-1 on the local val set beside the random-legal-move baseline. The network
runs in numpy (chessbot.uci's, tested equal to torch's): the host's side of the cycle needs no
torch and pays no second-long import for one model (`prewarm` still loads numpy and the
payload early, while the pod trains)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from podcycle.errors import StepFailed
from podcycle.redact import clipped, printable

VALIDATION_FEN = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
VAL_BATCH = 256  # positions per numpy forward pass (about 40 MB of im2col for a 6x64 model)


# The model, as the pod's manifest names it (relative to the collected folder).
MODEL_IN_MANIFEST = "run_artifacts/model.pt"


def verify_manifest(collected: Path, require: tuple[str, ...] = ()) -> list[str]:
    """The names the collected folder's MANIFEST.sha256 lists, each checked against its
    sha256; StepFailed naming every problem. `require`: names that must be listed (a model
    the manifest leaves out was never checked: an empty manifest passed)."""
    manifest = collected / "MANIFEST.sha256"
    if not manifest.is_file():
        raise StepFailed(f"no manifest at {manifest}", "run inv cycle.collect")
    import hashlib

    files = []
    problems = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        if len(line.split(None, 1)) != 2:
            problems.append(f"manifest line '{clipped(line, 60)}' is not 'SHA256  NAME'")
            continue
        digest, name = line.split(None, 1)
        name = name.lstrip("*")
        path = collected / name
        files.append(name)
        shown = printable(name)  # the pod's text, in a message that state.json keeps
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            # The manifest comes from the pod: a name must stay inside the collected folder.
            problems.append(f"'{shown}' is outside the collected folder")
            continue
        if path.is_symlink() or not path.is_file():
            problems.append(f"{shown} is missing" if not os.path.lexists(path)
                            else f"{shown} is not a regular file")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            problems.append(f"{shown} does not match its sha256")
    # A required file the last collect did not list: left from an earlier collect (a later
    # training made none), or one the pod did not vouch for.
    unlisted = [f"{name} is not in the manifest of the last collect (left from an earlier "
                "one?)" for name in require if name not in files]
    if problems or unlisted:
        raise StepFailed(f"collected artifacts fail the manifest check: "
                         f"{'; '.join(problems + unlisted)}",
                         "collect again (inv cycle.collect); do not trust these files"
                         if problems else "the last collect brought no such file: train "
                         "again (inv cycle.train), then inv cycle.collect")
    return files


def model_answer(model_path: Path) -> tuple[Any, dict[str, Any]]:
    """The collected model, loaded (in numpy), and its answer for VALIDATION_FEN."""
    if not model_path.is_file():
        raise StepFailed(f"no collected model at {model_path}", "run inv cycle.collect first")
    from chessbot.infer import ModelError, answer_with, load_numpy, parse_fen

    try:
        model = load_numpy(model_path)
        return model, answer_with(model, parse_fen(VALIDATION_FEN))
    except ModelError as exc:
        raise StepFailed(f"local inference failed: {exc}",
                         "the file matches the pod's copy (sha256), so the model is damaged "
                         "there too: train again (inv cycle.train, a new training), then inv "
                         "cycle.collect") from None


def check_legal(answer: dict[str, Any]) -> None:
    import chess

    if chess.Move.from_uci(answer["move"]) not in chess.Board(answer["fen"]).legal_moves:
        raise StepFailed(f"the model answered an illegal move {answer['move']}",
                         "this is a bug in chessbot.infer; please report it")


def val_metrics(model: Any, dataset: Path) -> dict[str, Any]:
    """Top-1 of the collected model (load_numpy's) on the local val set, batched, against
    the random-legal-move baseline: chessbot.train.evaluate's top-1, in numpy."""
    import numpy as np

    from chessbot.compact import encode_dataset, featurize_numpy

    # The same compact encoding (and cache) as the trainer and data.encode.
    val = encode_dataset(dataset, splits=("val",)).splits["val"]
    labels = val.labels()
    correct = 0
    for start in range(0, len(val), VAL_BATCH):
        end = min(len(val), start + VAL_BATCH)
        logits = model.logits_batch(featurize_numpy(np.asarray(val.rows[start:end])))
        # Illegal moves never win the argmax.
        best = np.where(val.legal_mask(start, end), logits, -1e9).argmax(axis=1)
        correct += int((best == labels[start:end]).sum())
    top1 = correct / max(1, len(val))
    return {"val_top1": round(top1, 5), "random_legal_top1": round(val.random_legal_top1(), 5),
            "positions": len(val), "dataset": str(dataset)}


def prewarm() -> None:
    """Import numpy and the payload in the background while the pod works, so the
    local-validate step at the end does not wait for it."""
    import threading

    def load() -> None:
        try:
            import chessbot.compact  # noqa: F401
            import chessbot.infer  # noqa: F401
            import chessbot.uci  # noqa: F401
        except Exception:  # noqa: BLE001 - local-validate will report it properly
            pass

    threading.Thread(target=load, name="prewarm", daemon=True).start()
