"""The trainer's TensorBoard event files, read back by TensorBoard's own reader: one value per
epoch and tag, equal to metrics.json, also after a resume that replays an epoch; and a trainer
without TensorBoard installed trains on, saying so once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, child_environ

TINY = ["--blocks", "1", "--channels", "8", "--device", "cpu", "--batch-size", "256"]
EVERY = 2  # --tb-every-steps: 1,500 positions in batches of 256 make 6 steps an epoch
STEPS_PER_EPOCH = 6
TAGS = {"train/loss": "train_loss", "val/loss": "val_loss", "val/top1": "val_top1"}


# Each training its own process, as on a pod: run in the test's process, the three of them
# name their event files by one pid and a counter, and two that fall in the same second sort
# out of order once the counter reaches 10 (TensorBoard's reader then purges an epoch).
def train(dataset: Path, out: Path, cache: Path, epochs: int, *extra: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "chessbot.train", "--dataset-dir", str(dataset), "--output-dir",
         str(out), "--cache-dir", str(cache), "--epochs", str(epochs), "--tb-every-steps",
         str(EVERY), *TINY, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder))
    reader.Reload()
    return {tag: [(event.step, event.value) for event in reader.Scalars(tag)]
            for tag in reader.Tags()["scalars"]}


@pytest.mark.slow
def test_event_files_hold_one_value_per_epoch_equal_to_metrics(
        tiny_dataset: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    train(tiny_dataset, out, cache, 1)
    first_checkpoint = tmp_path / "after_epoch_1.pt"
    shutil.copy(out / "checkpoint_last.pt", first_checkpoint)
    train(tiny_dataset, out, cache, 2, "--resume", "auto")  # appends epoch 2
    # A resume from the older checkpoint replays epoch 2 (as after a crash past it): its
    # events replace the earlier ones instead of doubling them.
    replay = train(tiny_dataset, out, cache, 2, "--resume", str(first_checkpoint))
    assert f"resumed from {first_checkpoint} at epoch 1" in replay.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    epochs = scalars(out / "tensorboard")
    assert set(epochs) == set(TAGS)
    for tag, key in TAGS.items():
        assert [step for step, _ in epochs[tag]] == [1, 2], tag
        assert [value for _, value in epochs[tag]] == pytest.approx(
            [row[key] for row in metrics["epochs"]], rel=1e-6), tag
    steps = scalars(out / "tensorboard" / "steps")["train/loss_step"]
    assert [step for step, _ in steps] == list(range(EVERY, 2 * STEPS_PER_EPOCH + 1, EVERY))
    assert all(0 < value < 20 for _, value in steps)  # cross-entropy over ~30 legal moves


@pytest.mark.slow
def test_trainer_without_tensorboard_trains_on(tiny_dataset: Path, tmp_path: Path) -> None:
    # An image without TensorBoard, made real: a `tensorboard` package that cannot import.
    broken = tmp_path / "site" / "tensorboard"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('no TensorBoard in this image')\n")
    env = child_environ()
    env["PYTHONPATH"] = f"{broken.parent}:{ROOT}"
    out = tmp_path / "run"
    result = train(tiny_dataset, out, tmp_path / "cache", 1, env=env)
    lines = [line for line in result.stdout.splitlines() if "TensorBoard" in line]
    assert len(lines) == 1 and "without event files" in lines[0], result.stdout
    assert (out / "metrics.json").is_file() and (out / "model.pt").is_file()
    assert not (out / "tensorboard").exists()
