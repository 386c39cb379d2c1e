"""Board and move encoding, always from the side to move's point of view (the board is
mirrored for black), so one network plays both colours.

Board: 22 planes of 8x8 — 6 own pieces, 6 opponent pieces, 4 castling rights, en passant
square, a constant plane, the squares each side attacks, and each side's undefended attacked
pieces (what makes hanging pieces and threats visible to a small network).
Move: from_square * 64 + to_square (4096 logits); promotions share their square pair, and
inference picks the queen promotion among them.
"""

from __future__ import annotations

import chess
import numpy as np

PLANES = 22
MOVES = 4096
PIECES = (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN, chess.KING)


def _orient(square: int, white_to_move: bool) -> int:
    return square if white_to_move else chess.square_mirror(square)


def encode_board(board: chess.Board, out: np.ndarray | None = None) -> np.ndarray:
    planes = np.zeros((PLANES, 64), dtype=np.uint8) if out is None else out.reshape(PLANES, 64)
    planes[:] = 0
    us = board.turn
    white = us == chess.WHITE
    for index, piece_type in enumerate(PIECES):
        for square in board.pieces(piece_type, us):
            planes[index, _orient(square, white)] = 1
        for square in board.pieces(piece_type, not us):
            planes[6 + index, _orient(square, white)] = 1
    rights = (
        board.has_kingside_castling_rights(us), board.has_queenside_castling_rights(us),
        board.has_kingside_castling_rights(not us), board.has_queenside_castling_rights(not us),
    )
    for offset, has in enumerate(rights):
        if has:
            planes[12 + offset, :] = 1
    if board.ep_square is not None and board.has_legal_en_passant():
        planes[16, _orient(board.ep_square, white)] = 1
    planes[17, :] = 1
    attacks = {}
    for plane, color in ((18, us), (19, not us)):
        attacked = chess.SquareSet()
        for square in chess.SquareSet(board.occupied_co[color]):
            attacked |= board.attacks(square)
        attacks[color] = attacked
        for square in attacked:
            planes[plane, _orient(square, white)] = 1
    for plane, color in ((20, us), (21, not us)):
        hanging = chess.SquareSet(board.occupied_co[color]) & attacks[not color]
        for square in hanging - attacks[color]:
            planes[plane, _orient(square, white)] = 1
    return planes.reshape(PLANES, 8, 8)


def move_index(move: chess.Move, white_to_move: bool) -> int:
    return _orient(move.from_square, white_to_move) * 64 + _orient(move.to_square, white_to_move)


def index_to_move(index: int, board: chess.Board) -> chess.Move | None:
    """The legal move for an index in this position (queen promotion preferred)."""
    white = board.turn == chess.WHITE
    candidates = [m for m in board.legal_moves if move_index(m, white) == index]
    if not candidates:
        return None
    candidates.sort(key=lambda m: 0 if m.promotion in (None, chess.QUEEN) else 1)
    return candidates[0]


def legal_indices(board: chess.Board) -> list[int]:
    white = board.turn == chess.WHITE
    return sorted({move_index(m, white) for m in board.legal_moves})


def legal_mask(board: chess.Board) -> np.ndarray:
    mask = np.zeros(MOVES, dtype=bool)
    mask[legal_indices(board)] = True
    return mask


def decode_board_planes(planes: np.ndarray, white_to_move: bool) -> dict[int, tuple[int, bool]]:
    """Inverse of the piece planes: {square: (piece_type, is_white)} in board coordinates
    (used by the round-trip tests)."""
    flat = planes.reshape(PLANES, 64)
    result = {}
    for index, piece_type in enumerate(PIECES):
        for plane, own in ((index, True), (6 + index, False)):
            for oriented in np.flatnonzero(flat[plane]):
                square = _orient(int(oriented), white_to_move)
                result[square] = (piece_type, own == white_to_move)
    return result
