"""The compact encoding: a dataset encoded once into flat, memory-mappable arrays of about
110 bytes a position (the 22-plane encoding stored 1,920), turned into planes on the device,
a batch at a time.

One position is one 52-byte row plus its legal moves:

    bytes  0-31  the board, one nibble a square (a1 = low nibble of byte 0), seen from the
                 side to move (mirrored for black): 0 empty, 1-6 own P N B R Q K, 7-12 the
                 opponent's
    bytes 32-47  the squares each side attacks (own, opponent), two little-endian bitboards
                 in the same orientation
    byte     48  castling rights: bit 0 own king side, 1 own queen side, 2/3 the opponent's
    byte     49  the en-passant square when an en-passant capture is legal, else 64
    bytes 50-51  the move played (from * 64 + to, oriented), little-endian uint16
    legal        the legal move indices (uint16, sorted), all positions back to back, and
    offsets      int64 [N + 1]: position i's legal moves are legal[offsets[i]:offsets[i+1]]

The attack bitboards are computed here, vectorised over a chunk (numpy, Kogge-Stone fills);
everything else that makes the 22 planes of chessbot.encoding is done by `featurize` on the
device. python-chess stays the reference: tests compare planes and legal masks with
`encoding.encode_board` / `legal_mask` on thousands of random positions.

Encoding a split: workers (all cores by default) each take a byte range of the JSONL file;
the parent writes their rows in file order. Per position, the hot path parses the FEN into
bitboards itself (python-chess's FEN parser is the slow part of `chess.Board(fen)`) and
generates legal moves as (from square, target bitboard) pairs, expanded to indices in numpy.
Positions in check go through python-chess's own legal move generator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chess
import numpy as np

from chessbot.data import SPLITS, DatasetProblem, parse_line

VERSION = 1
ROW_BYTES = 52
MIRROR = 56 * 64 + 56  # index ^ MIRROR mirrors both squares of a move index
SYMBOLS = {c: i for i, c in enumerate("PNBRQKpnbrqk")}
BB = chess.BB_SQUARES
U64 = np.uint64
ALL = 0xFFFF_FFFF_FFFF_FFFF


# -- the per-position hot path -------------------------------------------------------------

_RANKS: dict[str, tuple[tuple[int, int], ...] | None] = {}


def _rank(text: str) -> tuple[tuple[int, int], ...] | None:
    """One FEN rank → ((piece index, 8-bit file mask), ...), or None if it is not 8 files
    of known pieces. Ranks repeat a lot across positions, so they are cached."""
    masks: dict[int, int] = {}
    file = 0
    for ch in text:
        if "1" <= ch <= "8":
            file += ord(ch) - 48
        else:
            index = SYMBOLS.get(ch)
            if index is None or file > 7:
                return None
            masks[index] = masks.get(index, 0) | 1 << file
            file += 1
    return tuple(masks.items()) if file == 8 else None


def _board_from_fen(fen: str) -> tuple[chess.Board, list[int]] | None:
    """A chess.Board and the 12 piece bitboards (white PNBRQK, black pnbrqk) for a plain
    six-field FEN, or None when the FEN is anything unusual (python-chess then decides).
    python-chess's own FEN parser is most of the cost of chess.Board(fen)."""
    parts = fen.split()
    if len(parts) != 6 or parts[1] not in ("w", "b"):
        return None
    ranks = parts[0].split("/")
    if len(ranks) != 8:
        return None
    bbs = [0] * 12
    shift = 56
    cache = _RANKS
    for text in ranks:
        entry = cache.get(text, False)
        if entry is False:
            entry = _rank(text)
            if len(cache) < 100_000:
                cache[text] = entry
        if entry is None:
            return None
        for index, mask in entry:
            bbs[index] |= mask << shift
        shift -= 8
    board = chess.Board.__new__(chess.Board)
    white = bbs[0] | bbs[1] | bbs[2] | bbs[3] | bbs[4] | bbs[5]
    black = bbs[6] | bbs[7] | bbs[8] | bbs[9] | bbs[10] | bbs[11]
    board.pawns, board.knights, board.bishops = bbs[0] | bbs[6], bbs[1] | bbs[7], bbs[2] | bbs[8]
    board.rooks, board.queens, board.kings = bbs[3] | bbs[9], bbs[4] | bbs[10], bbs[5] | bbs[11]
    board.occupied_co = [black, white]
    board.occupied = white | black
    board.promoted = 0
    board.chess960 = False
    board.move_stack = []
    board._stack = []
    board.turn = parts[1] == "w"
    board.castling_rights = 0
    try:
        if parts[2] != "-":
            _set_castling(board, parts[2])
        board.ep_square = None if parts[3] == "-" else chess.parse_square(parts[3])
        board.halfmove_clock, board.fullmove_number = int(parts[4]), int(parts[5])
    except ValueError:
        return None
    return board, bbs


_CORNERS = {"K": chess.BB_H1, "Q": chess.BB_A1, "k": chess.BB_H8, "q": chess.BB_A8}


def _set_castling(board: chess.Board, text: str) -> None:
    """board.set_castling_fen, short-cut when each right's rook stands on its corner (then
    python-chess picks that corner too: it is the outermost rook of the back rank)."""
    rights = 0
    rooks = board.rooks
    for ch in text:
        corner = _CORNERS.get(ch)
        if corner is None or not rooks & corner & board.occupied_co[ch.isupper()]:
            board.set_castling_fen(text)
            return
        rights |= corner
    board.castling_rights = rights


def _invalid_or_checkers(board: chess.Board) -> int:
    """-1 when python-chess's board.is_valid() is False, else the checkers bitboard. The
    checks of Board.status() without its costly parts for positions not in check (a
    position in check goes through status() itself)."""
    occupied, kings, pawns = board.occupied, board.kings, board.pawns
    black, white = board.occupied_co
    if (not white & kings or not black & kings or (occupied & kings).bit_count() > 2
            or white.bit_count() > 16 or black.bit_count() > 16
            or (white & pawns).bit_count() > 8 or (black & pawns).bit_count() > 8
            or pawns & chess.BB_BACKRANKS):
        return -1
    if board.castling_rights and board.castling_rights != board.clean_castling_rights():
        return -1
    if board.ep_square is not None and board._valid_ep_square() != board.ep_square:
        return -1
    if board.was_into_check():
        return -1
    checkers = board.checkers_mask()
    if checkers and not board.is_valid():
        return -1
    return checkers


def _castling_bits(board: chess.Board) -> int:
    """has_{king,queen}side_castling_rights for the side to move (bits 0, 1) and the other
    side (bits 2, 3), with one clean_castling_rights call instead of four."""
    if not board.castling_rights:
        return 0
    rights = board.clean_castling_rights()
    bits = 0
    for color, shift in ((board.turn, 0), (not board.turn, 2)):
        backrank = chess.BB_RANK_1 if color else chess.BB_RANK_8
        king = board.kings & board.occupied_co[color] & backrank & ~board.promoted
        rooks = rights & backrank
        if king and rooks:
            if rooks > king:
                bits |= 1 << shift  # some rook above the king: king side
            if rooks & (king - 1):
                bits |= 2 << shift
    return bits


def _bitboards(board: chess.Board) -> list[int]:
    return [board.pieces_mask(pt, color) for color in (chess.WHITE, chess.BLACK)
            for pt in chess.PIECE_TYPES]


KING = 1000  # the shift that marks king moves: drop the squares the opponent attacks


def _legal_pairs(board: chess.Board, checkers: int, froms: list[int], targets: list[int],
                 shifts: list[int]) -> None:
    """Append the legal moves of `board` as (from, targets, shift) triples: a move from
    `from` to every square of `targets`, or, where shift != 0, from `to - shift` (pawn
    pushes and captures in bulk); shift KING: king moves, still to be filtered by the
    opponent's attack map (`_assemble`). Exactly python-chess's legal moves, promotions
    counted once (they share their square pair)."""
    us = board.turn
    own = board.occupied_co[us]
    occupied = board.occupied
    their = occupied & ~own
    king = (board.kings & own).bit_length() - 1
    if king < 0 or checkers:
        for move in board.generate_legal_moves():  # in check (or no king): python-chess
            if move.promotion is None or move.promotion == chess.QUEEN:
                froms.append(move.from_square)
                targets.append(BB[move.to_square])
                shifts.append(0)
        return
    pinned = board._slider_blockers(king)
    rays = chess.BB_RAYS[king]
    not_own = ~own & ALL
    pawns = board.pawns & own
    for square in chess.scan_reversed(own & ~board.pawns & ~board.kings):
        moves = board.attacks_mask(square) & not_own
        if pinned & BB[square]:
            moves &= rays[square]
        if moves:
            froms.append(square)
            targets.append(moves)
            shifts.append(0)
    # Not in check, so a king move is legal exactly when the opponent does not attack the
    # target square with the board as it is (python-chess's _is_safe).
    moves = chess.BB_KING_ATTACKS[king] & not_own
    if moves:
        froms.append(king)
        targets.append(moves)
        shifts.append(KING)
    if board.castling_rights & (chess.BB_RANK_1 if us else chess.BB_RANK_8):
        for move in board.generate_castling_moves():
            froms.append(move.from_square)
            targets.append(BB[move.to_square])
            shifts.append(0)
    if not pawns:
        return
    free = pawns & ~pinned
    for square in chess.scan_reversed(pawns & pinned):
        moves = chess.BB_PAWN_ATTACKS[us][square] & their
        if us:
            single = BB[square] << 8 & ~occupied
            double = single << 8 & ~occupied & chess.BB_RANK_4
        else:
            single = BB[square] >> 8 & ~occupied
            double = single >> 8 & ~occupied & chess.BB_RANK_5
        moves = (moves | single | double) & rays[square]
        if moves:
            froms.append(square)
            targets.append(moves)
            shifts.append(0)
    if us:
        single = free << 8 & ~occupied & ALL
        double = single << 8 & ~occupied & chess.BB_RANK_4
        left = (free & ~chess.BB_FILE_A) << 7 & their
        right = (free & ~chess.BB_FILE_H) << 9 & their
        bulk = ((single, 8), (double, 16), (left, 7), (right, 9))
    else:
        single = free >> 8 & ~occupied
        double = single >> 8 & ~occupied & chess.BB_RANK_5
        left = (free & ~chess.BB_FILE_A) >> 9 & their
        right = (free & ~chess.BB_FILE_H) >> 7 & their
        bulk = ((single, -8), (double, -16), (left, -9), (right, -7))
    for moves, shift in bulk:
        if moves:
            froms.append(0)
            targets.append(moves)
            shifts.append(shift)
    if board.ep_square is not None:
        for move in board.generate_legal_ep():
            froms.append(move.from_square)
            targets.append(BB[move.to_square])
            shifts.append(0)


@dataclass
class Chunk:
    """Encoded positions of one piece of a file (see the module docstring for the layout)."""

    rows: np.ndarray      # uint8 [n, ROW_BYTES]
    legal: np.ndarray     # uint16 [m]
    counts: np.ndarray    # int64 [n]: legal moves per position
    error: tuple[int, str] | None = None  # (line number, what) of the first bad line

    def __len__(self) -> int:
        return len(self.rows)


def encode_lines(lines: list[str], first_line: int = 1, path: Path | None = None) -> Chunk:
    """Encode JSONL lines ({"fen", "move"} each; blank lines skipped). A bad line stops the
    chunk and is reported in Chunk.error with its line number (same checks and words as
    chessbot.data.parse_line)."""
    path = path or Path("<lines>")
    bitboards: list[list[int]] = []
    turns: list[bool] = []
    info: list[tuple[int, int]] = []
    labels: list[int] = []
    froms: list[int] = []
    targets: list[int] = []
    shifts: list[int] = []
    owner: list[int] = []
    error = None
    loads = json.loads
    for offset, text in enumerate(lines):
        if not text.strip():
            continue
        number = first_line + offset
        try:
            obj = loads(text)
            fen, uci = obj["fen"], obj["move"]
            parsed = _board_from_fen(fen)
            if parsed is None:
                raise ValueError
            board, bbs = parsed
            checkers = _invalid_or_checkers(board)
            if checkers < 0:
                raise ValueError
            move = chess.Move.from_uci(uci)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            try:  # the reference parser names what is wrong (or accepts an odd FEN)
                record = parse_line(path, number, text)
            except DatasetProblem as exc:
                error = (number, exc.what)
                break
            board, move, bbs = record.board, record.move, _bitboards(record.board)
            checkers = board.checkers_mask()
        n = len(labels)
        before = len(froms)
        _legal_pairs(board, checkers, froms, targets, shifts)
        owner.extend([n] * (len(froms) - before))
        us = board.turn
        pair = move.from_square * 64 + move.to_square
        if not _is_legal_label(board, move, froms[before:], targets[before:], shifts[before:]):
            try:
                parse_line(path, number, text)
            except DatasetProblem as exc:
                error = (number, exc.what)
                for pending in (froms, targets, shifts, owner):
                    del pending[before:]
                break
        castling = _castling_bits(board)
        ep = 64
        if board.ep_square is not None and board.has_legal_en_passant():
            ep = board.ep_square if us else board.ep_square ^ 56
        bitboards.append(bbs)
        turns.append(us)
        info.append((castling, ep))
        labels.append(pair if us else pair ^ MIRROR)
    rows, legal, counts = _assemble(bitboards, turns, info, labels, froms, targets, shifts,
                                    owner)
    return Chunk(rows, legal, counts, error)


def _is_legal_label(board: chess.Board, move: chess.Move, froms: list[int],
                    targets: list[int], shifts: list[int]) -> bool:
    to_bb = BB[move.to_square]
    found = False
    for frm, bb, shift in zip(froms, targets, shifts, strict=True):
        if bb & to_bb and (frm == move.from_square if not shift
                           else move.to_square - shift == move.from_square):
            found = True
            break
    if not found:
        return False
    promoting = bool(board.pawns & BB[move.from_square]) and move.to_square // 8 in (0, 7)
    if promoting:
        return move.promotion in (chess.QUEEN, chess.ROOK, chess.BISHOP, chess.KNIGHT)
    return move.promotion is None


# -- vectorised parts (numpy, a whole chunk at once) ---------------------------------------

NOT_A = U64(~chess.BB_FILE_A & ALL)
NOT_H = U64(~chess.BB_FILE_H & ALL)
NOT_AB = U64(~(chess.BB_FILE_A | chess.BB_FILE_B) & ALL)
NOT_GH = U64(~(chess.BB_FILE_G | chess.BB_FILE_H) & ALL)
# (shift, wrap mask applied after the shift): N S E W NE NW SE SW
DIRECTIONS = ((8, None), (-8, None), (1, NOT_A), (-1, NOT_H),
              (9, NOT_A), (7, NOT_H), (-7, NOT_A), (-9, NOT_H))


def _shift(x: np.ndarray, n: int) -> np.ndarray:
    return x << U64(n) if n > 0 else x >> U64(-n)


def _slide(gen: np.ndarray, empty: np.ndarray, n: int, mask: np.ndarray | None) -> np.ndarray:
    """Kogge-Stone occluded fill: the squares sliders in `gen` attack along one direction."""
    pro = empty if mask is None else empty & mask
    gen = gen | (pro & _shift(gen, n))
    pro = pro & _shift(pro, n)
    gen = gen | (pro & _shift(gen, 2 * n))
    pro = pro & _shift(pro, 2 * n)
    gen = gen | (pro & _shift(gen, 4 * n))
    out = _shift(gen, n)
    return out if mask is None else out & mask


def attack_maps(pieces: np.ndarray) -> np.ndarray:
    """[n, 12] uint64 piece bitboards (white PNBRQK, black pnbrqk) → [n, 2] uint64: the
    squares white attacks, the squares black attacks (python-chess's board.attacks union)."""
    occupied = np.bitwise_or.reduce(pieces, axis=1)
    empty = ~occupied
    result = np.zeros((len(pieces), 2), dtype=U64)
    for side in (0, 1):
        p, n, b, r, q, k = (pieces[:, 6 * side + i] for i in range(6))
        if side == 0:
            att = ((p << U64(7)) & NOT_H) | ((p << U64(9)) & NOT_A)
        else:
            att = ((p >> U64(9)) & NOT_H) | ((p >> U64(7)) & NOT_A)
        att |= ((n << U64(17)) & NOT_A) | ((n << U64(15)) & NOT_H) \
            | ((n << U64(10)) & NOT_AB) | ((n << U64(6)) & NOT_GH) \
            | ((n >> U64(17)) & NOT_H) | ((n >> U64(15)) & NOT_A) \
            | ((n >> U64(10)) & NOT_GH) | ((n >> U64(6)) & NOT_AB)
        for shift, mask in DIRECTIONS:
            out = _shift(k, shift)
            att |= out if mask is None else out & mask
        straight, diagonal = r | q, b | q
        for index, (shift, mask) in enumerate(DIRECTIONS):
            att |= _slide(straight if index < 4 else diagonal, empty, shift, mask)
        result[:, side] = att
    return result


def _expand(froms: np.ndarray, targets: np.ndarray, shifts: np.ndarray,
            owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(from, targets, shift) triples → (position, from * 64 + to) pairs, board coordinates."""
    bits = np.unpackbits(targets.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1,
                         bitorder="little")
    pair, to = np.nonzero(bits)
    frm = np.where(shifts[pair] == 0, froms[pair], to - shifts[pair])
    return owner[pair], frm * 64 + to


def _assemble(bitboards, turns, info, labels, froms, targets, shifts, owner):
    n = len(labels)
    rows = np.zeros((n, ROW_BYTES), dtype=np.uint8)
    if n == 0:
        return rows, np.zeros(0, np.uint16), np.zeros(0, np.int64)
    pieces = np.array(bitboards, dtype=U64)
    white = np.array(turns, dtype=bool)
    attacks = attack_maps(pieces)
    froms_a, shifts_a = np.array(froms, np.int64), np.array(shifts, np.int64)
    targets_a, owner_a = np.array(targets, dtype=U64), np.array(owner, np.int64)
    king = shifts_a == KING
    if king.any():  # king moves: not onto a square the opponent attacks
        who = owner_a[king]
        opponent = np.where(white[who], attacks[who, 1], attacks[who, 0])
        targets_a[king] &= ~opponent
        shifts_a[king] = 0
    # Orient: for black to move, own = black, and the board is mirrored (byte-swapped).
    own = np.where(white[:, None], pieces[:, :6], pieces[:, 6:])
    opp = np.where(white[:, None], pieces[:, 6:], pieces[:, :6])
    oriented = np.concatenate([own, opp], axis=1)
    attacks = np.where(white[:, None], attacks, attacks[:, ::-1])
    black = ~white
    oriented[black] = oriented[black].byteswap()
    attacks[black] = attacks[black].byteswap()
    bits = np.unpackbits(oriented.astype("<u8").view(np.uint8).reshape(n, 12, 8), axis=2,
                         bitorder="little")  # [n, 12, 64]
    values = (bits * np.arange(1, 13, dtype=np.uint8)[None, :, None]).sum(1, dtype=np.uint8)
    rows[:, :32] = values[:, 0::2] | (values[:, 1::2] << 4)
    rows[:, 32:48] = attacks.astype("<u8").view(np.uint8).reshape(n, 16)
    rows[:, 48:50] = np.array(info, dtype=np.uint8)
    rows[:, 50:52] = np.array(labels, dtype="<u2").view(np.uint8).reshape(n, 2)
    position, index = _expand(froms_a, targets_a, shifts_a, owner_a)
    index = np.where(white[position], index, index ^ MIRROR)
    # Grouped by position already (pairs were appended position by position), and no move
    # appears twice: each (from, to) pair comes from exactly one triple.
    counts = np.bincount(position, minlength=n).astype(np.int64)
    return rows, index.astype(np.uint16), counts


# -- files: encode a split with workers, read it back --------------------------------------

@dataclass
class Encoded:
    """One encoded split, memory-mapped: rows, legal moves and their offsets."""

    rows: np.ndarray
    legal: np.ndarray
    offsets: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.legal.nbytes + self.offsets.nbytes

    def labels(self) -> np.ndarray:
        return self.rows[:, 50].astype(np.int64) | (self.rows[:, 51].astype(np.int64) << 8)

    def legal_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def random_legal_top1(self) -> float:
        """Expected top-1 of picking a uniformly random legal move."""
        counts = np.maximum(self.legal_counts(), 1)
        return float((1.0 / counts).mean()) if len(counts) else 0.0

    def legal_mask(self, start: int, end: int) -> np.ndarray:
        """legal_mask_batch in numpy, for the CPU without torch: the [end - start, 4096] bool
        legal masks of positions start to end."""
        offsets = np.asarray(self.offsets[start:end + 1], dtype=np.int64)
        mask = np.zeros((end - start, 4096), dtype=bool)
        rows = np.repeat(np.arange(end - start), np.diff(offsets))
        mask[rows, np.asarray(self.legal[offsets[0]:offsets[-1]], dtype=np.int64)] = True
        return mask


def default_cache_dir(dataset_dir: Path) -> Path:
    return Path(dataset_dir).resolve().parent / ".encoded_cache"


def cache_path(cache_dir: Path, digest: str) -> Path:
    return Path(cache_dir) / f"{digest[:24]}.v{VERSION}"


def damaged(folder: Path) -> str | None:
    """Why an encoded split's folder cannot be used, or None: its meta.json unreadable or not
    an encode's, or a file of another size than meta.json says (cut short by a crash before
    the disk had it, a full disk, a hand edit). open_encoded would end in a traceback."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError, RecursionError) as exc:
        return f"its meta.json cannot be read ({getattr(exc, 'strerror', None) or 'not JSON'})"
    n = meta.get("positions") if isinstance(meta, dict) else None
    m = meta.get("legal_moves") if isinstance(meta, dict) else None
    if type(n) is not int or type(m) is not int or n < 0 or m < 0:
        return "its meta.json is not an encode's"
    for name, size in (("rows.bin", n * ROW_BYTES), ("legal.bin", 2 * m),
                       ("offsets.bin", 8 * (n + 1))):
        try:
            found = (folder / name).stat().st_size
        except OSError as exc:
            return f"its {name} cannot be read ({exc.strerror})"
        if found != size:
            return f"its {name} holds {found:,} bytes, not the {size:,} its meta.json says"
    return None


def open_encoded(folder: Path) -> Encoded:
    meta = json.loads((folder / "meta.json").read_text())
    n, m = meta["positions"], meta["legal_moves"]
    rows = np.memmap(folder / "rows.bin", dtype=np.uint8, mode="r", shape=(n, ROW_BYTES)) \
        if n else np.zeros((0, ROW_BYTES), np.uint8)
    legal = np.memmap(folder / "legal.bin", dtype="<u2", mode="r", shape=(m,)) \
        if m else np.zeros(0, np.uint16)
    offsets = np.fromfile(folder / "offsets.bin", dtype="<i8")
    return Encoded(rows, legal, offsets, folder)


def _ranges(path: Path, pieces: int) -> list[tuple[int, int, int]]:
    """Split a file into about `pieces` byte ranges cut at line ends: (start, end, first
    line number)."""
    size = path.stat().st_size
    step = max(1 << 12, size // max(1, pieces) + 1)
    cuts = [0]
    with open(path, "rb") as handle:
        while cuts[-1] + step < size:
            handle.seek(cuts[-1] + step)
            handle.readline()
            position = handle.tell()
            if position >= size:
                break
            cuts.append(position)
        cuts.append(size)
        result, line = [], 1
        for start, end in zip(cuts, cuts[1:], strict=False):
            result.append((start, end, line))
            handle.seek(start)
            line += handle.read(end - start).count(b"\n")
    return result


def _encode_range(job: tuple[str, int, int, int]) -> Chunk:
    path, start, end, first_line = job
    with open(path, "rb") as handle:
        handle.seek(start)
        raw = handle.read(end - start)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # the lines before the bad one, then the bad one named
        cut = raw.rfind(b"\n", 0, exc.start) + 1
        chunk = encode_lines(raw[:cut].decode("utf-8").split("\n"), first_line, Path(path))
        if chunk.error is None:
            chunk.error = (first_line + raw[:cut].count(b"\n"),
                           f"not UTF-8 text (byte 0x{raw[exc.start]:02x}): a JSONL dataset is "
                           "UTF-8")
        return chunk
    return encode_lines(text.split("\n"), first_line, Path(path))


SPLIT_ABOVE = 1 << 22  # bytes: smaller files are encoded in one piece, in this process


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def encode_split(path: Path, out: Path, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Encoded:
    """Encode one JSONL split into folder `out` (written whole, then renamed into place).
    Raises DatasetProblem at the first bad line."""
    path = Path(path)
    workers = workers or default_workers()
    size = path.stat().st_size
    jobs = [(str(path), s, e, line) for s, e, line in
            _ranges(path, workers * 8 if size > SPLIT_ABOVE else 1)]
    tmp = out.with_name(f".{out.name}.@{host_tag()}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lock = _hold_lock(tmp)
    remove_stale_temps(out.parent)
    positions = moves = done = 0
    offsets = [np.zeros(1, np.int64)]
    try:
        with open(tmp / "rows.bin", "wb") as rows, open(tmp / "legal.bin", "wb") as legal:
            for job, chunk in zip(jobs, _run(jobs, workers), strict=True):
                if chunk.error:
                    line, what = chunk.error
                    raise DatasetProblem(path, line, what)
                rows.write(chunk.rows.tobytes())
                legal.write(chunk.legal.astype("<u2").tobytes())
                offsets.append(moves + np.cumsum(chunk.counts))
                positions += len(chunk)
                moves += int(chunk.counts.sum())
                done += job[2] - job[1]
                if progress:
                    progress(done, size)
        np.concatenate(offsets).astype("<i8").tofile(tmp / "offsets.bin")
        (tmp / "meta.json").write_text(json.dumps({
            "version": VERSION, "source": path.name, "positions": positions,
            "legal_moves": moves, "row_bytes": ROW_BYTES}))
        (tmp / LOCK_NAME).unlink()
        for name in ("rows.bin", "legal.bin", "offsets.bin", "meta.json"):
            _fsync(tmp / name)  # on the disk before the rename makes them the cache's
        if out.exists():  # another process finished the same content first
            shutil.rmtree(tmp)
        else:
            try:
                tmp.rename(out)
            except OSError:  # it did so just now (two nodes sharing a volume's cache)
                if not (out / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.close()
    return open_encoded(out)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK_NAME = ".lock"
# An encode's temporary folder: .<split digest>.v<N>.@<machine>.<pid>.tmp (before the machine
# was named: .<split digest>.v<N>.<pid>.tmp).
TEMP_DIR = re.compile(r"^\..+?(?:\.@(?P<host>[A-Za-z0-9-]+))?\.(?P<pid>\d+)\.tmp$")
# Another machine's temporary folder in a shared cache is removed only after this long
# without a write: its process and its lock cannot be seen from here.
STALE_ELSEWHERE = 24 * 3600


def host_tag() -> str:
    """This machine, as a temporary folder names it. A cluster's nodes share a network
    volume's cache: a pid names a process only on its own machine (two containers' trainers
    often have the same one), and a lock taken on another machine may not be seen here."""
    import socket

    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _last_written(folder: Path) -> float:
    """The newest modification time of a folder and the files in it."""
    times = [folder.stat().st_mtime]
    for item in folder.iterdir():
        try:
            times.append(item.stat().st_mtime)
        except OSError:
            pass
    return max(times)


def _hold_lock(folder: Path) -> Any:
    """An OS lock on folder/.lock, held while this process lives (the kernel frees it when
    the process dies, kill -9 included), so another process can tell this temporary folder
    from one a killed encode left behind."""
    import fcntl

    handle = open(folder / LOCK_NAME, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def remove_stale_temps(cache_dir: Path) -> list[Path]:
    """Remove the temporary folders killed encodes left in a cache (each can be as large as
    the encoding): this machine's whose lock no process holds, or, without a lock file,
    whose process is gone; another machine's (a cluster node sharing a network volume) only
    once nothing was written to it for STALE_ELSEWHERE. Returns what was removed."""
    import fcntl

    removed = []
    try:
        entries = list(Path(cache_dir).iterdir())
    except OSError:
        return removed
    here = host_tag()
    for entry in entries:
        match = TEMP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        if match.group("host") not in (None, here):
            try:
                if time.time() - _last_written(entry) < STALE_ELSEWHERE:
                    continue  # maybe a live encode there
            except OSError:
                continue  # gone meanwhile
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            continue
        if int(match.group("pid")) == os.getpid():
            continue
        lock = entry / LOCK_NAME
        if lock.is_file():
            try:
                with open(lock, "rb") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live encode
            except OSError:
                pass
        # Free lock or none: a killed encode's, or a live one between making its folder and
        # taking the lock (that gap let another encode remove a live folder). Its process,
        # on this machine, says which; a pid reused since keeps a dead folder a while longer.
        if _alive(int(match.group("pid"))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _run(jobs: list, workers: int) -> Iterator[Chunk]:
    """_encode_range over the jobs, in order; on worker processes (chessbot.procpool, which
    ends cleanly when a bad line stops the encoding early) when there are several."""
    from chessbot.procpool import ordered_map

    return ordered_map(_encode_range, jobs, min(workers, len(jobs)))


@dataclass
class EncodedDataset:
    digest: str                # the dataset's content hash (chessbot.data.dataset_hash)
    splits: dict[str, Encoded]
    seconds: float             # spent encoding now (0 when all came from the cache)
    cached: bool

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.splits.values())

    @property
    def positions(self) -> int:
        return sum(len(s) for s in self.splits.values())


def encode_dataset(dataset_dir: Path, cache_dir: Path | None = None,
                   workers: int | None = None, splits: tuple[str, ...] = ("train", "val"),
                   log: Callable[[str], None] | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   warn: Callable[[str], None] | None = None) -> EncodedDataset:
    """Encode a dataset folder's splits (each cached by its content hash under cache_dir,
    default DATASET_DIR/../.encoded_cache), reusing what is cached."""
    from chessbot.data import digests

    dataset_dir = Path(dataset_dir)
    chosen = cache_dir is not None
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(dataset_dir)
    if chosen and cache_dir.exists() and not cache_dir.is_dir():
        raise NotADirectoryError(f"the cache folder {cache_dir} is a file")
    started = time.perf_counter()
    result: dict[str, Encoded] = {}
    cached = True
    unknown = [s for s in splits if f"{s}.jsonl" not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}")
    for name in SPLITS:
        if not (dataset_dir / name).is_file():
            raise FileNotFoundError(f"{dataset_dir / name}: missing (a dataset needs "
                                    f"{' and '.join(SPLITS)})")
    digest, split_digests = digests(dataset_dir)
    for split in splits:
        name = f"{split}.jsonl"
        source = dataset_dir / name
        target = cache_path(cache_dir, split_digests[name])
        if (target / "meta.json").is_file():
            why = damaged(target)
            if why is None:
                result[split] = open_encoded(target)
                if log:
                    log(f"{split}: {len(result[split])} positions from the cache {target}")
                continue
            # Made again from the dataset, which is the truth: the cache is only a copy.
            if warn or log:
                (warn or log)(f"{split}: the cache {target} is damaged ({why}): encoding it "
                              "again")
            shutil.rmtree(target, ignore_errors=True)
        cached = False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            probe = target.parent / f".probe.{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:  # a read-only dataset folder: encode into a temporary cache
            if chosen:  # but a cache the caller named is used or refused, never replaced
                raise
            import tempfile

            fallback = Path(tempfile.gettempdir()) / "chessbot-encoded-cache"
            if log:
                log(f"cannot write the cache {target.parent} ({exc.strerror}); using {fallback}")
            fallback.mkdir(parents=True, exist_ok=True)
            target = cache_path(fallback, target.name.split(".")[0])
            if (target / "meta.json").is_file():
                if damaged(target) is None:
                    result[split] = open_encoded(target)
                    continue
                shutil.rmtree(target, ignore_errors=True)
        result[split] = encode_split(
            source, target, workers,
            (lambda done, total, s=split: progress(s, done, total)) if progress else None)
    seconds = 0.0 if cached else time.perf_counter() - started
    return EncodedDataset(digest, result, seconds, cached)


def featurize_numpy(rows: np.ndarray) -> np.ndarray:
    """featurize() in numpy, for the CPU without torch: [B, 52] uint8 rows → [B, 22, 8, 8]
    float32 planes, exactly chessbot.encoding.encode_board."""
    b = rows.shape[0]
    rows = rows.astype(np.int64)
    nibbles = rows[:, :32]
    squares = np.stack((nibbles & 15, nibbles >> 4), axis=2).reshape(b, 64)
    pieces = squares[:, None, :] == np.arange(1, 13).reshape(1, 12, 1)
    bits = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    attacks = ((rows[:, 32:48, None] & bits) != 0).reshape(b, 2, 64)
    castling = np.broadcast_to(((rows[:, 48:49] & bits[:4]) != 0)[:, :, None], (b, 4, 64))
    ep = (rows[:, 49:50] == np.arange(64))[:, None, :]
    ones = np.ones((b, 1, 64), dtype=bool)
    own = pieces[:, :6].any(1)
    opp = pieces[:, 6:].any(1)
    hanging_own = own & attacks[:, 1] & ~attacks[:, 0]
    hanging_opp = opp & attacks[:, 0] & ~attacks[:, 1]
    planes = np.concatenate([pieces, castling, ep, ones, attacks, hanging_own[:, None],
                             hanging_opp[:, None]], axis=1)
    return planes.reshape(b, 22, 8, 8).astype(np.float32)


# -- on the device (torch) -----------------------------------------------------------------

def featurize(rows: Any) -> Any:
    """[B, 52] uint8 rows (a torch tensor, on any device) → [B, 22, 8, 8] float planes,
    exactly chessbot.encoding.encode_board."""
    import torch

    b = rows.shape[0]
    device = rows.device
    rows = rows.to(torch.int64)
    nibbles = rows[:, :32]
    squares = torch.stack((nibbles & 15, nibbles >> 4), dim=2).reshape(b, 64)
    pieces = squares.unsqueeze(1) == torch.arange(1, 13, device=device).view(1, 12, 1)
    bits = 1 << torch.arange(8, device=device)  # made there: a host copy would sync each batch
    attacks = ((rows[:, 32:48].unsqueeze(-1) & bits) != 0).reshape(b, 2, 64)
    castling = ((rows[:, 48:49] & bits[:4]) != 0).unsqueeze(-1).expand(b, 4, 64)
    ep = (rows[:, 49:50] == torch.arange(64, device=device)).unsqueeze(1)
    ones = torch.ones((b, 1, 64), dtype=torch.bool, device=device)
    own = pieces[:, :6].any(1)
    opp = pieces[:, 6:].any(1)
    hanging_own = own & attacks[:, 1] & ~attacks[:, 0]
    hanging_opp = opp & attacks[:, 0] & ~attacks[:, 1]
    planes = torch.cat([pieces, castling, ep, ones, attacks, hanging_own.unsqueeze(1),
                        hanging_opp.unsqueeze(1)], dim=1)
    return planes.reshape(b, 22, 8, 8).float()


def labels_of(rows: Any) -> Any:
    import torch

    rows = rows.to(torch.int64)
    return rows[:, 50] | (rows[:, 51] << 8)


def legal_mask_batch(legal: Any, starts: Any, counts: Any, total: int) -> Any:
    """The [B, 4096] bool legal masks of a batch from its ragged legal moves: `legal` the
    flat move indices, position i's from starts[i], counts[i] of them, `total` their sum
    (passed in so that no device sync is needed)."""
    import torch

    b = counts.shape[0]
    device = counts.device
    row = torch.repeat_interleave(torch.arange(b, device=device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=device) - torch.repeat_interleave(
        first, counts, output_size=total)
    index = torch.repeat_interleave(starts, counts, output_size=total) + within
    mask = torch.zeros((b, 4096), dtype=torch.bool, device=device)
    mask[row, legal[index].to(torch.int64)] = True
    return mask
