#!/usr/bin/env python3
"""Make the committed smoke dataset (data/dataset/_smoke_runpod) reproducibly.

Positions come from games: each game opens with a few seeded random moves, then continues with
a mix of engine moves at low depth and seeded random moves (so positions vary and include
mistakes to punish). Every position is labelled with the move Debian's `stockfish` plays at a
fixed depth, single-threaded with a cleared hash, which makes the labels deterministic. Games
are split between train and val whole, so no game leaks across the split.

Needs stockfish (`apt-get install stockfish`, it lands in /usr/games); run:
    python scripts/make_smoke_dataset.py --seed 20260226 --positions 4500
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import chess
import chess.engine


def find_stockfish() -> str:
    path = shutil.which("stockfish") or ("/usr/games/stockfish"
                                         if Path("/usr/games/stockfish").exists() else None)
    if not path:
        sys.exit("error: stockfish not found; install it with: apt-get install stockfish")
    return path


def play_game(engine: chess.engine.SimpleEngine, rng: random.Random, max_plies: int
              ) -> list[chess.Board]:
    board = chess.Board()
    positions = []
    opening = rng.randint(2, 8)
    for ply in range(max_plies):
        if board.is_game_over():
            break
        positions.append(board.copy(stack=False))
        moves = list(board.legal_moves)
        if ply < opening or rng.random() < 0.25:
            move = rng.choice(moves)
        else:
            move = engine.play(board, chess.engine.Limit(depth=1)).move
        board.push(move)
    return positions


def label(engine: chess.engine.SimpleEngine, board: chess.Board, depth: int) -> chess.Move:
    engine.configure({"Clear Hash": None})
    return engine.play(board, chess.engine.Limit(depth=depth), game=object()).move


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=20260226)
    parser.add_argument("--positions", type=int, default=4500)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--depth", type=int, default=8, help="stockfish label depth")
    parser.add_argument("--max-plies", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path("data/dataset/_smoke_runpod"))
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction {args.val_fraction}: use a fraction between 0 and 1 "
                     "(both excluded: a dataset needs both splits), e.g. 0.1")
    if args.positions < 2 or not 1 <= args.depth <= 40 or args.max_plies < 1:
        parser.error("--positions must be at least 2, --depth from 1 to 40, --max-plies at "
                     "least 1")

    rng = random.Random(args.seed)
    engine = chess.engine.SimpleEngine.popen_uci(find_stockfish())
    seen: set[str] = set()
    games: list[list[dict[str, str]]] = []
    total = 0
    try:  # the engine's reader thread keeps the interpreter alive until it quits
        engine.configure({"Threads": 1, "Hash": 16})
        while total < args.positions:
            game = []
            for board in play_game(engine, rng, args.max_plies):
                key = " ".join(board.fen().split()[:4])
                if key in seen or total + len(game) >= args.positions:
                    continue
                seen.add(key)
                move = label(engine, board, args.depth)
                game.append({"fen": board.fen(), "move": move.uci(), "game": len(games)})
            if game:
                games.append(game)
                total += len(game)
            print(f"\r{total}/{args.positions} positions from {len(games)} games", end="",
                  file=sys.stderr, flush=True)
    finally:
        engine.quit()
    print(file=sys.stderr)
    rng.shuffle(games)
    n_val = min(len(games) - 1, max(1, round(len(games) * args.val_fraction)))
    splits = {"val.jsonl": games[:n_val], "train.jsonl": games[n_val:]}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, chosen in splits.items():
        with open(args.out / name, "w", encoding="utf-8") as handle:
            for game in chosen:
                for row in game:
                    handle.write(json.dumps(row, sort_keys=True) + "\n")
    readme = args.out / "README.md"
    readme.write_text(
        "# _smoke_runpod\n\nSmoke dataset for the pod cycle: positions from engine/random games, "
        "each labelled with the move stockfish plays at a fixed depth.\n\n"
        "Made by `make dataset`, i.e.: `python scripts/make_smoke_dataset.py "
        f"--seed {args.seed} --positions {args.positions} --depth {args.depth} "
        f"--max-plies {args.max_plies}`\n"
        "(stockfish from Debian's package, Threads=1, hash cleared per position).\n")
    counts = {name: sum(len(g) for g in chosen) for name, chosen in splits.items()}
    print(json.dumps({"out": str(args.out), **counts, "games": len(games)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
