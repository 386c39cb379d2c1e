#!/usr/bin/env python3
"""NCCL on this machine's GPUs, through torchrun as the train preset starts it: each process
joins an NCCL process group on its own GPU (LOCAL_RANK), all-reduces a tensor and takes one
DistributedDataParallel step. Prints one line per rank; exit 0 when every rank got the right
sum. The trainer itself starts no process group in a world of one, so on a one-GPU machine
this is what exercises NCCL there.

    python -m torch.distributed.run --standalone --nproc-per-node 1 bench/nccl_check.py

More processes than GPUs fail in NCCL's own check (on one H100, 2 processes: "Duplicate GPU
detected : rank 1 and rank 0 both on CUDA device"): the preset's NPROC=auto starts one
trainer per visible GPU. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (NCCL needs a GPU per process)")
        return 0
    if "LOCAL_RANK" not in os.environ:
        print("start it with torchrun: python -m torch.distributed.run --standalone "
              "--nproc-per-node N bench/nccl_check.py", file=sys.stderr)
        return 2
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    try:
        total = torch.full((4,), float(rank + 1), device="cuda")
        dist.all_reduce(total)
        expected = world * (world + 1) / 2
        net = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Linear(8, 2).cuda(), device_ids=[local])
        net(torch.randn(16, 8, device="cuda")).sum().backward()
        ok = bool((total == expected).all())
        print(f"rank {rank}/{world} on {torch.cuda.get_device_name(local)}: all_reduce "
              f"{total[0].item():g} (expected {expected:g}), DDP step done, NCCL "
              f"{'.'.join(map(str, torch.cuda.nccl.version()))}: {'ok' if ok else 'WRONG'}")
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
