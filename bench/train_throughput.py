#!/usr/bin/env python3
"""Training throughput of the chessbot trainer's real data path, side by side with a
per-sample DataLoader feeding the same model, in one run. Prints positions/s for both and
their ratio, plus the fraction of wall time spent in CUDA kernels (torch.profiler) on a GPU.

The dataset is the committed smoke dataset encoded once (the trainer's own encoder and cache),
tiled to --positions rows and kept on the device, batches cut by index: exactly what
`chessbot.train` does. Default model: the GPU preset (6 blocks x 64 channels).

    python bench/train_throughput.py                      # on a GPU: the H200 check
    python bench/train_throughput.py --device cpu --positions 20000 --batch-size 512 \\
        --steps 10 --blocks 2 --channels 16               # a quick run anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from chessbot.model import ModelConfig, PolicyNet  # noqa: E402
from chessbot.train import load_encoded, train_step, unpack_masks  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def resident(args, device, boards, labels, masks) -> tuple[float, float | None]:
    cuda = device.type == "cuda"
    model = PolicyNet(ModelConfig(args.blocks, args.channels)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if args.compile and cuda else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    n = labels.shape[0]
    order = torch.randperm(n, device=device)

    def step(i: int) -> None:
        idx = order[(i * args.batch_size) % (n - args.batch_size):][:args.batch_size]
        train_step(net, optimizer, boards[idx], labels[idx], masks[idx], cuda)

    for i in range(args.warmup):
        step(i)
    sync(device)
    started = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync(device)
    seconds = time.perf_counter() - started
    kernel_fraction = None
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sync(device)
            t0 = time.perf_counter()
            for i in range(10):
                step(i)
            sync(device)
            wall = time.perf_counter() - t0
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages()
                        if e.device_type.name == "CUDA")
        kernel_fraction = kernel_us / 1e6 / wall
    return args.steps * args.batch_size / seconds, kernel_fraction


class PerSample(torch.utils.data.Dataset):
    """The naive path: one position at a time from host memory, collated by a DataLoader."""

    def __init__(self, boards, labels, masks) -> None:
        self.boards, self.labels, self.masks = boards, labels, masks

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int):
        return self.boards[i], self.labels[i], self.masks[i]


def per_sample(args, device, boards, labels, masks) -> float:
    cuda = device.type == "cuda"
    model = PolicyNet(ModelConfig(args.blocks, args.channels)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PerSample(boards, labels, masks),
                                         batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True)
    steps = max(2, args.steps // 4)
    done = 0
    started = None
    for i, (x, y, m) in enumerate(loader):
        if i == 1:
            sync(device)
            started = time.perf_counter()
        train_step(model, optimizer, x.to(device), y.to(device), m.to(device), cuda)
        if i >= 1:
            done += x.shape[0]
        if i >= steps:
            break
    sync(device)
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--positions", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--dataset-dir", type=Path, default=ROOT / "data/dataset/_smoke_runpod")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    arrays, _ = load_encoded(args.dataset_dir, None, lambda m: print(m, file=sys.stderr))
    reps = -(-args.positions // len(arrays["train_labels"]))
    boards = torch.from_numpy(arrays["train_boards"]).repeat(reps, 1, 1, 1)[:args.positions]
    labels = torch.from_numpy(arrays["train_labels"]).repeat(reps)[:args.positions]
    masks = torch.from_numpy(arrays["train_masks"]).repeat(reps, 1)[:args.positions]
    assert unpack_masks(masks[:4]).gather(1, labels[:4, None]).all()
    prep = time.perf_counter() - started
    fast, kernel_fraction = resident(args, device, boards.to(device), labels.to(device),
                                     masks.to(device))
    slow = per_sample(args, device, boards, labels, masks)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "model": f"{args.blocks}x{args.channels}",
              "batch_size": args.batch_size, "positions": args.positions,
              "prepare_s": round(prep, 2), "resident_positions_per_s": round(fast),
              "dataloader_positions_per_s": round(slow), "ratio": round(fast / slow, 2),
              "cuda_kernel_fraction": None if kernel_fraction is None
              else round(kernel_fraction, 3)}
    print(json.dumps(result))
    print(f"{name}: trainer path {fast / 1e6:.3f} M positions/s vs per-sample DataLoader "
          f"{slow / 1e6:.3f} M/s = {fast / slow:.1f}x"
          + (f"; CUDA kernels {100 * kernel_fraction:.0f}% of wall time"
             if kernel_fraction is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
