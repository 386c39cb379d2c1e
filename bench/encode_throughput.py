#!/usr/bin/env python3
"""Encode throughput and stored bytes per position: the compact encoder (chessbot.compact,
all cores) side by side with the previous encoder (chessbot.train.encode_file: python-chess
planes and a packed 4096-bit legal mask, one core), in one run, on the same data.

The data is the committed smoke set's train split, repeated to --positions lines (repeats
change nothing for either encoder: neither caches positions). The old encoder runs on the
first --old-positions lines (it is slow; its rate does not depend on the count).

    python bench/encode_throughput.py                     # what issue 7 asks for
    python bench/encode_throughput.py --positions 1000000 --workers 16 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod" / "train.jsonl"


def encode_file(path: Path) -> dict:
    """The encoder the trainer used before the compact encoding (chessbot.train.encode_file
    until issue 7), kept verbatim here as the baseline: 22 uint8 planes and a packed
    4096-bit legal mask a position, python-chess on one core."""
    import numpy as np

    from chessbot.data import iter_records
    from chessbot.encoding import MOVES, PLANES, encode_board, legal_indices, move_index

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=200_000,
                        help="lines for the compact encoder (default 200,000)")
    parser.add_argument("--old-positions", type=int, default=13_488,
                        help="lines for the old encoder (default: the smoke split, 13,488)")
    parser.add_argument("--workers", type=int, default=0, help="default: all cores")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from chessbot.compact import default_workers, encode_split

    lines = SMOKE.read_text().splitlines(keepends=True)
    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "train.jsonl"
        with open(big, "w") as handle:
            for i in range(args.positions):
                handle.write(lines[i % len(lines)])
        small = Path(tmp) / "old.jsonl"
        small.write_text("".join(lines[i % len(lines)] for i in range(args.old_positions)))

        started = time.perf_counter()
        old = encode_file(small)
        old_seconds = time.perf_counter() - started
        old_bytes = sum(a.nbytes for a in old.values()) / args.old_positions

        started = time.perf_counter()
        new = encode_split(big, Path(tmp) / "encoded", workers)
        new_seconds = time.perf_counter() - started
        new_bytes = sum(f.stat().st_size for f in (Path(tmp) / "encoded").iterdir()
                        if f.suffix == ".bin") / len(new)

    old_rate = args.old_positions / old_seconds
    new_rate = len(new) / new_seconds
    figures = {
        "cores": os.cpu_count(), "workers": workers,
        "old": {"positions": args.old_positions, "seconds": round(old_seconds, 2),
                "positions_per_s": round(old_rate), "bytes_per_position": round(old_bytes, 1)},
        "compact": {"positions": len(new), "seconds": round(new_seconds, 2),
                    "positions_per_s": round(new_rate), "bytes_per_position": round(new_bytes, 1)},
        "speedup": round(new_rate / old_rate, 2),
        "bytes_ratio": round(old_bytes / new_bytes, 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"old encoder (1 core):         {old_rate:10,.0f} positions/s, "
              f"{old_bytes:6.1f} bytes/position ({args.old_positions:,} positions)")
        print(f"compact encoder ({workers} workers): {new_rate:10,.0f} positions/s, "
              f"{new_bytes:6.1f} bytes/position ({len(new):,} positions, files included)")
        print(f"speed-up {figures['speedup']}x; {figures['bytes_ratio']}x fewer bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
