#!/usr/bin/env python3
"""A local full cycle on a dataset made by data.import-pgn, timed per phase: generate PGN
(random-play games, .pgn.zst), import, stats, encode (host), then cycle.full-smoke on a fresh
local RunPod in a temporary folder (push, train with the pod encoding on its cores, collect,
local validation, stop). The figures issue 7 asks for at 200,000 positions.

    .venv/bin/python bench/large_cycle.py [--positions 200000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")


def inv(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run([INV, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"inv {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.monotonic() - started, result


def make_pgn(path: Path, positions: int, seed: int) -> int:
    """Random-play games (40 to 160 plies) until `positions` plies, zstd-compressed."""
    import chess
    import zstandard

    rng = random.Random(seed)
    games = plies = 0
    with open(path, "wb") as raw, \
            zstandard.ZstdCompressor().stream_writer(raw) as out:
        while plies < positions:
            board = chess.Board()
            sans = []
            for _ in range(rng.randint(40, 160)):
                moves = list(board.legal_moves)
                if not moves or plies + len(sans) >= positions:
                    break
                move = rng.choice(moves)
                sans.append((board.fullmove_number, board.turn, board.san(move)))
                board.push(move)
            text = " ".join(f"{n}. {s}" if white else s for n, white, s in sans)
            result = board.result() if board.is_game_over() else "*"
            header = (f'[Event "bench {games}"]\n[WhiteElo "{1500 + games % 800}"]\n'
                      f'[BlackElo "{1500 + games % 700}"]\n[TimeControl "300+3"]\n'
                      f'[Result "{result}"]\n\n')
            out.write((header + text + f" {result}\n\n").encode())
            games += 1
            plies += len(sans)
    return games


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=200_000)
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from podcycle.local import control
    from podcycle.runs import RunFolder

    work = Path(tempfile.mkdtemp(prefix="large-cycle-"))
    env = {k: v for k, v in os.environ.items() if k != "RUNPOD_API_KEY"}
    env.update(POD_CYCLE_LOCAL_DIR=str(work / "local"), RUNPOD_BACKEND="local",
               POD_CYCLE_ARTIFACTS_DIR=str(work / "artifacts"), TRAIN_EPOCHS=args.epochs,
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
               RUNPOD_CYCLE_RUN_ID="large-0")
    phases: dict[str, float] = {}
    started = time.monotonic()
    pgn = work / "games.pgn.zst"
    games = make_pgn(pgn, args.positions, args.seed)
    phases["generate_pgn"] = time.monotonic() - started
    dataset = work / "dataset" / "bench"
    phases["import_pgn"], made = inv(env, "data.import-pgn", str(pgn), "--out", str(dataset),
                                     "--json")
    report = json.loads(made.stdout)
    phases["stats"], _ = inv(env, "data.stats", "-d", str(dataset), "--json")
    phases["encode_host"], enc = inv(env, "data.encode", "-d", str(dataset), "--json")
    info, _ = control.up(work / "local")
    try:
        phases["full_smoke"], cycle = inv(env, "cycle.full-smoke", "-d", str(dataset))
    finally:
        control.down(work / "local")
    run = RunFolder(work / "artifacts", "large-0")
    steps = {name: step.seconds for name, step in run.state.steps.items()}
    push = [t for t in run.state.transfers if t.step == "push-dataset"][-1]
    train_log = next(run.run_artifacts.rglob("train.log"), None)
    pod_encode = [line for line in (train_log.read_text().splitlines() if train_log else [])
                  if "encoded" in line or "data " in line]
    figures = {
        "pgn_games": games, "pgn_bytes": pgn.stat().st_size,
        "positions": report["positions"], "games_kept": report["games_kept"],
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "cycle_steps_s": steps,
        "push": {"dataset_bytes": push.dataset_bytes, "sent": push.sent,
                 "seconds": push.seconds},
        "host_encode": json.loads(enc.stdout),
        "pod_log": pod_encode,
        "val_top1": (run.state.local_validation or {}).get("val_top1"),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
