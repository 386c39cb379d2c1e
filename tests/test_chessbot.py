"""Real PyTorch training on the committed smoke dataset (CPU), checkpoints, inference and the
inference API over real HTTP."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import chess
import pytest
import torch

from chessbot.data import iter_records, random_positions
from chessbot.infer import load_model, predict
from podcycle.local.pods import free_port
from tests.conftest import ROOT, SMOKE_CPU_ARGS, SMOKE_EPOCHS, eventually
from tests.test_dataset_and_encoding import SMOKE

# The shared smoke-set model (conftest.smoke_training) is trained with these.
EPOCHS = SMOKE_EPOCHS
CPU_ARGS = SMOKE_CPU_ARGS


@pytest.fixture
def trained(smoke_training: dict) -> dict:
    return smoke_training


@pytest.mark.slow
def test_training_beats_three_times_random_legal_moves(trained: dict) -> None:
    records = list(iter_records(SMOKE / "val.jsonl"))
    random_top1 = sum(1 / len(list(r.board.legal_moves)) for r in records) / len(records)
    model = load_model(trained["model"])
    correct = sum(predict(model, r.board.fen(), 1)["move"] == r.move.uci() for r in records)
    accuracy = correct / len(records)
    assert accuracy >= 3 * random_top1, (accuracy, random_top1)
    assert abs(trained["metrics"]["final"]["val_top1"] - accuracy) < 0.02
    assert abs(trained["metrics"]["random_legal_top1"] - random_top1) < 1e-3


@pytest.mark.slow
def test_host_validation_in_numpy_is_the_trainers_evaluation(trained: dict, tmp_path: Path
                                                             ) -> None:
    """local-validate runs the network in numpy (podcycle.validation): its top-1 on the val
    set and its answer are torch's (chessbot.train.evaluate, chessbot.infer.predict)."""
    from chessbot.compact import encode_dataset
    from chessbot.train import Resident, evaluate
    from podcycle.validation import VALIDATION_FEN, model_answer, val_metrics

    dataset = tmp_path / "dataset"  # the encoding cache goes beside it, not into the repo
    dataset.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (dataset / name).write_bytes((SMOKE / name).read_bytes())
    net, answer = model_answer(trained["model"])
    metrics = val_metrics(net, dataset)
    val = encode_dataset(dataset, splits=("val",)).splits["val"]
    torch_model = load_model(trained["model"])
    _, top1 = evaluate(torch_model, Resident(val, torch.device("cpu")), cuda=False)
    assert metrics["positions"] == len(val) > 1000
    assert abs(metrics["val_top1"] - top1) <= 2 / len(val)  # at most a near tie or two
    assert metrics["random_legal_top1"] == round(trained["metrics"]["random_legal_top1"], 5)
    assert answer["move"] == predict(torch_model, VALIDATION_FEN)["move"]


@pytest.mark.slow
def test_checkpoint_and_metrics_content(trained: dict) -> None:
    checkpoint = torch.load(trained["model"], weights_only=True)
    assert checkpoint["model_config"] == {"blocks": 3, "channels": 32}  # SMOKE_CPU_ARGS
    assert len(checkpoint["dataset_hash"]) == 64 and checkpoint["epoch"] == EPOCHS
    epochs = trained["metrics"]["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    assert all({"train_loss", "val_loss", "val_top1", "positions_per_s"} <= set(e)
               for e in epochs)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(trained: dict, tmp_path: Path, capsys,
                                               trainer_here) -> None:
    """In this process (the trainer's main): the resume is the subject, not the process,
    whose torch import another run would pay again."""
    from chessbot.train import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_last.pt").write_bytes(
        (trained["dir"] / "run" / "checkpoint_last.pt").read_bytes())
    more = EPOCHS + 1  # one more epoch than the first run
    code = main(["--dataset-dir", str(SMOKE), "--output-dir", str(run), "--cache-dir",
                 str(trained["dir"] / "cache"), "--resume", "auto", "--epochs", str(more),
                 *CPU_ARGS])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert "resumed from" in said.out and f"epoch {more}/{more} " in said.out
    assert f"epoch 1/{more} " not in said.out
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["epochs"]) == more


def tiny_set(tmp_path: Path) -> Path:
    """The smoke set's first 300 train / 100 val positions, for an in-process training."""
    data = tmp_path / "tiny"
    data.mkdir()
    for name, count in (("train.jsonl", 300), ("val.jsonl", 100)):
        with open(SMOKE / name) as source:
            (data / name).write_text("".join(next(source) for _ in range(count)))
    return data


def test_a_checkpoint_at_its_last_epoch_still_gives_a_model(tmp_path: Path, capsys) -> None:
    """A pod that dies after its last epoch's save but before the trainer's end: the run's
    checkpoint alone goes to the new pod (a cluster's resume pushes just that), where nothing
    is left to train. The model of that epoch must still be written, or the smoke finds no
    model.pt and every resume fails the same way. In process: a 1x8 model, 300 positions."""
    from chessbot.train import main

    data = tiny_set(tmp_path)
    small = ["--dataset-dir", str(data), "--blocks", "1", "--channels", "8", "--batch-size",
             "64", "--device", "cpu", "--workers", "1", "--tb-every-steps", "0",
             "--cache-dir", str(tmp_path / "cache")]
    first = tmp_path / "first"
    assert main([*small, "--output-dir", str(first), "--epochs", "2"]) == 0
    trained = torch.load(first / "model.pt", map_location="cpu", weights_only=False)

    for epochs in (2, 1):  # at the checkpoint's epoch, and below it
        moved = tmp_path / f"moved-{epochs}"
        moved.mkdir()
        (moved / "checkpoint_last.pt").write_bytes((first / "checkpoint_last.pt").read_bytes())
        capsys.readouterr()
        assert main([*small, "--output-dir", str(moved), "--resume", "auto", "--epochs",
                     str(epochs)]) == 0
        out = capsys.readouterr().out
        assert f"nothing left to train: the checkpoint is at epoch 2 (--epochs {epochs})" in out
        assert "epoch 1/" not in out and "epoch 2/" not in out
        model = torch.load(moved / "model.pt", map_location="cpu", weights_only=False)
        assert model["epoch"] == 2 and model["model_config"] == trained["model_config"]
        assert model["metrics"] == trained["metrics"]
        assert all(torch.equal(model["state_dict"][k], v)
                   for k, v in trained["state_dict"].items())
        assert load_model(moved / "model.pt") is not None  # what the smoke reads
        metrics = json.loads((moved / "metrics.json").read_text())
        assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]

    capsys.readouterr()
    assert main([*small, "--output-dir", str(tmp_path / "none"), "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "error: --epochs 0: must be from 1 to 10000\n"
    # A NaN learning rate was a traceback from deep in torch.optim.
    assert main([*small, "--output-dir", str(tmp_path / "none"), "--lr", "nan"]) == 2
    assert capsys.readouterr().err == "error: --lr nan: must be a finite number\n"
    assert main([*small, "--output-dir", str(tmp_path / "none"), "--seed", "4294967296"]) == 2
    assert capsys.readouterr().err == ("error: --seed 4294967296: must be from 0 to "
                                       "4294967295\n")  # whole numbers said whole
    assert not (tmp_path / "none").exists()


def test_the_cycles_resume_takes_only_a_checkpoint_of_this_training(tmp_path: Path,
                                                                   capsys) -> None:
    """The cycle resumes a training it lost with --resume auto. A checkpoint of another model
    size (the run given --train-extra-args "--blocks 2" on its retry) crashed the trainer
    with a load_state_dict traceback on every try; one of another dataset was resumed from
    ("resuming anyway"). Both now train from epoch 1, saying why; a checkpoint named by path
    must hold a model of the size asked for. In process: 1xN models, 300 positions."""
    from chessbot.train import main

    def tiny(name: str, skip: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for split, count in (("train.jsonl", 300), ("val.jsonl", 100)):
            with open(SMOKE / split) as source:
                lines = [next(source) for _ in range(skip + count)][skip:]
            (folder / split).write_text("".join(lines))
        return folder

    data, other_data = tiny("tiny", 0), tiny("other", 50)
    common = ["--batch-size", "64", "--device", "cpu", "--workers", "1", "--tb-every-steps",
              "0", "--cache-dir", str(tmp_path / "cache"), "--epochs", "1"]
    first = tmp_path / "first"
    assert main(["--dataset-dir", str(data), "--output-dir", str(first), "--blocks", "1",
                 "--channels", "8", *common]) == 0
    checkpoint = (first / "checkpoint_last.pt").read_bytes()

    def again(name: str, dataset: Path, *args: str) -> str:
        out = tmp_path / name
        out.mkdir()
        (out / "checkpoint_last.pt").write_bytes(checkpoint)
        capsys.readouterr()
        assert main(["--dataset-dir", str(dataset), "--output-dir", str(out), "--resume",
                     "auto", *common, *args]) == 0
        said = capsys.readouterr().out
        assert "epoch 1/1 " in said and "resumed from" not in said
        return said

    bigger = again("bigger", data, "--blocks", "2", "--channels", "8")
    assert (f"not resuming from {tmp_path / 'bigger' / 'checkpoint_last.pt'}: it holds a 1x8 "
            "model, this training is a 2x8 one; training from epoch 1") in bigger
    model = torch.load(tmp_path / "bigger" / "model.pt", map_location="cpu", weights_only=False)
    assert model["model_config"] == {"blocks": 2, "channels": 8}
    elsewhere = again("elsewhere", other_data, "--blocks", "1", "--channels", "8")
    assert "it was trained on another dataset; training from epoch 1" in elsewhere

    with pytest.raises(SystemExit) as refused:
        main(["--dataset-dir", str(data), "--output-dir", str(tmp_path / "named"), "--resume",
              str(first / "checkpoint_last.pt"), "--blocks", "2", "--channels", "8", *common])
    assert str(refused.value.code) == (
        f"error: --resume {first / 'checkpoint_last.pt'}: it holds a 1x8 model, this training "
        "is a 2x8 one (--blocks, --channels); give the same size, or leave --resume out to "
        "train from epoch 1")


@pytest.mark.slow
def test_infer_move_is_always_legal(trained: dict) -> None:
    model = load_model(trained["model"])
    for board in random_positions(200, seed=11):
        result = predict(model, board.fen(), top_k=3)
        assert chess.Move.from_uci(result["move"]) in board.legal_moves
        assert all(chess.Move.from_uci(t["move"]) in board.legal_moves for t in result["top"])
        assert result["top"][0]["move"] == result["move"]


@pytest.mark.slow
def test_infer_move_script(trained: dict) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "infer_move.py")]
    fen = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
    ok = subprocess.run([*script, "--model", str(trained["model"]), "--fen", fen, "--json",
                         "--top-k", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert set(answer) == {"fen", "move", "top"} and len(answer["top"]) == 2
    assert chess.Move.from_uci(answer["move"]) in chess.Board(fen).legal_moves
    plain = subprocess.run([*script, "--model", str(trained["model"])], capture_output=True,
                           text=True)
    assert chess.Move.from_uci(plain.stdout.strip()) in chess.Board().legal_moves
    for bad in (["--model", str(trained["model"]), "--fen", "not a fen"],
                ["--model", "/nonexistent/model.pt"],
                ["--model", str(SMOKE / "val.jsonl")]):
        result = subprocess.run([*script, *bad], capture_output=True, text=True)
        assert result.returncode != 0
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


# Bounds on a hung API, not timings: the first answer after the model appears loads torch,
# which takes tens of seconds on two busy cores.
def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start_api(model: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "INFERENCE_MODEL_PATH": str(model), "INFERENCE_API_HOST": "127.0.0.1",
           "INFERENCE_API_PORT": str(port), "REPO_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "chessbot.api"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            _get(f"{url}/healthz")
            return True
        except OSError:
            return False

    try:
        eventually(healthy, timeout=30, what="the inference API to answer /healthz")
    except AssertionError:
        proc.kill()
        raise
    return proc, url


@pytest.mark.slow
def test_inference_api_over_http(trained: dict, tmp_path: Path) -> None:
    missing = tmp_path / "later" / "model.pt"
    proc, url = start_api(missing, tmp_path)
    try:
        status, health = _get(f"{url}/healthz")
        assert status == 200 and health["model_loaded"] is False and "no model" in health["detail"]
        assert _post(f"{url}/move", json.dumps({"fen": chess.STARTING_FEN}).encode())[0] == 503
        missing.parent.mkdir()
        missing.write_bytes(trained["model"].read_bytes())  # the model appears: picked up
        status, health = _get(f"{url}/healthz")
        assert health["model_loaded"] is True
        board = random_positions(1, seed=5)[0]
        status, answer = _post(f"{url}/move", json.dumps({"fen": board.fen()}).encode())
        assert status == 200 and chess.Move.from_uci(answer["move"]) in board.legal_moves
        assert set(answer) == {"fen", "move", "top"}
        assert _post(f"{url}/move", b"{broken")[0] == 400
        assert _post(f"{url}/move", json.dumps({"fen": "nonsense"}).encode())[0] == 400
        assert _post(f"{url}/move", json.dumps({"nofen": 1}).encode())[0] == 400
        assert _get(f"{url}/nowhere")[0] == 404
        missing.write_bytes(b"corrupt")  # a broken model file must not take the API down
        status, health = _get(f"{url}/healthz")
        assert status == 200 and "cannot load" in (health["detail"] or "")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_random_positions_helper_is_seeded() -> None:
    assert [b.fen() for b in random_positions(3, 1)] == [b.fen() for b in random_positions(3, 1)]
    assert random.Random(1).random() == random.Random(1).random()


def test_a_training_whose_loss_turns_nan_stops_and_keeps_its_last_good_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A training that diverges (a learning rate too high for its batch, bf16 overflow) went on
    to the end and wrote a model of NaN weights, and the cycle called it trained. Here the
    loss turns NaN in epoch 2 (300 positions, batches of 64: 5 steps an epoch): the trainer
    stops with exit 4 saying why, before that epoch's save. In process: a 1x8 model."""
    from chessbot import train

    data = tiny_set(tmp_path)
    real, steps = train.train_step, []

    def nan_from_epoch_2(net, optimizer, batch, cuda):
        steps.append(1)
        loss = real(net, optimizer, batch, cuda)
        return loss * float("nan") if len(steps) > 5 else loss

    monkeypatch.setattr(train, "train_step", nan_from_epoch_2)
    out = tmp_path / "run"
    assert train.main(["--dataset-dir", str(data), "--output-dir", str(out), "--epochs", "3",
                       "--blocks", "1", "--channels", "8", "--batch-size", "64", "--device",
                       "cpu", "--workers", "1", "--tb-every-steps", "0", "--lr", "0.5",
                       "--cache-dir", str(tmp_path / "cache")]) == train.DIVERGED == 4
    err = capsys.readouterr().err
    assert err.startswith("error: the training diverged in epoch 2: train loss nan, val loss ")
    assert "(the last checkpoint is epoch 1's); train again with a lower --lr than 0.5" in err
    assert len(steps) == 10  # epoch 3 never ran
    assert torch.load(out / "checkpoint_last.pt", map_location="cpu",
                      weights_only=False)["epoch"] == 1


def test_the_time_left_leaves_out_the_first_step_s_compile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The first epoch's "about N s left" was the remaining epochs times that epoch's
    seconds, the first step's compile included: on a GPU, tens of seconds that no later
    epoch spends. Here the trainer's clock is a stand-in (no wall time is measured): the
    first step takes 100 s, every other 1 s, 5 steps an epoch over 3 epochs. The estimate
    after epoch 1 is the 10 s of two 5-step epochs, not 208 s."""
    import time as real_time

    from chessbot import train

    data = tiny_set(tmp_path)

    class Clock:
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 1e-6  # never the same reading twice
            return self.now

        def __getattr__(self, name: str):
            return getattr(real_time, name)

    clock = Clock()
    real, steps = train.train_step, []

    def timed(net, optimizer, batch, cuda):
        steps.append(1)
        clock.now += 100.0 if len(steps) == 1 else 1.0
        return real(net, optimizer, batch, cuda)

    monkeypatch.setattr(train, "time", clock)
    monkeypatch.setattr(train, "train_step", timed)
    assert train.main(["--dataset-dir", str(data), "--output-dir", str(tmp_path / "run"),
                       "--epochs", "3", "--blocks", "1", "--channels", "8", "--batch-size",
                       "64", "--device", "cpu", "--workers", "1", "--tb-every-steps", "0",
                       "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if "[train] epoch " in line]
    assert len(steps) == 15 and len(epochs) == 3, out
    assert "(104.00s, 3 positions/s, about 10s left)" in epochs[0], epochs[0]
    assert "(5.00s, 60 positions/s, about 5s left)" in epochs[1], epochs[1]
    assert epochs[2].endswith("(5.00s, 60 positions/s)"), epochs[2]


def test_the_compile_probe_leaves_the_batchnorm_statistics_and_takes_the_training_shape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe that compiles the model before training ran a forward in training mode on
    zeros: every BatchNorm running mean and variance moved (a resumed model with no epoch left
    was written other than its checkpoint), and its batch of 2 compiled a graph the first real
    batch recompiled. torch.compile itself is stood in for (its compiler is not what is
    tested, and on the CPU it costs tens of seconds): the probe is."""
    from chessbot import train
    from chessbot.encoding import PLANES
    from chessbot.model import ModelConfig, PolicyNet

    model = PolicyNet(ModelConfig(blocks=1, channels=8))  # in training mode, as the trainer's
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = []

    def compile_stub(net):
        def compiled(x):
            shapes.append(tuple(x.shape))
            return net(x)
        return compiled

    monkeypatch.setattr(torch, "compile", compile_stub)
    trainer = train.Trainer.__new__(train.Trainer)
    trainer.device, trainer.cuda, trainer.log = torch.device("cpu"), False, print
    assert trainer._compiled(model, 37) is not model
    assert shapes == [(37, PLANES, 8, 8)]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [
        k for k in before if not torch.equal(before[k], after[k])]


def test_the_default_batch_leaves_every_epoch_enough_steps() -> None:
    """--batch-size 0 on CUDA: 16384 on a large set, halved on a small one until an epoch
    takes 32 steps per process. The smoke set's 13,488 positions in one batch of 16384 were
    three optimizer steps in three epochs: on an H100 a model no better than random (val
    top-1 0.079 against 0.068). On the CPU it stays 256."""
    from chessbot.train_args import default_batch_size

    assert default_batch_size(13_488, cuda=True) == 256  # the smoke set: 53 steps an epoch
    assert default_batch_size(2_000_000, cuda=True) == 16384
    assert default_batch_size(32 * 16384, cuda=True) == 16384
    assert default_batch_size(32 * 16384 - 1, cuda=True) == 8192
    assert default_batch_size(100, cuda=True) == 256  # never below the CPU's
    assert [default_batch_size(n, cuda=False) for n in (100, 13_488, 10**7)] == [256] * 3


def test_the_trainers_exit_keeps_what_python_s_own_exit_keeps() -> None:
    """chessbot.train ends with exit_now (os._exit, no interpreter teardown): the atexit
    handlers still run, buffered output still reaches its reader, the code is main's, and
    output that cannot be written out at the end is exit 120, as Python's own exit says it
    (cycle.train reads 120 as a full disk)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered
    ended = subprocess.run(
        [sys.executable, "-c", "import atexit, sys\nfrom chessbot.train import exit_now\n"
         "atexit.register(print, 'handler ran')\nsys.stdout.write('buffered, ')\nexit_now(3)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (ended.returncode, ended.stdout) == (3, "buffered, handler ran\n"), ended.stderr
    reader_gone = subprocess.run(
        [sys.executable, "-c", "import os, sys\nfrom chessbot.train import exit_now\n"
         "r, w = os.pipe()\nos.dup2(w, 1)\nos.close(r)\nsys.stdout.write('lost')\n"
         "exit_now(0)"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert reader_gone.returncode == 120, reader_gone.stderr
    assert "the trainer's output could not be written out" in reader_gone.stderr
    no_streams = subprocess.run(  # started with stdout and stderr closed: still main's code
        ["bash", "-c", f'"{sys.executable}" -c "from chessbot.train import exit_now; '
         'exit_now(3)" >&- 2>&-'], cwd=ROOT, env=env, timeout=120)
    assert no_streams.returncode == 3


def test_the_trainer_turns_the_collector_back_on_once_torch_is_loaded() -> None:
    """Run as the trainer, chessbot.train loads torch with Python's cyclic collector off
    (cheaper imports): by the time main() parses its flags the collector is on again, with
    what the imports made frozen out of it. Imported as a module, it leaves the collector
    alone."""
    as_main = subprocess.run(
        [sys.executable, "-c", "import gc, runpy, sys\nsys.argv = ['train', '--help']\n"
         "try:\n    runpy.run_module('chessbot.train', run_name='__main__')\n"
         "except SystemExit:\n    pass\nprint(gc.isenabled(), gc.get_freeze_count())"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    enabled, frozen = as_main.stdout.split()[-2:]
    assert enabled == "True" and int(frozen) > 100_000, as_main.stdout + as_main.stderr
    imported = subprocess.run(
        [sys.executable, "-c", "import gc, chessbot.train\n"
         "print(gc.isenabled(), gc.get_freeze_count())"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert imported.stdout.split() == ["True", "0"], imported.stdout + imported.stderr
