"""Train the policy network: train.jsonl/val.jsonl → checkpoint .pt + metrics.json.

The dataset is encoded once on all cores into compact memory-mapped files (chessbot.compact,
cached by content hash). When the encoded set fits the memory budget it is moved to the device
whole and batches are cut from it there by index; otherwise batches stream from the files
through (pinned) host buffers, copied while the device works. Either way the 22 input planes
and the legal masks are made on the device, a batch at a time: no per-sample Python in the
hot loop. On CUDA: bf16 autocast,
large batches, channels-last, optional torch.compile. Several GPUs: the same script under
`torchrun --nproc-per-node N` (DDP); train_baseline_preset.sh chooses that automatically, and
on a cluster (NUM_NODES > 1) starts torchrun on every node with a static rendezvous. Only global
rank 0 writes (checkpoints, model.pt, metrics.json, TensorBoard events under
OUTPUT_DIR/tensorboard); a resume is read by rank 0 and broadcast to every rank.

python -m chessbot.train --dataset-dir D --output-dir O [--metrics-path M] [--epochs N] ...
"""

from __future__ import annotations

import gc

# Run as the trainer, Python's cyclic collector stays off while torch and torch._dynamo load:
# it would walk their million-odd objects, none of them garbage, hundreds of times over. main()
# freezes what they made out of later collections and turns the collector back on
# (loaded_with_collector_off). A quarter less CPU for those imports (1.2 CPU-s, not 1.6;
# bench/trainer_overhead.py for the whole training).
if __name__ == "__main__":
    gc.disable()

import argparse
import datetime
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chessbot import train_args
from chessbot.compact import (
    Encoded,
    default_workers,
    encode_dataset,
    featurize,
    labels_of,
    legal_mask_batch,
)
from chessbot.data import DatasetProblem
from chessbot.encoding import PLANES
from chessbot.infer import FORMAT
from chessbot.model import ModelConfig, PolicyNet


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class Batch:
    """A batch on the device, still compact: rows (see chessbot.compact) and the batch's
    legal moves, ragged (position i's are legal[starts[i]:starts[i] + counts[i]])."""

    rows: torch.Tensor
    legal: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    total: int

    def __len__(self) -> int:
        return self.rows.shape[0]

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(planes, labels, legal masks), made on the device."""
        return (featurize(self.rows), labels_of(self.rows),
                legal_mask_batch(self.legal, self.starts, self.counts, self.total))


# Bytes of a split copied to the device at a time (Resident).
RESIDENT_CHUNK_BYTES = 64 << 20


def on_device(array: np.ndarray, dtype: Any, torch_dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """A (memory-mapped) array whole on the device as `dtype`, copied a chunk at a time:
    every rank of a node loads the set at once, and a whole host copy per rank (two for the
    legal moves' conversion) multiplied the host RAM the load needed by the ranks."""
    out = torch.empty(array.shape, dtype=torch_dtype, device=device)
    per_item = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, RESIDENT_CHUNK_BYTES // per_item)
    for start in range(0, len(array), step):
        part = np.array(array[start:start + step], dtype=dtype)  # a writable copy, one chunk
        out[start:start + step].copy_(torch.from_numpy(part))
    return out


class Resident:
    """A split held whole on the device; batches are cut from it there by index."""

    mode = "resident"

    def __init__(self, split: Encoded, device: torch.device) -> None:
        self.n = len(split)
        self.offsets = np.asarray(split.offsets)
        self.rows = on_device(split.rows, np.uint8, torch.uint8, device)
        self.legal = on_device(split.legal, np.int16, torch.int16, device)
        self.offsets_dev = torch.from_numpy(self.offsets).to(device)
        self.device = device

    def batches(self, order: np.ndarray, size: int) -> Iterator[Batch]:
        order_dev = torch.from_numpy(order).to(self.device)
        for i in range(0, len(order), size):
            idx = order_dev[i:i + size]
            host = order[i:i + size]
            total = int((self.offsets[host + 1] - self.offsets[host]).sum())
            starts = self.offsets_dev[idx]
            yield Batch(self.rows[idx], self.legal, starts, self.offsets_dev[idx + 1] - starts,
                        total)


class Streamed:
    """A split read from its memory-mapped files a batch at a time: a background thread
    gathers the next batches into (pinned, on CUDA) host buffers while the device works,
    and copies them with non-blocking transfers on their own CUDA stream."""

    mode = "streamed"
    AHEAD = 3

    def __init__(self, split: Encoded, device: torch.device) -> None:
        self.split = split
        self.n = len(split)
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def _host_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        offsets = self.split.offsets
        starts = offsets[idx]
        counts = offsets[idx + 1] - starts
        total = int(counts.sum())
        first = np.cumsum(counts) - counts
        where = np.repeat(starts - first, counts) + np.arange(total)
        tensors = (torch.from_numpy(np.ascontiguousarray(self.split.rows[idx])),
                   torch.from_numpy(np.asarray(self.split.legal[where]).astype(np.int16)),
                   torch.from_numpy(first), torch.from_numpy(counts))
        if self.cuda:
            tensors = tuple(t.pin_memory() for t in tensors)
        return (*tensors, total)

    def batches(self, order: np.ndarray, size: int) -> Iterator[Batch]:
        import queue
        import threading

        ready: queue.Queue = queue.Queue(maxsize=self.AHEAD)
        stop = threading.Event()

        def produce() -> None:
            try:
                for i in range(0, len(order), size):
                    if stop.is_set():
                        return
                    ready.put(self._host_batch(np.sort(order[i:i + size])))
                ready.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                ready.put(exc)

        worker = threading.Thread(target=produce, daemon=True, name="stream-batches")
        worker.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                *tensors, total = item
                if self.cuda:
                    with torch.cuda.stream(self.stream):
                        moved = [t.to(self.device, non_blocking=True) for t in tensors]
                    torch.cuda.current_stream(self.device).wait_stream(self.stream)
                    for t in moved:
                        t.record_stream(torch.cuda.current_stream(self.device))
                else:
                    moved = tensors
                yield Batch(*moved, total)
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(0.05)


def memory_budget(device: torch.device, fraction: float = 0.5) -> int:
    """The default budget for holding the encoded set: half the free device memory (CUDA)
    or half the available RAM (CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * fraction)
    except OSError:
        pass
    return 1 << 33


def train_step(net: Any, optimizer: Any, batch: Batch, cuda: bool) -> torch.Tensor:
    """One optimisation step on a compact batch already on the device: planes and legal
    masks made there, masked cross-entropy over the legal moves, bf16 autocast on CUDA."""
    x, y, mask = batch.inputs()
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
        logits = net(x)
    logits = logits.float().masked_fill(~mask, -1e9)
    loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def evaluate(model: PolicyNet, source: Resident | Streamed, cuda: bool,
             batch_size: int = 4096) -> tuple[float, float]:
    """Masked cross-entropy and top-1 accuracy over the legal moves of a whole split."""
    model.eval()
    loss_sum = correct = None
    for batch in source.batches(np.arange(source.n), batch_size):
        x, y, mask = batch.inputs()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        logits = logits.float().masked_fill(~mask, -1e9)
        part_loss = F.cross_entropy(logits, y, reduction="sum")
        part_correct = (logits.argmax(dim=1) == y).sum()
        loss_sum = part_loss if loss_sum is None else loss_sum + part_loss
        correct = part_correct if correct is None else correct + part_correct
    total = max(1, source.n)
    return float(loss_sum or 0) / total, float(correct or 0) / total


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's state_dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def env_seconds(name: str, default: float) -> float:
    """A timeout in seconds from the environment (TRAIN_DIST_TIMEOUT, ...)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"error: {name}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise SystemExit(f"error: {name}={text!r} must be more than 0 seconds")
    return value


def plain_start_refusal(environ: dict[str, str] | os._Environ[str]) -> str | None:
    """Why this process must not train: an inherited WORLD_SIZE > 1 (a RunPod cluster node's
    env) without torchrun, which sets RANK and LOCAL_RANK for each process it starts. Alone,
    such a process would wait for peers that never come, or train as one of 1."""
    world = environ.get("WORLD_SIZE", "").strip()
    try:
        several = int(world) > 1
    except ValueError:
        return f"WORLD_SIZE={world!r} is not a number" if world else None
    if several and not ("RANK" in environ and "LOCAL_RANK" in environ):
        return (f"WORLD_SIZE={world} is set (a cluster node's environment) but this process was "
                "not started by torchrun: launch it with "
                "deploy/runpod_cloud_training/train_baseline_preset.sh (it runs torchrun on "
                "every node) or torchrun, or unset WORLD_SIZE")
    return None


def die_with_agent() -> None:
    """Under torchrun: end this worker when the agent that started it ends, even by kill -9.
    torchrun starts its workers in their own session, so a signal to the agent's process
    group (a stopped node, a gang stop) would otherwise leave them training alone."""
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Board:
    """Rank 0's TensorBoard event files under OUTPUT_DIR/tensorboard: the per-epoch scalars
    (global step = epoch) there, the every-N-steps training loss (global step = optimizer
    step) in its own folder, tensorboard/steps, so that each can purge what a resumed run
    writes again (a purge drops every tag's events at or after its step). Without TensorBoard
    installed it says so once and records nothing."""

    def __init__(self, folder: Path, start_epoch: int, start_step: int, every: int,
                 log: Any) -> None:
        self.epochs = self.steps = None
        self.every = every
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            log(f"TensorBoard is not installed ({exc}); training without event files")
            return
        # purge_step: a resumed (or restarted) run's epochs and steps replace the ones an
        # earlier attempt wrote past the checkpoint, so no epoch appears twice.
        self.epochs = SummaryWriter(str(folder), purge_step=start_epoch + 1)
        if every > 0:
            self.steps = SummaryWriter(str(folder / "steps"), purge_step=start_step + 1)

    def step(self, step: int, loss: torch.Tensor) -> None:
        if self.steps is not None and step % self.every == 0:
            self.steps.add_scalar("train/loss_step", float(loss.detach()), step)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.epochs is None:
            return
        for tag, key in (("train/loss", "train_loss"), ("val/loss", "val_loss"),
                         ("val/top1", "val_top1")):
            self.epochs.add_scalar(tag, row[key], row["epoch"])
        for writer in (self.epochs, self.steps):
            if writer is not None:
                writer.flush()

    def close(self) -> None:
        for writer in (self.epochs, self.steps):
            if writer is not None:
                writer.close()


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world > 1
        # torchrun's own count of nodes (GROUP_WORLD_SIZE) first, then RunPod's.
        self.nodes = int(os.environ.get("GROUP_WORLD_SIZE") or os.environ.get("NUM_NODES")
                         or 1) if self.distributed else 1
        self.node = int(os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or 0) \
            if self.distributed else 0
        self.wait_group: Any = None
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.distributed:
            backend = "nccl" if args.device == "cuda" else "gloo"
            if args.device == "cuda":
                torch.cuda.set_device(self.local_rank)
            # Bounded collectives: a rank whose peer died fails in minutes, not the default 30.
            timeout = env_seconds("TRAIN_DIST_TIMEOUT", 300)
            torch.distributed.init_process_group(
                backend, timeout=datetime.timedelta(seconds=timeout))
            # Waiting for another node's dataset encoding may take far longer than a step:
            # that one barrier goes through its own (CPU) group with a longer bound.
            self.wait_group = torch.distributed.new_group(
                backend="gloo", timeout=datetime.timedelta(
                    seconds=max(timeout, env_seconds("TRAIN_ENCODE_TIMEOUT", 3 * 3600))))
            if self.local_rank == 0:
                print(f"[train] node {self.node}: joined ({self.nodes} node(s), world size "
                      f"{self.world}, {backend})", flush=True)
                joined = os.environ.get("TRAIN_JOINED_FLAG")
                if joined:  # the preset's sign that the rendezvous succeeded (not OUTPUT_DIR)
                    Path(joined).touch()
        self.device = torch.device(args.device, self.local_rank) \
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
        data = self._encoded()
        digest = data.digest
        dev = self.device
        budget = args.memory_budget if args.memory_budget is not None else memory_budget(dev)
        kind = Resident if data.nbytes <= budget else Streamed
        train = kind(data.splits["train"], dev)
        val = kind(data.splits["val"], dev)
        self.log(f"data {kind.mode}: {human(data.nbytes)} encoded "
                 f"({'within' if kind is Resident else 'over'} the {human(budget)} budget on "
                 f"{dev.type}; --memory-budget sets it)")
        n = train.n
        per_process = math.ceil(n / self.world)
        batch = args.batch_size or train_args.default_batch_size(per_process, self.cuda)
        if not args.batch_size and self.cuda and batch < train_args.GPU_BATCH:
            self.log(f"batch {batch}, not {train_args.GPU_BATCH}: an epoch of {per_process:,} "
                     f"positions per process takes at least {train_args.MIN_DEFAULT_STEPS} "
                     "steps (--batch-size sets it)")
        batch = max(1, min(batch, per_process))
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
        start_epoch = start_step = 0
        resume, state = self._resume_state(config, digest)
        if resume and state is not None:
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
            # Checkpoints before TensorBoard's step counter: as if every epoch had this size.
            start_step = int(state.get("optimizer_steps", steps_per_epoch * start_epoch))
            self.log(f"resumed from {resume} at epoch {start_epoch}")
            if self.distributed:
                self.log(f"resuming from epoch {start_epoch} on every rank ({self.world})")
            del state
        net: torch.nn.Module = model
        if self.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if self.cuda else None)
        step_fn = self._compiled(net, batch) if (args.compile == "on" or (
            args.compile == "auto" and self.cuda)) else net

        baseline = data.splits["val"].random_legal_top1()
        self.log(f"device={dev} world={self.world} positions={n} batch={batch} "
                 f"model={config.blocks}x{config.channels} epochs={args.epochs}")
        if start_epoch >= args.epochs:
            self.log(f"nothing left to train: the checkpoint is at epoch {start_epoch} "
                     f"(--epochs {args.epochs}); its model is the one written")
        board = Board(args.output_dir / "tensorboard", start_epoch, start_step,
                      args.tb_every_steps, self.log) if self.rank == 0 else None
        try:
            steps = self._epochs(model, step_fn, optimizer, scheduler, train, val, batch,
                                 start_epoch, start_step, history, digest, baseline, board)
        finally:
            if board is not None:
                board.close()
        if start_epoch >= args.epochs and self.rank == 0:
            # No epoch ran, so none saved: a checkpoint at its last epoch, say pushed to a
            # new pod after the old one died between that save and the trainer's end, still
            # gives the model.pt its epoch wrote (which was not pushed with it).
            self._save_model(model, start_epoch, history, digest, baseline)
        hashes = [weights_sha256(model)]
        if self.distributed:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, hashes[0])
            hashes = gathered
        if self.rank == 0:
            self._write_metrics(history, digest, baseline, config, batch, n, val.n,
                                {"mode": kind.mode, "encoded_bytes": data.nbytes,
                                 "memory_budget": budget,
                                 "encode_seconds": round(data.seconds, 2)}, hashes,
                                 sum(p.numel() for p in model.parameters()))
            if len(set(hashes)) > 1:
                self.log(f"warning: the ranks ended with different weights ({steps} steps): "
                         + ", ".join(h[:12] for h in hashes))
        if self.distributed:
            torch.distributed.destroy_process_group()
        return 0

    def _epochs(self, model: PolicyNet, step_fn: Any, optimizer: Any, scheduler: Any,
                train: Resident | Streamed, val: Resident | Streamed, batch: int,
                start_epoch: int, step: int, history: list[dict[str, Any]], digest: str,
                baseline: float, board: Board | None) -> int:
        """The epochs from start_epoch on; returns the optimizer steps taken in all."""
        args, dev, n = self.args, self.device, train.n
        for epoch in range(start_epoch, args.epochs):
            model.train()
            generator = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + epoch)
            padded = torch.randperm(n, generator=generator).numpy()
            # Padded to a multiple of the world with its own first positions (as PyTorch's
            # DistributedSampler does): ranks of unequal shards took unequal numbers of steps,
            # and the one with a step more waited in DDP's all-reduce for peers already in
            # the epoch's, a hang until the collective timeout (16,385 positions on 2 GPUs).
            padded = np.concatenate([padded, padded[:(-n) % self.world]])
            shard = padded[self.rank::self.world]
            # Each batch's indices in ascending order: the same batches either way, and
            # streamed reads that move forward through the files.
            order = np.concatenate([np.sort(shard[i:i + batch])
                                    for i in range(0, len(shard), batch)])
            loss_sum = torch.zeros((), device=dev)
            if self.cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            first = None  # this epoch's first step, in seconds (a compile's, in the first)
            steps_here = 0
            for part in train.batches(order, batch):
                loss = self._step(step_fn, optimizer, part)
                scheduler.step()
                loss_sum += loss.detach() * len(part)
                step += 1
                steps_here += 1
                if first is None:
                    if self.cuda:
                        torch.cuda.synchronize()
                    first = time.perf_counter() - started
                if board is not None:
                    board.step(step, loss)  # rank 0's batch loss, every --tb-every-steps
            if self.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            # The time left, from the steps after the epoch's first: the first step of a
            # compiled training compiles it (tens of seconds on a GPU), which made the first
            # epoch's estimate many times the training's real length.
            steady = ((seconds - first) * steps_here / (steps_here - 1)
                      if first is not None and steps_here > 1 else seconds)
            if self.distributed:
                torch.distributed.all_reduce(loss_sum)
                # BatchNorm's running statistics move with each rank's own batches: rank 0's
                # (what it saves) go to every rank, so every rank holds the same model.
                for buffer in model.buffers():
                    torch.distributed.broadcast(buffer, 0)
            train_loss = float(loss_sum) / len(padded)
            val_loss, val_top1 = evaluate(model, val, self.cuda)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                # Checked before this epoch's save: the last checkpoint stays the last good
                # one. Every rank sees the same losses (all-reduced, one model): all stop.
                raise Diverged(epoch + 1, train_loss, val_loss, args.lr)
            row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5),
                   "val_loss": round(val_loss, 5), "val_top1": round(val_top1, 5),
                   "epoch_seconds": round(seconds, 3),
                   "positions_per_s": round(n / seconds, 1) if seconds else None}
            history.append(row)
            left = (args.epochs - epoch - 1) * steady
            self.log(f"epoch {epoch + 1}/{args.epochs} train_loss={train_loss:.4f} "
                     f"val_loss={val_loss:.4f} val_top1={val_top1:.4f} "
                     f"({seconds:.2f}s, {row['positions_per_s']:.0f} positions/s"
                     + (f", about {left:.0f}s left)" if left else ")"))
            if self.rank == 0:
                self._save(model, optimizer, scheduler, epoch + 1, history, digest, baseline,
                           step)
            if board is not None:  # after the checkpoint: events never run ahead of it
                board.epoch(row)
        return step

    def _step(self, net: Any, optimizer: Any, batch: Batch) -> torch.Tensor:
        return train_step(net, optimizer, batch, self.cuda)

    def _encoded(self) -> Any:
        """The compact encoding of the dataset (chessbot.compact), from the cache or made
        now on all cores. Under torchrun, each node's local rank 0 encodes (a node has its
        own disk) and the others then read it; every node must hold the same dataset."""
        args = self.args
        if self.distributed and self.local_rank != 0:
            torch.distributed.barrier(group=self.wait_group)
        last = [0.0]

        def progress(split: str, done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] >= 5 or done == total:
                last[0] = now
                self.log(f"encoding {split}: {100 * done / max(1, total):.0f}% "
                         f"of {human(total)}")

        data = encode_dataset(args.dataset_dir, args.cache_dir, args.workers, log=self.log,
                              progress=progress)
        if not data.cached:
            self.log(f"encoded {data.positions} positions in {data.seconds:.1f}s "
                     f"({data.positions / max(data.seconds, 1e-9):,.0f} positions/s, "
                     f"{args.workers or default_workers()} workers) into "
                     f"{human(data.nbytes)}")
        if self.distributed and self.local_rank == 0:
            torch.distributed.barrier(group=self.wait_group)
        if self.distributed:
            digests: list[Any] = [None] * self.world
            # Through the long-bounded CPU group: a rank may still be reading its dataset
            # (the others hash it again) long after local rank 0 came here.
            torch.distributed.all_gather_object(digests, data.digest, group=self.wait_group)
            if len(set(digests)) > 1:
                odd = [r for r, d in enumerate(digests) if d != digests[0]]
                raise DatasetProblemAcrossNodes(
                    f"the nodes hold different datasets: rank(s) {odd} differ from rank 0 "
                    f"({digests[0][:12]}); push the same dataset to every node")
        return data

    def _compiled(self, net: torch.nn.Module, batch: int) -> Any:
        """torch.compile(net), its forward compiled here on a probe batch of the training's
        own shape and memory layout (a compile failure falls back to eager here, not at the
        first step), the model's BatchNorm statistics put back after it: a forward in
        training mode moves them, and a resumed model with no epoch left was then written
        other than its checkpoint."""
        saved = [buffer.detach().clone() for buffer in net.buffers()]
        try:
            compiled = torch.compile(net)
            probe = torch.zeros((batch, PLANES, 8, 8), device=self.device)
            if self.cuda:
                probe = probe.to(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                compiled(probe)
            return compiled
        except Exception as exc:  # noqa: BLE001 - compile is an optimisation only
            self.log(f"torch.compile unavailable ({type(exc).__name__}); running eagerly")
            return net
        finally:
            with torch.no_grad():
                for buffer, before in zip(net.buffers(), saved, strict=True):
                    buffer.copy_(before)

    def _resume_state(self, config: ModelConfig, digest: str
                      ) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint to resume from and its state. Rank 0 finds and reads it (a new
        cluster gets the checkpoint on the primary only) and broadcasts it to every rank, so
        that all start from the same epoch with the same model, optimizer and schedule.
        `--resume auto` (the cycle's, for a training it lost) takes a checkpoint only of this
        training's model size and dataset: another's is not this training's, and a model of
        another size cannot load (a traceback on every try). A checkpoint named by path must
        hold a model of the size asked for."""
        payload: list[Any] = [None]
        if self.rank == 0:
            try:
                path = self._resume_path()
                state = None if path is None else torch.load(path, map_location="cpu",
                                                             weights_only=False)
                if state is not None:
                    other = _other_training(state, config, digest)
                    if other and self.args.resume == "auto":
                        self.log(f"not resuming from {path}: {other[1]}; training from "
                                 "epoch 1")
                        path = state = None
                    elif other and other[0] == "size":
                        raise SystemExit(f"error: --resume {path}: {other[1]} (--blocks, "
                                         "--channels); give the same size, or leave --resume "
                                         "out to train from epoch 1")
                payload = [{"path": path, "state": state}]
            except SystemExit as exc:
                payload = [{"error": str(exc.code)}]
        if self.distributed:
            torch.distributed.broadcast_object_list(payload, src=0)
        answer = payload[0]
        if "error" in answer:
            if self.distributed:
                torch.distributed.destroy_process_group()
            raise SystemExit(answer["error"] if self.rank == 0 else 2)
        return answer["path"], answer["state"]

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
              history: list, digest: str, baseline: float, steps: int) -> None:
        common = self._model_record(model, epoch, history, digest, baseline)
        _atomic_save({**common, "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "history": history,
                      "optimizer_steps": steps},
                     self.args.output_dir / "checkpoint_last.pt")
        _atomic_save(common, self.args.output_dir / "model.pt")

    def _save_model(self, model: PolicyNet, epoch: int, history: list, digest: str,
                    baseline: float) -> None:
        _atomic_save(self._model_record(model, epoch, history, digest, baseline),
                     self.args.output_dir / "model.pt")

    def _model_record(self, model: PolicyNet, epoch: int, history: list, digest: str,
                      baseline: float) -> dict[str, Any]:
        """What model.pt holds (a checkpoint holds it too, and what resumes training)."""
        self.args.output_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {"format": FORMAT, "model_config": model.config.as_dict(), "state_dict": state,
                "dataset_hash": digest, "epoch": epoch,
                "metrics": history[-1] if history else None, "random_legal_top1": baseline}

    def _write_metrics(self, history: list, digest: str, baseline: float, config: ModelConfig,
                       batch: int, n_train: int, n_val: int, data: dict,
                       hashes: list[str], params: int) -> None:
        path = self.args.metrics_path or self.args.output_dir / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        metrics = {"epochs": history, "final": history[-1] if history else None,
                   "random_legal_top1": round(baseline, 5), "dataset_hash": digest,
                   "device": str(self.device), "world_size": self.world,
                   "nodes": self.nodes, "rank_weights_sha256": hashes,
                   "gpu": torch.cuda.get_device_name(self.device) if self.cuda else None,
                   "batch_size": batch, "lr": self.args.lr, "params": params,
                   "model_config": config.as_dict(),
                   "train_positions": n_train, "val_positions": n_val, "data": data}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(path)
        self.log(f"wrote {self.args.output_dir / 'model.pt'} and {path}")


def _other_training(state: dict[str, Any], config: ModelConfig, digest: str
                    ) -> tuple[str, str] | None:
    """Why a checkpoint is not this training's: ("size", why) for another model size,
    ("dataset", why) for another dataset; None when it is."""
    held = state.get("model_config") or {}
    if held != config.as_dict():
        size = f"{held.get('blocks', '?')}x{held.get('channels', '?')}"
        return "size", (f"it holds a {size} model, this training is a "
                        f"{config.blocks}x{config.channels} one")
    if state.get("dataset_hash") != digest:
        return "dataset", "it was trained on another dataset"
    return None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return train_args.parser().parse_args(argv)


def cuda_refusal(device: str) -> str | None:
    """Why --device cuda cannot train here (torch sees no usable GPU), else None: before the
    dataset is encoded, instead of a traceback at the first tensor moved."""
    if device != "cuda" or torch.cuda.is_available():
        return None
    built = torch.version.cuda
    return (f"--device cuda, but torch {torch.__version__} finds no usable GPU ("
            + (f"it was built for CUDA {built}; a driver older than that is the usual cause: "
               "nvidia-smi shows the driver's CUDA version" if built
               else "it was built without CUDA")
            + "); use a pod whose driver supports it, or --device cpu")


class DatasetProblemAcrossNodes(Exception):
    """The nodes of a cluster hold different datasets."""


DIVERGED = 4  # the trainer's exit code when its loss stops being a number


class Diverged(Exception):
    """The loss became NaN or infinite: the weights are no model any more."""

    def __init__(self, epoch: int, train_loss: float, val_loss: float, lr: float) -> None:
        kept = (f"the last checkpoint is epoch {epoch - 1}'s" if epoch > 1
                else "no epoch was saved")
        super().__init__(
            f"the training diverged in epoch {epoch}: train loss {train_loss}, val loss "
            f"{val_loss} ({kept}); train again with a lower --lr than {lr:g}")


def loaded_with_collector_off() -> None:
    """Where the trainer started with the cyclic collector off (run as __main__): import
    torch._dynamo as well, which torch.optim imports at its first step anyway, then move all
    that the imports made into gc's permanent generation and turn the collector on."""
    if gc.isenabled():
        return
    import torch._dynamo  # noqa: F401

    gc.freeze()
    gc.enable()


def main(argv: list[str] | None = None) -> int:
    loaded_with_collector_off()
    args = parse_args(argv)
    wrong = train_args.out_of_range(args)
    if wrong:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    refusal = plain_start_refusal(os.environ) or cuda_refusal(args.device)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    die_with_agent()
    try:
        return Trainer(args).run()
    except (DatasetProblem, DatasetProblemAcrossNodes, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Diverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return DIVERGED


def exit_now(code: int) -> None:
    """End the trainer with `code` once all it wrote is out: the atexit handlers run
    (multiprocessing's, logging's), stdout and stderr are flushed, and os._exit skips the
    interpreter's teardown. Its files are closed by then (model, checkpoints and metrics are
    each written whole, then renamed; the TensorBoard writers are closed as the epochs end)
    and its threads are daemons done with their work. With torch loaded, and torch._dynamo
    that torch.optim imports, that teardown frees over a million objects one at a time: 0.6
    CPU-s, a quarter of a small training's whole cost (bench/trainer_overhead.py)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed: nothing to flush
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            code = 120  # as Python's own exit says it (cycle.train: the disk may be full)
            try:
                print(f"error: the trainer's output could not be written out: {exc}",
                      file=sys.__stderr__, flush=True)
            except (OSError, ValueError, AttributeError):
                pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
