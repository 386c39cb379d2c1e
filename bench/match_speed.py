#!/usr/bin/env python3
"""Match speed: games per minute of a model against the random mover at --concurrency 1 and
2, in one run, on the same model and openings; the UCI engine's start-up time and its move
latency (CPU numpy path; the torch CUDA path too when a GPU is present).

    python bench/match_speed.py --model PATH [--games 20] [--max-moves 150] [--json]

Without --model, a randomly initialised 6x64 chessbot checkpoint (the GPU preset's size) is
written to a temporary folder and used (games then last longer: it plays like a random
mover, so most end by the move limit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def random_checkpoint(folder: Path) -> Path:
    import torch

    from chessbot.infer import FORMAT
    from chessbot.model import ModelConfig, PolicyNet

    torch.manual_seed(0)
    net = PolicyNet(ModelConfig())
    path = folder / "model.pt"
    torch.save({"format": FORMAT, "model_config": net.config.as_dict(),
                "state_dict": {k: v.detach() for k, v in net.state_dict().items()}}, path)
    return path


def startup_seconds(model: Path, repeats: int = 3) -> float:
    """From process start to `readyok` (the model loaded), median of a few."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "chessbot.uci", "--model", str(model)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=ROOT)
        assert proc.stdin and proc.stdout
        proc.stdin.write("uci\nisready\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.strip() == "readyok":
                break
        times.append(time.perf_counter() - started)
        proc.stdin.write("quit\n")
        proc.stdin.close()
        proc.wait()
    return statistics.median(times)


def move_latency_ms(model: Path, device: str, positions: int = 200) -> float | None:
    import io

    from chessbot.uci import Engine

    engine = Engine(model, io.StringIO())
    if device != "cpu":
        try:
            engine.cmd_setoption(["name", "Device", "value", device])
        except Exception as exc:  # noqa: BLE001 - no such device here
            print(f"  ({device}: {exc})", file=sys.stderr)
            return None
    from chessbot.data import random_positions

    boards = random_positions(positions, seed=3, max_plies=100)
    engine.board = boards[0]
    engine.cmd_go([])  # warm-up
    started = time.perf_counter()
    for board in boards:
        engine.board = board
        engine.cmd_go([])
    return (time.perf_counter() - started) / len(boards) * 1000


def games_per_minute(model: Path, games: int, concurrency: int, max_moves: int) -> dict:
    from podcycle.match import (
        MatchConfig,
        Rules,
        load_openings,
        model_spec,
        parse_opponent,
        parse_tc,
        run_match,
    )

    with tempfile.TemporaryDirectory() as folder:
        config = MatchConfig(games=games, concurrency=concurrency, tc=parse_tc("nodes=1"),
                             openings=load_openings(ROOT / "config" / "openings.epd"),
                             rules=Rules(max_moves=max_moves), pgn=Path(folder) / "m.pgn")
        started = time.perf_counter()
        result = run_match(model_spec(model), parse_opponent("random"), config)
        seconds = time.perf_counter() - started
    plies = sum(g.plies for g in result.games)
    return {"concurrency": concurrency, "games": len(result.games), "seconds": round(seconds, 2),
            "games_per_minute": round(len(result.games) / seconds * 60, 1),
            "plies_per_second": round(plies / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="chessbot model.pt (default: a random 6x64)")
    parser.add_argument("--games", type=int, default=20, help="games per run (default: 20)")
    parser.add_argument("--max-moves", type=int, default=150,
                        help="move limit of each game (default: 150)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or random_checkpoint(Path(folder))
        figures = {"model": str(args.model or "random 6x64"),
                   "startup_s": round(startup_seconds(model), 3),
                   "move_ms_cpu": round(move_latency_ms(model, "cpu") or 0, 2)}
        cuda = move_latency_ms(model, "cuda")
        figures["move_ms_cuda"] = round(cuda, 2) if cuda is not None else None
        figures["runs"] = [games_per_minute(model, args.games, k, args.max_moves)
                           for k in (1, 2)]
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"model {figures['model']}: UCI start-up to readyok {figures['startup_s']:.2f}s, "
              f"move {figures['move_ms_cpu']:.1f} ms on the CPU"
              + (f", {figures['move_ms_cuda']:.1f} ms on CUDA" if figures["move_ms_cuda"]
                 else " (no CUDA device)"))
        for run in figures["runs"]:
            print(f"--concurrency {run['concurrency']}: {run['games']} games in "
                  f"{run['seconds']:.1f}s = {run['games_per_minute']:.1f} games/min "
                  f"({run['plies_per_second']:.0f} plies/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
