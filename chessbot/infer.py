"""Inference: load a checkpoint, answer the best legal move (illegal moves are masked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chess
import torch

from chessbot.encoding import encode_board, index_to_move, legal_mask
from chessbot.model import ModelConfig, PolicyNet

FORMAT = "chessbot-policy-v1"


class ModelError(ValueError):
    pass


def load_model(path: str | Path, device: str = "cpu") -> PolicyNet:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer
        raise ModelError(f"cannot read model {path}: {type(exc).__name__}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ModelError(f"{path} is not a chessbot checkpoint ({FORMAT})")
    model = PolicyNet(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    return model


def parse_fen(fen: str) -> chess.Board:
    try:
        board = chess.Board(fen)
    except ValueError as exc:
        raise ModelError(f"invalid FEN {fen!r}: {exc}") from None
    if not board.is_valid():
        raise ModelError(f"illegal position {fen!r}")
    if board.is_game_over():
        raise ModelError(f"no legal move: the game is over in {fen!r} ({board.result()})")
    return board


@torch.no_grad()
def predict(model: PolicyNet, fen: str, top_k: int = 3) -> dict[str, Any]:
    board = parse_fen(fen)
    x = torch.from_numpy(encode_board(board)).float().unsqueeze(0)
    device = next(model.parameters()).device
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
