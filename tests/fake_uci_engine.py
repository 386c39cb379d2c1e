"""A tiny real UCI engine that misbehaves on purpose, for the match tests:

    python tests/fake_uci_engine.py MODE [PIDFILE]

MODE: random (a legal random move), resigning (random moves, reporting -900 cp), crash (exits
at its first `go`), hang (never answers a `go`), illegal (answers an illegal move), hang-game-N
(plays random moves, then hangs in its Nth game), mute (never answers at all: no uciok),
chatty (random moves, each after lines no UCI engine sends, one of 200,000 characters),
stop-host FIFO (plays random moves; at its third `go`, once per FIFO, it stops the process
that started it with SIGSTOP, as a laptop's sleep does, makes FIFO.stopped, and once a line
comes through the named pipe FIFO continues it with SIGCONT, then answers).
PIDFILE, when given, gets the process id appended at start-up, and PIDFILE.hung is made when
it starts to hang.
"""

from __future__ import annotations

import os
import random
import signal
import sys

import chess


def main() -> int:
    mode = sys.argv[1]
    if len(sys.argv) > 2 and mode != "stop-host":
        with open(sys.argv[2], "a") as handle:
            handle.write(f"{os.getpid()}\n")
    if mode == "mute":  # not a UCI engine at all (`cat`, a shell): never says uciok
        sys.stdin.read()
        return 0
    rng = random.Random(7)
    board = chess.Board()
    games = 0
    hang_game = int(mode.rsplit("-", 1)[1]) if mode.startswith("hang-game-") else None
    goes = 0
    for line in sys.stdin:
        tokens = line.split()
        if not tokens:
            continue
        command = tokens[0]
        if command == "uci":
            print(f"id name fake-{mode}\nid author tests\nuciok", flush=True)
        elif command == "isready":
            print("readyok", flush=True)
        elif command == "ucinewgame":
            games += 1
        elif command == "position":
            moves = tokens.index("moves") if "moves" in tokens else len(tokens)
            board = chess.Board() if tokens[1] == "startpos" else \
                chess.Board(" ".join(tokens[2:moves]))
            for move in tokens[moves + 1:]:
                board.push_uci(move)
        elif command == "go":
            goes += 1
            if mode == "stop-host" and goes == 3 and not os.path.exists(
                    f"{sys.argv[2]}.stopped"):  # once: not again by an engine started anew
                host = os.getppid()
                os.kill(host, signal.SIGSTOP)
                open(f"{sys.argv[2]}.stopped", "a").close()
                with open(sys.argv[2]) as fifo:  # the test says when (EOF if it gave up)
                    fifo.readline()
                try:
                    os.kill(host, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            if mode == "crash":
                return 3
            if mode == "hang" or (hang_game is not None and games >= hang_game):
                if len(sys.argv) > 2:
                    open(f"{sys.argv[2]}.hung", "a").close()
                continue  # never answers
            if mode == "resigning":
                move = rng.choice(list(board.legal_moves))
                print(f"info depth 1 score cp -900\nbestmove {move.uci()}", flush=True)
                continue
            if mode == "illegal":
                legal = set(board.legal_moves)
                move = next(chess.Move(a, b) for a in chess.SQUARES for b in chess.SQUARES
                            if a != b and chess.Move(a, b) not in legal)
            else:
                move = rng.choice(list(board.legal_moves))
            if mode == "chatty":  # lines python-chess cannot read, a long one among them
                print("hello unexpected\ninfo depth x score cp 0\n" + "A" * 200_000,
                      flush=True)
            print(f"info depth 1 score cp 0\nbestmove {move.uci()}", flush=True)
        elif command == "quit":
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
