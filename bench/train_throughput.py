#!/usr/bin/env python3
"""Training throughput of the chessbot trainer's real data path, resident and streamed, side
by side in one run: positions/s of each, their ratio, and on a GPU the share of wall time
spent in CUDA kernels (torch.profiler, resident mode).

The data is the committed smoke set in the trainer's compact encoding (chessbot.compact),
repeated to --positions rows and written as memory-mapped files. Resident: the encoded set
on the device, batches cut there by index. Streamed: batches gathered from the files by a
background thread into pinned buffers and copied asynchronously (what the trainer does when
the set is over its --memory-budget). Both featurise on the device. Default model: the GPU
preset (6 blocks x 64 channels), bf16 autocast on CUDA.

    python bench/train_throughput.py                      # on a GPU: the H200 check
    python bench/train_throughput.py --device cpu --positions 20000 --batch-size 512 \\
        --steps 10 --blocks 2 --channels 16               # a quick run anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiled(split, positions: int, folder: Path):
    """The split repeated to `positions` rows, written in the compact file layout."""
    from chessbot.compact import ROW_BYTES, open_encoded

    reps = -(-positions // len(split))
    rows = np.tile(np.asarray(split.rows), (reps, 1))[:positions]
    counts = np.tile(split.legal_counts(), reps)[:positions]
    legal = np.tile(np.asarray(split.legal), reps)[:int(counts.sum())]
    folder.mkdir(parents=True)
    rows.tofile(folder / "rows.bin")
    legal.astype("<u2").tofile(folder / "legal.bin")
    np.concatenate([[0], np.cumsum(counts)]).astype("<i8").tofile(folder / "offsets.bin")
    (folder / "meta.json").write_text(json.dumps({
        "positions": positions, "legal_moves": len(legal), "row_bytes": ROW_BYTES}))
    return open_encoded(folder)


def measure(args, device, source, net, optimizer, profile_kernels: bool):
    from chessbot.train import train_step

    cuda = device.type == "cuda"
    order = np.random.default_rng(0).permutation(source.n)
    need = (args.warmup + args.steps) * args.batch_size
    order = np.resize(order, need)
    order = np.concatenate([np.sort(order[i:i + args.batch_size])
                            for i in range(0, need, args.batch_size)])
    batches = source.batches(order, args.batch_size)
    for _ in range(args.warmup):
        train_step(net, optimizer, next(batches), cuda)
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        train_step(net, optimizer, next(batches), cuda)
    sync(device)
    seconds = time.perf_counter() - started
    batches.close()
    kernel_fraction = None
    if cuda and profile_kernels:
        from torch.profiler import ProfilerActivity, profile

        batches = source.batches(order, args.batch_size)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(min(10, args.steps)):
                train_step(net, optimizer, next(batches), cuda)
            sync(device)
            wall = time.perf_counter() - t0
        batches.close()
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages()
                        if e.device_type.name == "CUDA")
        kernel_fraction = kernel_us / 1e6 / wall
    return args.steps * args.batch_size / seconds, kernel_fraction


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--positions", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--dataset-dir", type=Path, default=ROOT / "data/dataset/_smoke_runpod")
    args = parser.parse_args()

    from chessbot.compact import encode_dataset
    from chessbot.model import ModelConfig, PolicyNet
    from chessbot.train import Resident, Streamed

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = encode_dataset(args.dataset_dir, Path(tmp) / "cache", splits=("train",))
        split = tiled(data.splits["train"], args.positions, Path(tmp) / "tiled")
        prep = time.perf_counter() - started
        figures = {}
        for kind in (Resident, Streamed):
            torch.manual_seed(0)
            model = PolicyNet(ModelConfig(args.blocks, args.channels)).to(device)
            if cuda:
                model = model.to(memory_format=torch.channels_last)
            net = torch.compile(model) if args.compile and cuda else model
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            source = kind(split, device)
            figures[kind.mode] = measure(args, device, source, net, optimizer,
                                         profile_kernels=kind is Resident)
            del source
    resident, kernel_fraction = figures["resident"]
    streamed, _ = figures["streamed"]
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    result = {"device": name, "model": f"{args.blocks}x{args.channels}",
              "batch_size": args.batch_size, "positions": args.positions,
              "bytes_per_position": round(split.nbytes / len(split), 1),
              "prepare_s": round(prep, 2), "resident_positions_per_s": round(resident),
              "streamed_positions_per_s": round(streamed),
              "streamed_over_resident": round(streamed / resident, 3),
              "cuda_kernel_fraction": None if kernel_fraction is None
              else round(kernel_fraction, 3)}
    print(json.dumps(result))
    print(f"{name}: resident {resident / 1e6:.3f} M positions/s, streamed "
          f"{streamed / 1e6:.3f} M/s = {100 * streamed / resident:.0f}% of resident"
          + (f"; CUDA kernels {100 * kernel_fraction:.0f}% of wall time"
             if kernel_fraction is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
