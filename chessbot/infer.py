"""Inference: load a checkpoint, answer the best legal move (illegal moves are masked).

Also the command line (`python -m chessbot.infer`, or `scripts/infer_move.py`):

    python -m chessbot.infer --model PATH --fen FEN [--top-k K] [--json]

The command line answers on the CPU without importing torch (`answer`: the network in numpy,
as chessbot.uci runs it), so it answers in well under a second; `load_model` and `predict`
are the torch path (a device, a model kept in memory: the inference API, validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import chess

from chessbot.encoding import encode_board, index_to_move, legal_mask

if TYPE_CHECKING:
    from chessbot.model import PolicyNet
    from chessbot.uci import NumpyPolicy

FORMAT = "chessbot-policy-v1"


class ModelError(ValueError):
    pass


def load_model(path: str | Path, device: str = "cpu") -> PolicyNet:
    import torch

    from chessbot.model import ModelConfig, PolicyNet

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    from chessbot.uci import NOT_FINITE, CheckpointError, check_architecture, check_file_inflation

    try:  # torch.load would inflate a zip bomb's records whole, as the numpy loader did
        check_file_inflation(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer
        raise ModelError(f"cannot read model {path}: {type(exc).__name__}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ModelError(f"{path} is not a chessbot checkpoint ({FORMAT})")
    try:  # before the model is built: its config sizes what torch allocates
        blocks, channels = check_architecture(checkpoint, path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    model = PolicyNet(ModelConfig(blocks=blocks, channels=channels))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, ValueError) as exc:  # a dtype it cannot take, say
        raise ModelError(f"{path}: its weights do not load: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    model.to(device).eval()
    with torch.no_grad():
        probe = model(torch.from_numpy(encode_board(chess.Board())).float()[None].to(device))
    if not bool(torch.isfinite(probe).all()):
        raise ModelError(f"{path}: {NOT_FINITE}")
    return model


def parse_fen(fen: str) -> chess.Board:
    try:
        board = chess.Board(fen)
    except ValueError as exc:
        raise ModelError(f"invalid FEN {fen!r}: {exc}") from None
    if not board.is_valid():
        raise ModelError(f"illegal position {fen!r}")
    outcome = board.outcome()
    if outcome is not None:
        # Mate and stalemate leave no legal move; the draws by rule (K v K, the 75-move rule,
        # fivefold repetition) leave moves that no game plays.
        reason = outcome.termination.name.lower().replace("_", " ")
        lead = ("no legal move" if outcome.termination in (chess.Termination.CHECKMATE,
                                                           chess.Termination.STALEMATE)
                else "no move to play")
        raise ModelError(f"{lead}: the game is over in {fen!r} ({reason}, {board.result()})")
    return board


def predict(model: PolicyNet, fen: str, top_k: int = 3) -> dict[str, Any]:
    import torch

    board = parse_fen(fen)
    x = torch.from_numpy(encode_board(board)).float().unsqueeze(0)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(x.to(device))[0].float().cpu()
    mask = torch.from_numpy(legal_mask(board))
    logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=0)
    k = max(1, min(top_k, int(mask.sum())))
    values, indices = torch.topk(probs, k)
    top = []
    for prob, index in zip(values.tolist(), indices.tolist(), strict=True):
        move = index_to_move(index, board)
        if move is not None:
            top.append({"move": move.uci(), "prob": round(prob, 6)})
    return {"fen": board.fen(), "move": top[0]["move"], "top": top}


STARTPOS = chess.STARTING_FEN


def load_numpy(path: str | Path) -> NumpyPolicy:
    """The checkpoint's network in numpy (chessbot.uci.NumpyPolicy), read without torch."""
    from chessbot.uci import CheckpointError, load_policy

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        return load_policy(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None


def answer(path: str | Path, fen: str = STARTPOS, top_k: int = 3) -> dict[str, Any]:
    """predict(load_model(path), fen, top_k) on the CPU without torch: the same answer, the
    network run in numpy from the checkpoint's own bytes (chessbot.uci)."""
    board = parse_fen(fen)  # a bad FEN is named before the model is read
    return answer_with(load_numpy(path), board, top_k)


def answer_with(net: NumpyPolicy, board: chess.Board, top_k: int = 3) -> dict[str, Any]:
    """answer() with a network already loaded by load_numpy, for a parsed position."""
    from chessbot.uci import ranked_moves

    ranked = ranked_moves(net.logits(encode_board(board)), board, 0)
    top = [{"move": move.uci(), "prob": round(prob, 6)}
           for move, prob in ranked[:max(1, min(top_k, len(ranked)))]]
    return {"fen": board.fen(), "move": top[0]["move"], "top": top}


def _wait(flag: Path, pid: int | None) -> bool:
    import os
    import time

    while not flag.exists():
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return flag.exists()
            except PermissionError:
                pass
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="infer_move", description="the chessbot model's move "
                                     "for a FEN")
    parser.add_argument("--model", required=True, help="checkpoint .pt written by the trainer")
    parser.add_argument("--fen", default=STARTPOS, help="position (default: the start)")
    parser.add_argument("--top-k", type=int, default=3, help="candidates to list (default: 3)")
    parser.add_argument("--json", action="store_true", help="print {fen, move, top} as JSON")
    parser.add_argument("--wait-for", metavar="FILE",
                        help="load the model only once FILE exists: start early (e.g. beside a "
                             "training run) so Python is ready when it ends")
    parser.add_argument("--wait-pid", type=int, metavar="PID",
                        help="with --wait-for: give up (exit 3) if process PID ends first")
    args = parser.parse_args(argv)

    if args.wait_for and not _wait(Path(args.wait_for), args.wait_pid):
        print(f"error: gave up waiting for {args.wait_for}: process {args.wait_pid} ended",
              file=sys.stderr)
        return 3
    try:
        result = answer(args.model, args.fen, args.top_k)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else result["move"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
