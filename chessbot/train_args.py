"""chessbot.train's command line, without torch: the host checks a cycle's
--train-extra-args with it before anything is created (a flag the trainer would refuse, or a
value it would crash on, found on the pod only after the pod was paid for)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

DESCRIPTION = "Train the policy network: train.jsonl/val.jsonl → checkpoint .pt + metrics.json."

# What each number may be: (minimum, maximum), inclusive; None is unbounded. The cycle's
# settings (TRAIN_EPOCHS, TRAIN_BLOCKS, ...) and a sweep's parameters take theirs from here.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "epochs": (1, 10_000), "batch_size": (0, 1 << 20), "lr": (1e-8, 10.0),
    "weight_decay": (0.0, 10.0), "blocks": (1, 64), "channels": (1, 1024),
    "seed": (0, 2**32 - 1), "workers": (0, 1024), "tb_every_steps": (0, None),
}


# --batch-size 0 on CUDA: large batches keep a GPU busy, but on a small set they leave too few
# optimizer steps to learn anything. The smoke set's 13,488 training positions in one batch of
# 16384 made one step an epoch: three epochs on an H100 reached val top-1 0.079 against a
# random legal mover's 0.068 (2026-12-06). The default is halved until an epoch has this many.
GPU_BATCH = 16384
CPU_BATCH = 256
MIN_DEFAULT_STEPS = 32


def default_batch_size(positions_per_process: int, cuda: bool) -> int:
    """The batch --batch-size 0 means for `positions_per_process` training positions: 16384
    on CUDA, halved (not below 256) while an epoch would take fewer than MIN_DEFAULT_STEPS
    steps; 256 on CPU."""
    batch = GPU_BATCH if cuda else CPU_BATCH
    while batch > CPU_BATCH and positions_per_process < MIN_DEFAULT_STEPS * batch:
        batch //= 2
    return batch


class ArgsError(Exception):
    """The trainer's arguments are refused: the message says which and why."""


class _Parser(argparse.ArgumentParser):
    """Raises ArgsError instead of printing the usage and exiting, when asked to."""

    raising = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.raising:
            raise ArgsError(message)
        super().error(message)


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5GiB', '100000' → bytes (K, M, G, T: powers of 1024)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    if value and value[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(value[-1]) + 1)
        value = value[:-1]
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (examples: 512M, 2G, 1000000)") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size is a finite amount, 0 or more")
    return int(number * scale)


def parser(raising: bool = False) -> argparse.ArgumentParser:
    p = _Parser(description=DESCRIPTION)
    p.raising = raising
    p.add_argument("--dataset-dir", type=Path, required=True, help="folder with train/val.jsonl")
    p.add_argument("--output-dir", type=Path, required=True, help="checkpoints go here")
    p.add_argument("--metrics-path", type=Path, help="default: OUTPUT_DIR/metrics.json")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=0,
                   help="per process; 0 = 16384 on CUDA (halved, down to 256, while an epoch "
                        f"would take fewer than {MIN_DEFAULT_STEPS} steps), 256 on CPU")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto|cuda|cpu")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile (auto = on CUDA)")
    p.add_argument("--resume", help="checkpoint to resume from, or 'auto' for "
                                    "OUTPUT_DIR/checkpoint_last.pt when present")
    p.add_argument("--cache-dir", type=Path, help="where the encoded dataset is cached "
                                                  "(default: DATASET_DIR/../.encoded_cache)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that encode the dataset (default: all cores)")
    p.add_argument("--tb-every-steps", type=int, default=50, metavar="N",
                   help="TensorBoard: rank 0's training loss every N optimizer steps "
                        "(train/loss_step; 0 = off; default 50)")
    p.add_argument("--memory-budget", type=parse_bytes, metavar="SIZE",
                   help="hold the encoded set on the device only if it fits in SIZE (512M, "
                        "4G); otherwise stream it from disk. Default: half the free device "
                        "memory (half the available RAM on CPU)")
    return p


def out_of_range(args: argparse.Namespace) -> str | None:
    """The first number the trainer cannot use (a NaN learning rate is a traceback deep in
    torch.optim, 0 blocks a model that cannot be built), said in one line; None if none."""
    for name, (low, high) in RANGES.items():
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            return f"{flag} {value}: must be a finite number"
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            return f"{flag} {value}: must be {bounds}"
    return None


# The trainer's flags the cycle alone sets, from its settings, recording them with the run
# (runs.TrainSettings): name → (flag, how the cycle takes it). The model's shape and batch
# size may come here (a sweep varies --blocks so); the epochs may not: the cycle counts them
# (its progress, a resume's checkpoint, the rerun check), and `-e 1 --train-extra-args
# "--epochs 2"` trained 2 while the run recorded 1.
RECORDED = {"epochs": ("--epochs", "-e/--epochs or TRAIN_EPOCHS")}


def check_extra(text: str) -> None:
    """A cycle's --train-extra-args as the pod's train_baseline_preset.sh passes them (split
    on white space, after its own flags): raises ArgsError when the trainer would refuse
    them or crash on them."""
    odd = next((c for c in text if c.isspace() and c not in " \t\n"), None)
    if odd is not None:
        import unicodedata

        # Python's split() splits on it, the pod's shell does not: checked fine here, the
        # flag and its value reached the trainer as one word and failed there, after the pod
        # was paid for (a no-break space from a pasted web page).
        raise ArgsError(f"it holds a {unicodedata.name(odd, 'control character').lower()} "
                        f"({odd!r}), which the pod's shell does not split on: type plain spaces")
    quote = next((c for c in text if c in "'\""), None)
    if quote is not None:
        # "--cache-dir '/a b'" was refused as "unrecognized arguments: b'": the quote is no
        # shell's to read, the preset splits on spaces only (outside hunt, stop 51).
        raise ArgsError(f"it holds a quote ({quote}), which reaches the trainer as typed: the "
                        "pod's preset splits on spaces only, so no value can hold a space "
                        "(give one without)")
    words = text.split()
    # argparse takes any unique prefix of a flag: `--he` is --help, `--output` --output-dir.
    if any(word == "-h" or (len(word) > 2 and "--help".startswith(word)) for word in words):
        raise ArgsError("--help prints the trainer's usage and trains nothing: its flags are "
                        "listed by python -m chessbot.train --help")
    ours = Path("\x00the cycle's")  # no path a user can give: a NUL cannot be typed in one
    checked = parser(raising=True)
    unset = object()  # given or not, whatever the value (`--epochs 3` is the default's)
    defaults = {name: checked.get_default(name) for name in RECORDED}
    checked.set_defaults(**{name: unset for name in RECORDED})
    args = checked.parse_args(["--dataset-dir", str(ours), "--output-dir", str(ours), *words])
    for name, (flag, setting) in RECORDED.items():
        if getattr(args, name) is not unset:
            # The preset puts them after its own, so the last one won: the run recorded
            # (and runs.show, a resume and a rerun's check read) the settings' value, while
            # the trainer trained with this one.
            raise ArgsError(f"{flag} is the cycle's own (the run records it, and a resume "
                            f"trains with it again): give it as {setting}, not here")
        setattr(args, name, defaults[name])
    for name, flag in (("dataset_dir", "--dataset-dir"), ("output_dir", "--output-dir"),
                       ("metrics_path", "--metrics-path")):
        if getattr(args, name) not in (None, ours):
            # The cycle's collect, validation and resume find the model, its metrics and the
            # dataset where the cycle put them: elsewhere, the run lost its model.
            raise ArgsError(f"{flag} is the cycle's own (it pushes the dataset, collects the "
                            "model and its metrics from where it put them): leave it out")
    wrong = out_of_range(args)
    if wrong:
        raise ArgsError(wrong)
