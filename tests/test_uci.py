"""chessbot.uci: the policy as a UCI engine. In-process (the Engine object, its numpy network
against the torch model) and as a real process, driven through python-chess's engine client
and through a raw pipe."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import chess
import chess.engine
import numpy as np
import pytest
import torch

from chessbot.data import random_positions
from chessbot.encoding import encode_board
from chessbot.infer import FORMAT, ModelError, answer, load_model, predict
from chessbot.model import ModelConfig, PolicyNet
from chessbot.uci import CheckpointError, Engine, NumpyPolicy, read_checkpoint
from tests.conftest import ROOT

EDGE_CASES = [
    # promotion (with capture choices)
    "1r5k/P7/8/8/8/8/8/K7 w - - 0 1",
    # black promotes
    "k7/8/8/8/8/8/p7/4K3 b - - 0 1",
    # castling both sides available
    "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1",
    "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R b KQkq - 0 1",
    # en passant available
    "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",
    # one legal move
    "k7/8/1K6/8/8/8/8/7R b - - 0 1",
    # in check, must block or capture
    "4k3/8/8/8/8/8/3q4/4K3 w - - 0 1",
    # a lone-king ending with the 50-move counter high
    "8/8/4k3/8/8/4K3/8/8 w - - 99 120",
]
NO_MOVE = [
    "7k/5Q2/6K1/8/8/8/8/8 b - - 0 1",  # stalemate
    "k7/1Q6/1K6/8/8/8/8/8 b - - 0 1",  # checkmate
]


def make_model(path: Path, seed: int = 3, blocks: int = 2, channels: int = 16) -> Path:
    """A randomly initialised chessbot checkpoint (random batch-norm statistics too), saved as
    the trainer saves model.pt."""
    torch.manual_seed(seed)
    net = PolicyNet(ModelConfig(blocks=blocks, channels=channels))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"format": FORMAT, "model_config": net.config.as_dict(), "state_dict": state,
                "epoch": 1, "metrics": {"val_top1": 0.1}}, path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("uci-model") / "model.pt")


def engine_command(model: Path) -> list[str]:
    return [sys.executable, "-m", "chessbot.uci", "--model", str(model)]


class Session:
    """An in-process engine fed line by line."""

    def __init__(self, model: Path) -> None:
        self.out = io.StringIO()
        self.engine = Engine(model, self.out)

    def send(self, *lines: str) -> list[str]:
        start = self.out.tell()
        for line in lines:
            assert self.engine.handle(line) is True
        self.out.seek(start)
        answer = self.out.read().splitlines()
        self.out.seek(0, io.SEEK_END)
        return answer

    def bestmove(self, *lines: str) -> str:
        answer = self.send(*lines)
        best = [line for line in answer if line.startswith("bestmove ")]
        assert len(best) == 1, answer
        return best[0].split()[1]


def test_numpy_network_matches_torch(model_file: Path) -> None:
    torch_model = load_model(model_file)
    numpy_model = NumpyPolicy(read_checkpoint(model_file))
    for board in random_positions(40, seed=2):
        planes = encode_board(board)
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(planes).float().unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(numpy_model.logits(planes), expected, rtol=1e-4, atol=1e-4)


def test_the_infer_command_lines_numpy_answer_is_the_torch_answer(model_file: Path) -> None:
    """chessbot.infer.answer (the command line, and the pod's smoke after training) runs the
    network in numpy: the same move and the same probabilities as predict() with torch."""
    model = load_model(model_file)
    fens = [chess.STARTING_FEN, *EDGE_CASES, *(b.fen() for b in random_positions(40, seed=7))]
    for fen in fens:
        try:
            expected = predict(model, fen, 5)
        except ModelError as refused:  # a finished game: refused alike
            with pytest.raises(ModelError, match=str(refused).split(":")[0]):
                answer(model_file, fen, 5)
            continue
        got = answer(model_file, fen, 5)
        assert (got["fen"], got["move"], len(got["top"])) == \
            (expected["fen"], expected["move"], len(expected["top"])), fen
        probs = {t["move"]: t["prob"] for t in expected["top"]}
        for top in got["top"]:
            if top["move"] in probs:  # a near tie may swap the last of the top k
                assert abs(top["prob"] - probs[top["move"]]) < 1e-4, (fen, top)
    for fen, reason in zip(NO_MOVE, ("stalemate", "checkmate"), strict=True):
        with pytest.raises(ModelError, match=f"^no legal move: the game is over .*{reason}"):
            answer(model_file, fen)
    # K v K has legal moves, and the game is over all the same (it said "no legal move").
    with pytest.raises(ModelError, match=r"^no move to play: the game is over in "
                                         r"'8/8/8/3k4/8/8/8/4K3 w - - 0 1' \(insufficient "
                                         r"material, 1/2-1/2\)$"):
        answer(model_file, "8/8/8/3k4/8/8/8/4K3 w - - 0 1")
    with pytest.raises(ModelError, match="model file not found"):
        answer(model_file.parent / "missing.pt")


def test_the_infer_command_line_answers_without_importing_torch(model_file: Path) -> None:
    code = ("import json, sys; from chessbot.infer import main; rc = main(['--model', "
            f"{str(model_file)!r}, '--json']); print(json.dumps(['torch' in sys.modules, rc]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer_line, imported = result.stdout.splitlines()
    assert json.loads(imported) == [False, 0]
    assert json.loads(answer_line)["move"] in {m.uci() for m in chess.Board().legal_moves}


def test_checkpoint_reader_refuses_other_files(tmp_path: Path, model_file: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(CheckpointError, match="not a chessbot checkpoint"):
        read_checkpoint(other)


@pytest.mark.parametrize("kept", [16, 4 * 60])
def test_a_tensor_that_reaches_past_its_storage_is_refused(tmp_path: Path, model_file: Path,
                                                           kept: int) -> None:
    """A checkpoint from a hostile pod whose largest storage is cut short (to 4 or 60
    floats) while its tensor records still claim the whole: numpy's as_strided read past the
    buffer, putting the host's heap bytes into the weights (or crashing for a far stride).
    Every record is checked against its storage now."""
    import zipfile

    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(crafted, "w") as target:
        blobs = sorted((n for n in source.namelist() if "/data/" in n),
                       key=lambda n: -source.getinfo(n).file_size)
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:kept] if name == blobs[0] else data)
    with pytest.raises(CheckpointError, match=r"not a chessbot checkpoint: a tensor of \d+ "
                                              r"values reaches element \d+ of a storage of"):
        read_checkpoint(crafted)
    result = subprocess.run([sys.executable, "-m", "chessbot.infer", "--model", str(crafted)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode > 0  # refused with an exit code, never killed by a signal
    assert "not a chessbot checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_many_records_over_one_storage_are_refused(tmp_path: Path) -> None:
    """Each record fits its storage, but 200 of them over one 4 MB storage (zeros: a few KB
    zipped) would copy it 200 times into the host's memory: 3.2 GB from a 17 KB file in the
    second read. The values all records hold are bounded by what is stored. (The trainer's
    checkpoints share no storage between tensors.)"""
    base = torch.zeros(1 << 20)
    crafted = tmp_path / "shared.pt"
    views = {f"w{i}": base.view(-1) for i in range(200)}  # 200 records, one storage
    torch.save({"format": FORMAT, "state_dict": views}, crafted)
    with pytest.raises(CheckpointError, match=r"its tensors hold 2097152 values, more than "
                                              r"the 1048576 stored"):
        read_checkpoint(crafted)


def test_every_answer_is_legal_in_random_positions_and_edge_cases(model_file: Path) -> None:
    session = Session(model_file)
    boards = random_positions(400, seed=17)  # 2,000 more through a real pipe below
    for board in boards:
        # As GUIs send it: the start position and the moves, or a FEN.
        if board.move_stack and len(board.move_stack) % 2:
            moves = " ".join(m.uci() for m in board.move_stack)
            best = session.bestmove(f"position startpos moves {moves}", "go wtime 1000 btime 900")
        else:
            best = session.bestmove(f"position fen {board.fen()}", "go movetime 10")
        assert chess.Move.from_uci(best) in board.legal_moves, (board.fen(), best)
    for fen in EDGE_CASES:
        board = chess.Board(fen)
        best = session.bestmove(f"position fen {fen}", "go depth 3")
        assert chess.Move.from_uci(best) in board.legal_moves, (fen, best)
    for fen in NO_MOVE:
        assert session.bestmove(f"position fen {fen}", "go nodes 5") == "0000"


def test_uci_handshake_options_and_info(model_file: Path) -> None:
    session = Session(model_file)
    answer = session.send("uci")
    assert answer[0].startswith("id name chessbot") and answer[1].startswith("id author")
    assert answer[-1] == "uciok"
    options = {line.split()[2] for line in answer if line.startswith("option name")}
    assert {"Device", "Temperature", "Seed", "MultiPV", "AvoidRepetition"} <= options
    assert session.send("isready") == ["readyok"]
    session.send("setoption name MultiPV value 3", "position startpos")
    answer = session.send("go")
    pvs = [line for line in answer if line.startswith("info depth")]
    probs = [float(line.split()[-1]) for line in answer if line.startswith("info string")]
    assert len(pvs) == 3 and len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert answer[-1] == f"bestmove {pvs[0].split()[-1]}"


def test_temperature_samples_seeded(model_file: Path) -> None:
    def moves(seed: int) -> list[str]:
        session = Session(model_file)
        session.send("setoption name Temperature value 5", f"setoption name Seed value {seed}")
        return [session.bestmove("position startpos", "go") for _ in range(30)]

    assert moves(1) == moves(1)
    assert len(set(moves(1))) > 1  # sampling, not the argmax
    greedy = Session(model_file)
    assert len({greedy.bestmove("position startpos", "go") for _ in range(5)}) == 1


def test_infinite_holds_the_move_until_stop(model_file: Path) -> None:
    session = Session(model_file)
    answer = session.send("position startpos moves e2e4", "go infinite")
    assert not any(line.startswith("bestmove") for line in answer)
    assert session.send("isready") == ["readyok"]
    best = session.bestmove("stop")
    assert chess.Move.from_uci(best) in chess.Board("rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/"
                                                    "RNBQKBNR b KQkq - 0 1").legal_moves
    assert session.send("stop") == []  # a stop with nothing to stop is ignored
    answer = session.send("go ponder")
    assert not any(line.startswith("bestmove") for line in answer)
    assert session.bestmove("ponderhit")


def test_mate_in_one_and_repetition_avoidance(model_file: Path) -> None:
    session = Session(model_file)
    # White mates with Qh8 (a policy would rarely find it).
    fen = "k7/8/1K6/8/8/8/8/7Q w - - 0 1"
    best = session.bestmove(f"position fen {fen}", "go")
    board = chess.Board(fen)
    board.push_uci(best)
    assert board.is_checkmate()
    # A position already seen twice: with material equal, the repeating move is avoided.
    moves = "g1f3 g8f6 f3g1 f6g8 g1f3 g8f6 f3g1"
    best = session.bestmove(f"position startpos moves {moves}", "go")
    board = chess.Board()
    for move in moves.split():
        board.push_uci(move)
    board.push_uci(best)
    assert not board.is_repetition(2), best


@pytest.mark.parametrize("garbage", [
    "", "   ", "hello", "position", "position fen", "position fen not a fen",
    "position startpos moves e2e5", "position startpos moves zz99", "position nonsense",
    "setoption", "setoption name", "setoption name Temperature value -1",
    "setoption name Temperature value abc", "setoption name MultiPV value x",
    "setoption name Nope value 1", "setoption name Device value tpu", "go wtime abc",
    "go depth", "go movetime -5 nodes x", "ucinewgame extra", "debug on", "register later",
    "stop", "ponderhit", "\x00\x01binary", "go " + "9" * 400,
    "position fen 8/8/8/8/8/8/8/8 w - - 0 1",
])
def test_garbage_and_out_of_order_input_is_ignored(model_file: Path, garbage: str) -> None:
    session = Session(model_file)
    session.send("position startpos moves e2e4")
    session.send(garbage)
    assert session.send("isready") == ["readyok"]
    best = session.bestmove("go")
    board = session.engine.board
    assert best == "0000" if not any(board.legal_moves) else \
        chess.Move.from_uci(best) in board.legal_moves


def test_a_refused_position_is_never_answered_for_the_game_s_previous_one(
        model_file: Path) -> None:
    """A `position` the engine could not set up kept the previous board, and `go` answered a
    move of another position: the GUI's game went on with an illegal move. A FEN it cannot
    read now leaves no position (bestmove 0000, said), and a move list is played up to its
    first illegal move, as Stockfish does."""
    session = Session(model_file)
    session.send("position startpos moves e2e4 e7e5")
    said = session.send("position fen not a fen")
    assert any(line.startswith("info string ignored position:") for line in said), said
    answer = session.send("go depth 1")
    assert answer[-1] == "bestmove 0000", answer
    assert "info string no position to search: the last position command was refused" in answer
    assert session.bestmove("go movetime 10") == "0000"  # until a position is set up

    said = session.send("position startpos moves e2e4 e7e5 zz99 g1f3")
    assert any("illegal move zz99" in line and "the position is the one before it" in line
               for line in said), said
    before = chess.Board()
    for move in ("e2e4", "e7e5"):
        before.push_uci(move)
    assert session.engine.board.fen() == before.fen()
    assert chess.Move.from_uci(session.bestmove("go depth 1")) in before.legal_moves

    session.send("position startpos moves e2e4 e2e4")  # legal once, then not
    after = chess.Board()
    after.push_uci("e2e4")
    assert session.engine.board.fen() == after.fen()
    assert chess.Move.from_uci(session.bestmove("go")) in after.legal_moves

    session.send("position nonsense")
    assert session.bestmove("go") == "0000"
    session.send("ucinewgame")
    assert chess.Move.from_uci(session.bestmove("go")) in chess.Board().legal_moves
    # An empty board read from a good FEN is a position with no move: 0000, not "refused".
    answer = session.send("position fen 8/8/8/8/8/8/8/8 w - - 0 1", "go")
    assert answer == ["bestmove 0000"], answer


def test_go_searchmoves_answers_only_among_the_listed_moves(model_file: Path) -> None:
    """`go searchmoves` was ignored: a GUI's analysis of chosen moves got any move back."""
    session = Session(model_file)
    session.send("position startpos", "setoption name MultiPV value 5")
    answer = session.send("go searchmoves a2a3 h2h3 depth 3")
    best = [line.split()[1] for line in answer if line.startswith("bestmove")]
    assert best in (["a2a3"], ["h2h3"]), answer
    pvs = {line.split(" pv ")[1] for line in answer if " pv " in line}
    assert pvs == {"a2a3", "h2h3"}, answer  # MultiPV shows the listed moves alone
    assert session.bestmove("go depth 2 searchmoves g1f3") == "g1f3"
    assert session.bestmove("go searchmoves g1f3 zz99 e2e5 wtime 1000") == "g1f3"
    # Sampled at a temperature, still among the listed.
    session.send("setoption name Temperature value 5", "setoption name Seed value 7")
    for _ in range(20):
        assert session.bestmove("go searchmoves b1c3 b1a3") in ("b1c3", "b1a3")
    # A list with no legal move is said and searches every move.
    answer = session.send("go searchmoves e2e5 zz99")
    assert "info string searchmoves lists no legal move (e2e5 zz99): searching every move" \
        in answer
    assert chess.Move.from_uci(answer[-1].split()[1]) in chess.Board().legal_moves
    # An underpromotion the policy ranks under the queen's is still playable when listed,
    # alone or beside other moves (then after them, with no probability).
    session.send("setoption name Temperature value 0",
                 "position fen 7k/P7/8/8/8/8/8/K7 w - - 0 1")
    assert session.bestmove("go searchmoves a7a8n") == "a7a8n"
    answer = session.send("go searchmoves a7a8n a1b1")
    assert {line.split(" pv ")[1] for line in answer if " pv " in line} == {"a7a8n", "a1b1"}
    assert answer[-1] == "bestmove a1b1", answer
    # A policy that fails still answers among the listed moves.
    session.engine.policy = None  # its logits() raises
    answer = session.send("go searchmoves a1a2")
    assert any("policy failed" in line for line in answer) and answer[-1] == "bestmove a1a2"


def test_a_temperature_too_small_to_divide_by_plays_the_best_move(model_file: Path) -> None:
    """Temperature 1e-310 passed the option's check, the logits divided by it overflowed,
    and the engine played the first move in index order with "prob nan"."""
    cold, tiny = Session(model_file), Session(model_file)
    tiny.send("setoption name Temperature value 1e-310")
    for session in (cold, tiny):
        session.send("position startpos moves e2e4")
    assert tiny.bestmove("go") == cold.bestmove("go")
    assert "nan" not in tiny.out.getvalue()


def test_unknown_leading_tokens_are_skipped(model_file: Path) -> None:
    session = Session(model_file)
    assert session.send("joho isready") == ["readyok"]


@pytest.mark.slow
def test_python_chess_client_plays_2000_positions(model_file: Path) -> None:
    boards = random_positions(2000, seed=23)
    with chess.engine.SimpleEngine.popen_uci(engine_command(model_file), cwd=ROOT) as engine:
        assert engine.id["name"].startswith("chessbot")
        assert {"Temperature", "MultiPV", "Device"} <= set(engine.options)
        engine.configure({"Temperature": "0", "Seed": 4})
        limits = [chess.engine.Limit(time=0.05), chess.engine.Limit(depth=2),
                  chess.engine.Limit(nodes=100),
                  chess.engine.Limit(white_clock=30, black_clock=30, white_inc=1, black_inc=1,
                                     remaining_moves=20)]
        for number, board in enumerate(boards):
            result = engine.play(board, limits[number % len(limits)],
                                 info=chess.engine.INFO_ALL, game=number // 50)
            assert result.move in board.legal_moves, board.fen()
        for fen in EDGE_CASES:
            board = chess.Board(fen)
            assert engine.play(board, chess.engine.Limit(time=0.05)).move in board.legal_moves
        infos = engine.analyse(chess.Board(), chess.engine.Limit(depth=1), multipv=2)
        assert len(infos) == 2 and all(info["pv"] for info in infos)
        engine.ping()


def _broken(good: Path, path: Path, change) -> Path:
    checkpoint = torch.load(good, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = dict(checkpoint["state_dict"])
    checkpoint["model_config"] = dict(checkpoint["model_config"])
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(("change", "said"), [
    (lambda c: c["state_dict"].__setitem__("head.3.weight", torch.zeros(32, 16, 1, 1)),
     "weight head.3.weight is of shape (32, 16, 1, 1), where its model_config (2x16) needs "
     "(64, 16, 1, 1)"),
    (lambda c: c["state_dict"].__setitem__("head.3.bias", torch.full((64,), float("nan"))),
     "its network answers NaN or infinity"),
    (lambda c: c["model_config"].__setitem__("blocks", -1),
     "its model_config blocks=-1 is not a whole number from 1 to 64"),
    (lambda c: c["model_config"].__setitem__("channels", 30000),
     "its model_config channels=30000 is not a whole number from 1 to 1024"),
    (lambda c: c.pop("model_config"), "holds no model_config (blocks, channels)"),
    (lambda c: c.__setitem__("state_dict", [1, 2]), "holds no state_dict of weights"),
    (lambda c: c["state_dict"].pop("body.1.conv2.weight"),
     "checkpoint lacks weight 'body.1.conv2.weight'"),
], ids=["wrong-shape", "nan-weights", "negative-blocks", "huge-channels", "no-config",
        "state-dict-a-list", "a-weight-missing"])
def test_a_checkpoint_that_is_no_working_network_is_refused_by_both_loaders(
        model_file: Path, tmp_path: Path, change, said: str) -> None:
    """Each loaded before: a weight of another shape made every `go` play the first legal
    move (`policy failed`), NaN weights (a diverged training) answered "prob": NaN, which is
    no JSON, blocks=-1 dropped the residual blocks in numpy, channels=30000 had torch allocate
    32 GB before its own check, and a missing part was a KeyError traceback. Now the numpy
    loader (UCI, infer, host validation) and torch's (inference API, Device=cuda) refuse each
    in one line, and the engine exits 2 with it."""
    from chessbot.infer import ModelError, load_model, load_numpy

    broken = _broken(model_file, tmp_path / "broken.pt", change)
    for loader in (load_numpy, load_model):
        with pytest.raises(ModelError) as refused:
            loader(broken)
        assert str(refused.value).startswith(str(broken)) and said in str(refused.value)
    started = subprocess.run(engine_command(broken), input="uci\nquit\n", capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert started.returncode == 2 and started.stdout == ""
    assert started.stderr == f"error: {refused.value}\n"


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(
        model_file: Path, tmp_path: Path) -> None:
    """A weight record swapped for 8 MB of zeros, deflated to a few KB (a 1 MB file of this
    kind asked for 2 GB): the numpy loader inflated it whole and took the model, its first
    weights zero. Both loaders now refuse it from the zip's directory, before reading it."""
    import zipfile

    from chessbot.infer import ModelError, load_model, load_numpy

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(model_file) as good, zipfile.ZipFile(bomb, "w") as out:
        records = good.infolist()
        largest = max((r for r in records if "/data/" in r.filename), key=lambda r: r.file_size)
        for record in records:
            if record is largest:
                out.writestr(record.filename, bytes(8 << 20), zipfile.ZIP_DEFLATED, 9)
            else:
                out.writestr(record.filename, good.read(record), zipfile.ZIP_STORED)
    inflated = zipfile.ZipFile(bomb).getinfo(largest.filename)
    assert inflated.file_size > 100 * inflated.compress_size
    expected = (f"{bomb}: its record {largest.filename!r} would inflate "
                f"{inflated.compress_size} stored bytes to {8 << 20}, which no checkpoint "
                "torch.save writes does (a zip bomb?)")
    for loader in (load_numpy, load_model):
        with pytest.raises(ModelError) as refused:
            loader(bomb)
        assert str(refused.value) == expected
    started = subprocess.run(engine_command(bomb), input="uci\nquit\n", capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert (started.returncode, started.stdout, started.stderr) == (2, "", f"error: {expected}\n")
    # The same records stored, or deflated as a zip tool repacks them, load as before.
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        repacked = tmp_path / f"repacked-{method}.pt"
        with zipfile.ZipFile(model_file) as good, zipfile.ZipFile(repacked, "w") as out:
            for record in good.infolist():
                out.writestr(record.filename, good.read(record), method)
        load_numpy(repacked)
        load_model(repacked)


def test_a_damaged_zip_is_one_line_not_a_traceback(model_file: Path, tmp_path: Path) -> None:
    """A byte changed in the zip's central directory (the version needed to extract) raised
    NotImplementedError from zipfile, past the loader's own checks."""
    from chessbot.infer import ModelError, load_numpy

    data = bytearray(model_file.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6:central + 8] = b"\xff\x00"  # needs zip version 25.5
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"^cannot read model .*damaged\.pt: "):
        load_numpy(damaged)
    started = subprocess.run(engine_command(damaged), input="quit\n", capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert started.returncode == 2 and started.stderr.startswith("error: cannot read model ")
    assert len(started.stderr.splitlines()) == 1


@pytest.mark.slow
def test_bytes_that_are_no_utf8_are_ignored_not_fatal(model_file: Path) -> None:
    """Under a UTF-8 locale Python decodes stdin strictly: one Latin-1 byte from a GUI (an
    option value) ended the engine with a traceback, and every game left in the match was
    forfeited. PYTHONIOENCODING makes this run's decoding as strict as a desktop's."""
    script = b"uci\nsetoption name Foo value caf\xe9\nisready\nposition startpos\ngo\nquit\n"
    done = subprocess.run(engine_command(model_file), input=script, capture_output=True,
                          cwd=ROOT, timeout=60, env={**os.environ,
                                                     "PYTHONIOENCODING": "utf-8:strict"})
    out = done.stdout.decode()
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()[-2000:]
    assert "uciok" in out and "readyok" in out and "bestmove " in out
    assert "info string ignored setoption: ValueError: no option 'foo'" in out


@pytest.mark.slow
def test_raw_pipe_session(model_file: Path) -> None:
    script = "\n".join([
        "uci", "garbage line", "isready", "go", "ucinewgame", "position startpos moves e2e4",
        "position fen 1r5k/P7/8/8/8/8/8/K7 w - - 0 1", "go wtime 100 btime 100 winc 1 binc 1 "
        "movestogo 5", "position fen " + NO_MOVE[0], "go nodes 1", "setoption name Bogus",
        "position startpos", "go infinite", "isready", "stop", "quit", "isready"]) + "\n"
    done = subprocess.run(engine_command(model_file), input=script, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "uciok" in lines and lines.count("readyok") == 2  # nothing is read after quit
    best = [line.split()[1] for line in lines if line.startswith("bestmove")]
    assert len(best) == 4
    assert chess.Move.from_uci(best[0]) in chess.Board().legal_moves
    assert chess.Move.from_uci(best[1]) in chess.Board(EDGE_CASES[0]).legal_moves
    assert best[2] == "0000"
    assert chess.Move.from_uci(best[3]) in chess.Board().legal_moves
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_missing_or_broken_model_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"junk")
    for path in (tmp_path / "missing.pt", broken):
        done = subprocess.run(engine_command(path), input="uci\n", capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 2
        assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
