"""The trained policy as a UCI engine, for chess GUIs, tournament managers and lichess-bot.

    python -m chessbot.uci --model PATH

Speaks UCI as GUIs use it: uci, isready, ucinewgame, setoption, position startpos|fen ...
[moves ...], go (wtime btime winc binc movestogo movetime depth nodes infinite ponder), stop,
ponderhit, quit. The policy answers from one forward pass, so every limit is met at once; under
`go infinite` (or ponder) the move is held until `stop`/`ponderhit`. `bestmove` is always a legal
move, or `0000` when the position has none. Unknown or malformed input is ignored (an
`info string` says why) and `isready` is answered after anything.

Options: Device (cpu | cuda), Temperature (0 = the most likely move; above 0 samples from the
policy sharpened or flattened by it, seeded by Seed), Seed, MultiPV (the top moves as info lines),
AvoidRepetition (default true: when not behind in material, skip moves that return to a position
already seen in the game, the one judgement a policy without search cannot make, so it does
not drift into threefold repetitions it should avoid), MateInOne (default true: play a move that
mates at once when there is one, which a policy alone often misses).

Loads in well under a second on a CPU: on Device=cpu the network runs in numpy, its weights read
straight from the checkpoint's zip file (a torch.save archive) without importing torch; torch
is imported only when Device=cuda is chosen.
"""

from __future__ import annotations

import math
import pickle
import random
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, TextIO

import chess
import numpy as np

from chessbot.encoding import MOVES, PLANES, encode_board, move_index

FORMAT = "chessbot-policy-v1"  # chessbot.infer.FORMAT, without importing torch
NAME = "chessbot-policy"
AUTHOR = "pod-cycle"
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default
MAX_MULTIPV = 20


class CheckpointError(ValueError):
    pass


# -- reading a torch.save archive without torch ---------------------------------------------
_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _BadTensor(ValueError):
    """A tensor record whose offset, size or stride do not fit its storage."""


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    *_: Any) -> np.ndarray:
    # The checkpoint may come from a hostile pod: as_strided trusts its shape and strides,
    # so each is checked against the storage first (else a read past the buffer: the host's
    # memory in the weights, or a crash).
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    size, stride = tuple(size), tuple(stride)
    if not (isinstance(storage, np.ndarray) and whole(offset) and len(size) == len(stride)
            and all(whole(v) for v in size + stride)):
        raise _BadTensor("a tensor record of the wrong shape")
    count = 1
    for dim in size:
        count *= dim
    if count == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((dim - 1) * step for dim, step in zip(size, stride, strict=True))
    if last >= len(storage) or count > len(storage):
        raise _BadTensor(f"a tensor of {count} values reaches element {last} of a storage "
                         f"of {len(storage)}")
    if not size:
        return np.array(storage[offset])
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A chessbot checkpoint (torch.save zip) as plain Python and numpy arrays, its weights
    checked against its model_config (check_architecture). Any file that is not one raises
    CheckpointError, never another exception."""
    try:
        checkpoint = _read_archive(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged zip (a bad central directory, a
        # member name that is no UTF-8, a version it cannot read) is the same answer
        raise CheckpointError(f"cannot read model {path}: {type(exc).__name__}") from None
    check_architecture(checkpoint, path)
    return checkpoint


def expected_shapes(blocks: int, channels: int) -> dict[str, tuple[int, ...]]:
    """Each weight chessbot.model.PolicyNet(ModelConfig(blocks, channels)) holds, by its
    state_dict name, with its shape (num_batches_tracked left out: it carries no weight)."""
    c = channels

    def norm(name: str) -> dict[str, tuple[int, ...]]:
        return {f"{name}.{part}": (c,) for part in ("weight", "bias", "running_mean",
                                                      "running_var")}

    shapes = {"stem.0.weight": (c, PLANES, 3, 3), **norm("stem.1")}
    for i in range(blocks):
        shapes.update({f"body.{i}.conv1.weight": (c, c, 3, 3), **norm(f"body.{i}.bn1"),
                       f"body.{i}.conv2.weight": (c, c, 3, 3), **norm(f"body.{i}.bn2")})
    shapes.update({"head.0.weight": (c, c, 1, 1), **norm("head.1"),
                   "head.3.weight": (64, c, 1, 1), "head.3.bias": (64,)})
    return shapes


def check_architecture(checkpoint: dict[str, Any], path: Path) -> tuple[int, int]:
    """The checkpoint's (blocks, channels), once its model_config is within the trainer's own
    limits and every weight that model needs is there, an array (numpy's or torch's: what
    either loader can make with a shape) of its shape. Before: a missing config was a KeyError, a
    weight of another shape played the first legal move all match long, blocks=-1 dropped the
    residual blocks, and channels=30000 had torch allocate 32 GB before any check."""
    from chessbot.train_args import RANGES

    config = checkpoint.get("model_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no model_config (blocks, channels)")
    sizes = []
    for name in ("blocks", "channels"):
        value, (low, high) = config.get(name), RANGES[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise CheckpointError(f"{path}: its model_config {name}={value!r} is not a whole "
                                  f"number from {low:g} to {high:g}")
        sizes.append(value)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state_dict of weights")
    for name, shape in expected_shapes(*sizes).items():
        if name not in state:
            raise CheckpointError(f"{path}: checkpoint lacks weight {name!r}")
        found = getattr(state[name], "shape", None)
        if found is None or tuple(found) != shape:
            raise CheckpointError(
                f"{path}: weight {name} is "
                + (f"of shape {tuple(found)}" if found is not None else "not an array")
                + f", where its model_config ({sizes[0]}x{sizes[1]}) needs {shape}")
    return sizes[0], sizes[1]


# torch.save stores its records as they are; a repacked checkpoint's weights deflate to about
# 0.9 of their size. A record that would inflate far beyond its stored bytes is a zip bomb:
# 1 MB of zeros deflated asked the loader for 2 GB of memory.
MAX_INFLATION = 20


def check_inflation(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse a checkpoint any of whose records would inflate more than MAX_INFLATION times
    (plus 64 KiB) its stored size, before any is read: zipfile reads a record up to its
    declared size, which is what a bomb inflates to."""
    for info in archive.infolist():
        if info.file_size > MAX_INFLATION * info.compress_size + (1 << 16):
            raise CheckpointError(
                f"{path}: its record {info.filename[:80]!r} would inflate {info.compress_size} "
                f"stored bytes to {info.file_size}, which no checkpoint torch.save writes does "
                "(a zip bomb?)")


def check_file_inflation(path: Path) -> None:
    """check_inflation of the file at `path`, where it is a zip (torch's loader reads the
    same records); a file that is no zip is left to the loader's own refusal."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with archive:
        check_inflation(archive, path)


def _read_archive(path: Path) -> dict[str, Any]:
    archive = zipfile.ZipFile(path)
    with archive:
        check_inflation(archive, path)
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if archive.namelist().count(prefix + "byteorder") and \
                archive.read(prefix + "byteorder").strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, np.ndarray] = {}
        made = [0]  # values copied out of the storages so far

        def rebuild(storage: np.ndarray, *args: Any) -> np.ndarray:
            # Each record is bounded by its storage; together they are bounded by all the
            # storages read: many records over one storage (16 MB of zeros zip to 16 KB)
            # must not copy it a thousand times into the host's memory.
            tensor = _rebuild_tensor(storage, *args)
            made[0] += tensor.size
            if made[0] > sum(len(s) for s in storages.values()):
                raise _BadTensor(f"its tensors hold {made[0]} values, more than the "
                                 f"{sum(len(s) for s in storages.values())} stored")
            return tensor

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return rebuild
                if module == "torch" and name in _DTYPES:
                    return _StorageType(name)
                raise CheckpointError(f"{path}: unexpected object {module}.{name}")

            def persistent_load(self, saved_id: Any) -> np.ndarray:
                _, storage_type, key, _location, _numel = saved_id
                if key not in storages:
                    raw = archive.read(f"{prefix}data/{key}")
                    storages[key] = np.frombuffer(raw, dtype=_DTYPES[storage_type.name])
                return storages[key]

        try:
            checkpoint = Unpickler(archive.open(pickles[0])).load()
        except CheckpointError:
            raise
        except _BadTensor as exc:
            raise CheckpointError(f"{path} is not a chessbot checkpoint: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer
            raise CheckpointError(f"cannot read model {path}: {type(exc).__name__}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a chessbot checkpoint ({FORMAT})")
    return checkpoint


# Both loaders' answer for a network whose answer to the starting position is not finite.
NOT_FINITE = ("its network answers NaN or infinity (its weights are not numbers: the training "
              "that wrote it diverged?)")


def load_policy(path: Path) -> NumpyPolicy:
    """The checkpoint's network in numpy, once it answers the starting position with finite
    numbers: a training that diverged leaves NaN weights, whose every answer is the first
    legal move (and "prob": NaN, which is no JSON)."""
    policy = NumpyPolicy(read_checkpoint(path))
    with np.errstate(all="ignore"):
        finite = bool(np.all(np.isfinite(policy.logits(encode_board(chess.Board())))))
    if not finite:
        raise CheckpointError(f"{path}: {NOT_FINITE}")
    return policy


# -- the policy network in numpy ---------------------------------------------------------------
class NumpyPolicy:
    """chessbot.model.PolicyNet's forward pass (eval mode) in numpy, batch norms folded into
    the convolutions."""

    def __init__(self, checkpoint: dict[str, Any]) -> None:
        # Arrays only (read_checkpoint checked the ones the model needs): np.asarray on a
        # hostile nested list of shared references grew a 584-byte file into gigabytes.
        state = {k: np.asarray(v, dtype=np.float32) for k, v in checkpoint["state_dict"].items()
                 if isinstance(v, np.ndarray) and not k.endswith("num_batches_tracked")}
        self.blocks = int(checkpoint["model_config"]["blocks"])

        def fold(conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
            weight = state[f"{conv}.weight"]
            scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPS)
            bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
            return (weight * scale[:, None, None, None]).reshape(weight.shape[0], -1), bias

        try:
            self.stem = fold("stem.0", "stem.1")
            self.body = [(fold(f"body.{i}.conv1", f"body.{i}.bn1"),
                          fold(f"body.{i}.conv2", f"body.{i}.bn2")) for i in range(self.blocks)]
            self.head1 = fold("head.0", "head.1")
            self.head2 = (state["head.3.weight"].reshape(64, -1), state["head.3.bias"])
        except KeyError as exc:
            raise CheckpointError(f"checkpoint lacks weight {exc}") from None

    @staticmethod
    def _conv3_batch(x: np.ndarray, layer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        weight, bias = layer  # x [B, in, 64] → [B, out, 64]
        b = x.shape[0]
        padded = np.pad(x.reshape(b, -1, 8, 8), ((0, 0), (0, 0), (1, 1), (1, 1)))
        cols = np.stack([padded[:, :, dy:dy + 8, dx:dx + 8] for dy in range(3)
                         for dx in range(3)], axis=2)  # [B, in, 9, 8, 8]
        return weight @ cols.reshape(b, -1, 64) + bias[:, None]

    def logits_batch(self, planes: np.ndarray) -> np.ndarray:
        """logits() of a batch: [B, 22, 8, 8] planes → [B, 4096]."""
        b = planes.shape[0]
        x = np.maximum(self._conv3_batch(planes.astype(np.float32).reshape(b, -1, 64),
                                         self.stem), 0)
        for first, second in self.body:
            y = np.maximum(self._conv3_batch(x, first), 0)
            x = np.maximum(x + self._conv3_batch(y, second), 0)
        weight, bias = self.head1
        h = np.maximum(weight @ x + bias[:, None], 0)
        weight, bias = self.head2
        out = weight @ h + bias[:, None]  # [B, to, from]
        return out.transpose(0, 2, 1).reshape(b, MOVES)  # from * 64 + to

    def logits(self, planes: np.ndarray) -> np.ndarray:
        """[22, 8, 8] planes → the 4096 move logits."""
        return self.logits_batch(planes[None])[0]


class TorchPolicy:
    """The torch model on a device (imported only when Device=cuda is chosen)."""

    def __init__(self, path: Path, device: str) -> None:
        import torch

        from chessbot.infer import load_model

        if device == "cuda" and not torch.cuda.is_available():
            raise CheckpointError("Device cuda: no CUDA device is available")
        self.torch = torch
        self.model = load_model(path, device)
        self.device = device

    def logits(self, planes: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.from_numpy(planes).float().unsqueeze(0).to(self.device)
            return self.model(x)[0].float().cpu().numpy()


# -- the engine --------------------------------------------------------------------------------
def legal_by_index(board: chess.Board) -> dict[int, chess.Move]:
    """Each legal move under its policy index; promotions share their square pair, and the
    queen promotion stands for them (as chessbot.encoding.index_to_move picks)."""
    white = board.turn == chess.WHITE
    found: dict[int, chess.Move] = {}
    for move in board.legal_moves:
        index = move_index(move, white)
        if index not in found or move.promotion == chess.QUEEN:
            found[index] = move
    return found


def ranked_moves(logits: np.ndarray, board: chess.Board, temperature: float
                 ) -> list[tuple[chess.Move, float]]:
    """Legal moves with their probabilities, most likely first."""
    legal = legal_by_index(board)
    indices = np.fromiter(legal, dtype=np.int64, count=len(legal))
    values = logits[indices].astype(np.float64)
    with np.errstate(over="ignore"):
        scaled = values / temperature if temperature > 0 else values.copy()
    if np.all(np.isfinite(scaled)):
        scaled -= scaled.max()
        probs = np.exp(scaled)
    else:  # a temperature so small the division overflows (1e-310): its limit, the best move
        probs = (values == values.max()).astype(np.float64)
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    return [(legal[int(indices[i])], float(probs[i])) for i in order]


PIECE_VALUES = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9}


def _material(board: chess.Board, color: bool) -> int:
    return sum(value * len(board.pieces(piece, color)) for piece, value in PIECE_VALUES.items())


def _mates(board: chess.Board, move: chess.Move) -> bool:
    board.push(move)
    try:
        return board.is_checkmate()
    finally:
        board.pop()


def _repeats(board: chess.Board, move: chess.Move) -> bool:
    """Whether the move returns to a position seen before in this game."""
    board.push(move)
    try:
        return board.is_repetition(2)
    finally:
        board.pop()


def legal_move(board: chess.Board, text: str) -> chess.Move | None:
    """The move `text` (UCI notation) names, where it is legal on `board`; else None."""
    try:
        move = chess.Move.from_uci(text)
    except ValueError:
        return None
    return move if board.is_legal(move) else None


# The words of `go` that end a searchmoves list (the UCI protocol's own list).
GO_WORDS = frozenset({"searchmoves", "ponder", "wtime", "btime", "winc", "binc", "movestogo",
                      "depth", "nodes", "mate", "movetime", "infinite"})


class Engine:
    def __init__(self, model_path: Path, out: TextIO = sys.stdout) -> None:
        self.model_path = model_path
        self.out = out
        self.policy: NumpyPolicy | TorchPolicy = load_policy(model_path)
        self.device = "cpu"
        self.temperature = 0.0
        self.seed = 0
        self.multipv = 1
        self.avoid_repetition = True
        self.mate_in_one = True
        self.rng = random.Random(self.seed)
        self.board = chess.Board()
        self.no_position = False  # the last `position` set none up: go answers 0000
        self.pending: str | None = None  # a bestmove held until stop/ponderhit

    def send(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.send(f"info string {text}")

    # Each handler gets the tokens after the command word.
    def handle(self, line: str) -> bool:
        """Process one input line; False when the engine should quit."""
        tokens = line.strip().split()
        # Unknown leading tokens are skipped, as the protocol asks ("joho debug on").
        while tokens and tokens[0] not in self.COMMANDS:
            tokens = tokens[1:]
        if not tokens:
            return True
        command, args = tokens[0], tokens[1:]
        if command == "quit":
            return False
        try:
            getattr(self, self.COMMANDS[command])(args)
        except Exception as exc:  # noqa: BLE001 - a GUI's input must never kill the engine
            said = str(exc)
            said = said if len(said) <= 200 else said[:200] + "..."  # not a 1 MB line back
            self.note(f"ignored {command}: {type(exc).__name__}: {said}")
        return True

    COMMANDS = {"uci": "cmd_uci", "isready": "cmd_isready", "ucinewgame": "cmd_ucinewgame",
                "setoption": "cmd_setoption", "position": "cmd_position", "go": "cmd_go",
                "stop": "cmd_stop", "ponderhit": "cmd_stop", "debug": "cmd_ignore",
                "register": "cmd_ignore", "quit": "cmd_ignore"}

    def cmd_ignore(self, args: list[str]) -> None:
        pass

    def cmd_uci(self, args: list[str]) -> None:
        self.send(f"id name {NAME} ({self.model_path.name})")
        self.send(f"id author {AUTHOR}")
        self.send("option name Device type combo default cpu var cpu var cuda")
        self.send("option name Temperature type string default 0")
        self.send("option name Seed type spin default 0 min 0 max 2147483647")
        self.send(f"option name MultiPV type spin default 1 min 1 max {MAX_MULTIPV}")
        self.send("option name AvoidRepetition type check default true")
        self.send("option name MateInOne type check default true")
        self.send("uciok")

    def cmd_isready(self, args: list[str]) -> None:
        self.send("readyok")

    def cmd_ucinewgame(self, args: list[str]) -> None:
        self.flush_pending()
        self.board, self.no_position = chess.Board(), False

    def cmd_setoption(self, args: list[str]) -> None:
        if not args or args[0] != "name":
            raise ValueError("expected: setoption name <id> [value <x>]")
        split = args.index("value") if "value" in args else len(args)
        name = " ".join(args[1:split]).lower()
        value = " ".join(args[split + 1:])
        if name == "temperature":
            temperature = float(value)
            if not math.isfinite(temperature) or temperature < 0:
                raise ValueError(f"Temperature must be a number >= 0, got {value!r}")
            self.temperature = temperature
        elif name == "seed":
            self.seed = int(value)
            self.rng = random.Random(self.seed)
        elif name == "multipv":
            self.multipv = min(max(int(value), 1), MAX_MULTIPV)
        elif name in ("avoidrepetition", "mateinone"):
            if value.strip().lower() not in ("true", "false"):
                raise ValueError(f"{name} is true or false, got {value!r}")
            setattr(self, "avoid_repetition" if name == "avoidrepetition" else "mate_in_one",
                    value.strip().lower() == "true")
        elif name == "device":
            device = value.strip().lower()
            if device not in ("cpu", "cuda"):
                raise ValueError(f"Device is cpu or cuda, got {value!r}")
            if device != self.device:
                self.policy = (load_policy(self.model_path) if device == "cpu"
                               else TorchPolicy(self.model_path, device))
                self.device = device
        else:
            raise ValueError(f"no option {name!r}")

    def cmd_position(self, args: list[str]) -> None:
        """The position to search next. One the engine cannot set up (no FEN it can read)
        leaves no position: `go` answers bestmove 0000 until the next `position` or
        `ucinewgame`, never a move for the game's previous position. A move list is played
        up to its first illegal move, as Stockfish does, and that move is named."""
        self.board, self.no_position = chess.Board(None), True
        if not args:
            raise ValueError("expected: position startpos|fen <FEN> [moves ...]")
        split = args.index("moves") if "moves" in args else len(args)
        if args[0] == "startpos":
            board = chess.Board()
        elif args[0] == "fen":
            board = chess.Board(" ".join(args[1:split]))
        else:
            raise ValueError(f"expected startpos or fen, got {args[0]!r}")
        self.board, self.no_position = board, False
        for text in args[split + 1:]:
            move = legal_move(board, text)
            if move is None:
                raise ValueError(f"illegal move {text} in {board.fen()}: the position is the "
                                 f"one before it")
            board.push(move)

    def search_moves(self, board: chess.Board, args: list[str]) -> set[chess.Move] | None:
        """The moves `go searchmoves m1 m2 ...` restricts the answer to (its legal ones), or
        None for every legal move. A list with no legal move is said and searches them all."""
        if "searchmoves" not in args:
            return None
        listed = []
        for text in args[args.index("searchmoves") + 1:]:
            if text in GO_WORDS:
                break
            listed.append(text)
        chosen = {move for move in (legal_move(board, text) for text in listed) if move}
        if not chosen:
            self.note(f"searchmoves lists no legal move ({' '.join(listed)[:200]}): "
                      "searching every move")
            return None
        return chosen

    def choose(self, board: chess.Board, only: set[chess.Move] | None = None
               ) -> tuple[list[tuple[chess.Move, float]], chess.Move]:
        logits = self.policy.logits(encode_board(board))
        moves = ranked_moves(logits, board, self.temperature)
        if only is not None:
            # A listed underpromotion shares its square pair with the queen's, which the
            # policy ranks for both: it is kept, after the ranked ones, with no probability.
            ranked = {move for move, _ in moves}
            moves = [(move, prob) for move, prob in moves if move in only] + \
                [(move, 0.0) for move in sorted(only - ranked, key=chess.Move.uci)]
        if self.mate_in_one:
            for move, _ in moves:
                if _mates(board, move):
                    return moves, move
        candidates = moves
        if self.avoid_repetition and _material(board, board.turn) >= \
                _material(board, not board.turn):
            fresh = [(m, p) for m, p in moves if not _repeats(board, m)]
            candidates = fresh or moves
        if self.temperature > 0:
            pick = self.rng.random() * sum(p for _, p in candidates)
            for move, prob in candidates:
                pick -= prob
                if pick <= 0:
                    return moves, move
        return moves, candidates[0][0]

    def cmd_go(self, args: list[str]) -> None:
        self.flush_pending()
        started = time.perf_counter()
        board = self.board.copy()
        wait = "infinite" in args or "ponder" in args
        try:
            has_move = any(board.legal_moves)
        except Exception:  # noqa: BLE001 - a broken position (no king...) has no answer
            has_move = False
        if not has_move:
            if self.no_position:
                self.note("no position to search: the last position command was refused")
            answer = "bestmove 0000"
        else:
            only = self.search_moves(board, args)
            try:
                moves, best = self.choose(board, only)
            except Exception as exc:  # noqa: BLE001 - still answer a legal move
                self.note(f"policy failed ({type(exc).__name__}: {exc}); playing a legal move")
                best = min(only, key=chess.Move.uci) if only else next(iter(board.legal_moves))
                moves = [(best, 1.0)]
            ms = max(1, int((time.perf_counter() - started) * 1000))
            shown = [(best, dict(moves).get(best, 0.0))] if self.temperature > 0 else moves
            for rank, (move, prob) in enumerate(shown[: self.multipv], start=1):
                self.send(f"info depth 1 seldepth 1 multipv {rank} nodes 1 nps {1000 // ms} "
                          f"time {ms} pv {move.uci()}")
                self.note(f"multipv {rank} move {move.uci()} prob {prob:.4f}")
            answer = f"bestmove {best.uci()}"
        if wait:
            self.pending = answer
        else:
            self.send(answer)

    def cmd_stop(self, args: list[str]) -> None:
        self.flush_pending()

    def flush_pending(self) -> None:
        if self.pending is not None:
            answer, self.pending = self.pending, None
            self.send(answer)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m chessbot.uci",
                                     description="the chessbot policy as a UCI engine")
    parser.add_argument("--model", required=True, help="checkpoint .pt written by the trainer")
    args = parser.parse_args(argv)
    path = Path(args.model)
    if not path.is_file():
        print(f"error: model file not found: {path} (pass --model PATH to a model.pt)",
              file=sys.stderr)
        return 2
    try:
        engine = Engine(path)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # A GUI may send bytes that are no UTF-8 (an option value in Latin-1): under a UTF-8
    # locale Python decodes stdin strictly, and one such byte ended the engine mid-match.
    # Replaced, the line is handled (or ignored) like any other malformed input.
    sys.stdin.reconfigure(errors="replace")
    try:
        for line in sys.stdin:
            if not engine.handle(line):
                break
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
