#!/usr/bin/env python3
"""Print the model's move for a position: always a legal move.

    python scripts/infer_move.py --model PATH --fen FEN [--top-k K] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STARTPOS = "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1"


def _wait(flag: Path, pid: int | None) -> bool:
    import os
    import time

    while not flag.exists():
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return flag.exists()
            except PermissionError:
                pass
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the chessbot model's move for a FEN")
    parser.add_argument("--model", required=True, help="checkpoint .pt written by the trainer")
    parser.add_argument("--fen", default=STARTPOS, help="position (default: the start)")
    parser.add_argument("--top-k", type=int, default=3, help="candidates to list (default: 3)")
    parser.add_argument("--json", action="store_true", help="print {fen, move, top} as JSON")
    parser.add_argument("--wait-for", metavar="FILE",
                        help="load the model only once FILE exists: start early (e.g. beside a "
                             "training run) so Python and torch are ready when it ends")
    parser.add_argument("--wait-pid", type=int, metavar="PID",
                        help="with --wait-for: give up (exit 3) if process PID ends first")
    args = parser.parse_args(argv)

    from chessbot.infer import ModelError, load_model, parse_fen, predict

    if args.wait_for and not _wait(Path(args.wait_for), args.wait_pid):
        print(f"error: gave up waiting for {args.wait_for}: process {args.wait_pid} ended",
              file=sys.stderr)
        return 3

    try:
        parse_fen(args.fen)
        result = predict(load_model(args.model), args.fen, args.top_k)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(result["move"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
