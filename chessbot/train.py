"""Train the policy network: train.jsonl/val.jsonl → checkpoint .pt + metrics.json.

The dataset is encoded once (cached on disk), moved to the device whole, and batches are cut
from it by index on the device: no per-sample Python in the hot loop. On CUDA: bf16 autocast,
large batches, channels-last, optional torch.compile. Several GPUs: the same script under
`torchrun --nproc-per-node N` (DDP); train_baseline_preset.sh chooses that automatically.

python -m chessbot.train --dataset-dir D --output-dir O [--metrics-path M] [--epochs N] ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chessbot.data import dataset_hash, iter_records
from chessbot.encoding import MOVES, PLANES, encode_board, legal_indices, move_index
from chessbot.infer import FORMAT
from chessbot.model import ModelConfig, PolicyNet

BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def encode_file(path: Path) -> dict[str, np.ndarray]:
    records = list(iter_records(path))
    n = len(records)
    boards = np.zeros((n, PLANES, 8, 8), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    masks = np.zeros((n, MOVES), dtype=bool)
    for i, record in enumerate(records):
        encode_board(record.board, boards[i])
        white = record.board.turn
        labels[i] = move_index(record.move, white)
        masks[i, legal_indices(record.board)] = True
    return {"boards": boards, "labels": labels,
            "masks": np.packbits(masks, axis=1, bitorder="little")}


def load_encoded(dataset_dir: Path, cache_dir: Path | None, log: Any) -> tuple[dict, str]:
    digest = dataset_hash(dataset_dir)
    cache_dir = cache_dir or dataset_dir.parent / ".encoded_cache"
    cache = cache_dir / f"{digest[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            arrays = {k: data[k] for k in data.files}
        log(f"encoded dataset from cache {cache}")
    else:
        started = time.perf_counter()
        arrays = {}
        for split in ("train", "val"):
            for key, value in encode_file(dataset_dir / f"{split}.jsonl").items():
                arrays[f"{split}_{key}"] = value
        log(f"encoded {len(arrays['train_labels'])} train / {len(arrays['val_labels'])} val "
            f"positions in {time.perf_counter() - started:.1f}s")
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # ranks may race here
            np.savez(tmp, **arrays)
            tmp.replace(cache)
        except OSError as exc:
            log(f"could not write the encoding cache ({exc}); continuing without it")
    return arrays, digest


def unpack_masks(packed: torch.Tensor) -> torch.Tensor:
    bits = BITS.to(packed.device)
    return (packed.unsqueeze(-1) & bits).ne(0).reshape(packed.shape[0], MOVES)


def train_step(net: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor,
               packed: torch.Tensor, cuda: bool) -> torch.Tensor:
    """One optimisation step on a batch already on the device (uint8 boards, packed legal
    masks): masked cross-entropy over the legal moves, bf16 autocast on CUDA."""
    x = x.float()
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
        logits = net(x)
    logits = logits.float().masked_fill(~unpack_masks(packed), -1e9)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def evaluate(model: PolicyNet, x: torch.Tensor, y: torch.Tensor, packed: torch.Tensor,
             cuda: bool) -> tuple[float, float]:
    """Masked cross-entropy and top-1 accuracy over the legal moves, in batches of 4096."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for i in range(0, y.shape[0], 4096):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x[i:i + 4096].float())
        logits = logits.float().masked_fill(~unpack_masks(packed[i:i + 4096]), -1e9)
        loss_sum += F.cross_entropy(logits, y[i:i + 4096], reduction="sum")
        correct += (logits.argmax(dim=1) == y[i:i + 4096]).sum()
    total = max(1, y.shape[0])
    return float(loss_sum) / total, float(correct) / total


def random_legal_top1(packed: torch.Tensor) -> float:
    """Expected top-1 of picking a uniformly random legal move."""
    counts = unpack_masks(packed).sum(dim=1).clamp(min=1).float()
    return float((1.0 / counts).mean())


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world > 1
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.distributed:
            backend = "nccl" if args.device == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if args.device == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", "0"))) \
            if args.device == "cuda" else torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[train] {message}", flush=True)

    def run(self) -> int:
        args = self.args
        torch.manual_seed(args.seed)
        arrays, digest = load_encoded(args.dataset_dir, args.cache_dir, self.log)
        dev = self.device
        train_x = torch.from_numpy(arrays["train_boards"]).to(dev)
        train_y = torch.from_numpy(arrays["train_labels"]).to(dev)
        train_m = torch.from_numpy(arrays["train_masks"]).to(dev)
        val_x = torch.from_numpy(arrays["val_boards"]).to(dev)
        val_y = torch.from_numpy(arrays["val_labels"]).to(dev)
        val_m = torch.from_numpy(arrays["val_masks"]).to(dev)
        n = train_y.shape[0]
        batch = args.batch_size or (16384 if self.cuda else 256)
        batch = max(1, min(batch, math.ceil(n / self.world)))
        steps_per_epoch = math.ceil(n / self.world / batch)

        config = ModelConfig(blocks=args.blocks, channels=args.channels)
        model = PolicyNet(config).to(dev)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                      weight_decay=args.weight_decay)
        total_steps = steps_per_epoch * args.epochs
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=max(1, total_steps), pct_start=0.15)
        history: list[dict[str, Any]] = []
        start_epoch = 0
        resume = self._resume_path()
        if resume:
            state = torch.load(resume, map_location=dev, weights_only=False)
            if state.get("dataset_hash") != digest:
                self.log(f"note: {resume} was trained on another dataset; resuming anyway")
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["epoch"])
            if state["scheduler"].get("total_steps") == total_steps:
                scheduler.load_state_dict(state["scheduler"])
            else:
                # A different epoch count: a fresh one-cycle schedule over what is left.
                for group in optimizer.param_groups:
                    group.pop("initial_lr", None)
                    group.pop("max_lr", None)
                    group.pop("min_lr", None)
                scheduler = torch.optim.lr_scheduler.OneCycleLR(
                    optimizer, max_lr=args.lr,
                    total_steps=max(1, steps_per_epoch * max(1, args.epochs - start)),
                    pct_start=0.15)
            history = state.get("history", [])
            start_epoch = int(state["epoch"])
            self.log(f"resumed from {resume} at epoch {start_epoch}")
        net: torch.nn.Module = model
        if self.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if self.cuda else None)
        step_fn = self._compiled(net) if (args.compile == "on" or (
            args.compile == "auto" and self.cuda)) else net

        baseline = random_legal_top1(val_m)
        self.log(f"device={dev} world={self.world} positions={n} batch={batch} "
                 f"model={config.blocks}x{config.channels} epochs={args.epochs}")
        for epoch in range(start_epoch, args.epochs):
            model.train()
            generator = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + epoch)
            order = torch.randperm(n, generator=generator).to(dev)
            shard = order[self.rank::self.world]
            loss_sum = torch.zeros((), device=dev)
            if self.cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            for i in range(0, shard.shape[0], batch):
                idx = shard[i:i + batch]
                loss = self._step(step_fn, optimizer, train_x[idx], train_y[idx], train_m[idx])
                scheduler.step()
                loss_sum += loss.detach() * idx.shape[0]
            if self.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            if self.distributed:
                torch.distributed.all_reduce(loss_sum)
            train_loss = float(loss_sum) / n
            val_loss, val_top1 = evaluate(model, val_x, val_y, val_m, self.cuda)
            row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5),
                   "val_loss": round(val_loss, 5), "val_top1": round(val_top1, 5),
                   "epoch_seconds": round(seconds, 3),
                   "positions_per_s": round(n / seconds, 1) if seconds else None}
            history.append(row)
            self.log(f"epoch {epoch + 1}/{args.epochs} train_loss={train_loss:.4f} "
                     f"val_loss={val_loss:.4f} val_top1={val_top1:.4f} "
                     f"({seconds:.2f}s, {row['positions_per_s']:.0f} positions/s)")
            if self.rank == 0:
                self._save(model, optimizer, scheduler, epoch + 1, history, digest, baseline)
        if self.rank == 0:
            self._write_metrics(history, digest, baseline, config, batch, n, len(val_y))
        if self.distributed:
            torch.distributed.destroy_process_group()
        return 0

    def _step(self, net: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor,
              packed: torch.Tensor) -> torch.Tensor:
        return train_step(net, optimizer, x, y, packed, self.cuda)

    def _compiled(self, net: torch.nn.Module) -> Any:
        try:
            compiled = torch.compile(net)
            probe = torch.zeros((2, PLANES, 8, 8), device=self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                compiled(probe)
            return compiled
        except Exception as exc:  # noqa: BLE001 - compile is an optimisation only
            self.log(f"torch.compile unavailable ({type(exc).__name__}); running eagerly")
            return net

    def _resume_path(self) -> Path | None:
        if not self.args.resume:
            return None
        if self.args.resume == "auto":
            path = self.args.output_dir / "checkpoint_last.pt"
            return path if path.is_file() else None
        path = Path(self.args.resume)
        if not path.is_file():
            raise SystemExit(f"error: --resume {path}: no such checkpoint")
        return path

    def _save(self, model: PolicyNet, optimizer: Any, scheduler: Any, epoch: int,
              history: list, digest: str, baseline: float) -> None:
        out = self.args.output_dir
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        common = {"format": FORMAT, "model_config": model.config.as_dict(), "state_dict": state,
                  "dataset_hash": digest, "epoch": epoch, "metrics": history[-1],
                  "random_legal_top1": baseline}
        _atomic_save({**common, "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "history": history},
                     out / "checkpoint_last.pt")
        _atomic_save(common, out / "model.pt")

    def _write_metrics(self, history: list, digest: str, baseline: float, config: ModelConfig,
                       batch: int, n_train: int, n_val: int) -> None:
        path = self.args.metrics_path or self.args.output_dir / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        metrics = {"epochs": history, "final": history[-1] if history else None,
                   "random_legal_top1": round(baseline, 5), "dataset_hash": digest,
                   "device": str(self.device), "world_size": self.world,
                   "gpu": torch.cuda.get_device_name(self.device) if self.cuda else None,
                   "batch_size": batch, "model_config": config.as_dict(),
                   "train_positions": n_train, "val_positions": n_val}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(path)
        self.log(f"wrote {self.args.output_dir / 'model.pt'} and {path}")


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset-dir", type=Path, required=True, help="folder with train/val.jsonl")
    p.add_argument("--output-dir", type=Path, required=True, help="checkpoints go here")
    p.add_argument("--metrics-path", type=Path, help="default: OUTPUT_DIR/metrics.json")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=0, help="0 = 16384 on CUDA, 256 on CPU")
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
    p.add_argument("--cache-dir", type=Path, help="where the encoded dataset is cached")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from chessbot.data import DatasetProblem

    try:
        return Trainer(args).run()
    except (DatasetProblem, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
