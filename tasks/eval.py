"""Model strength: matches between the model and an opponent, judged by Elo and SPRT."""

from podcycle.cli import guarded, settings, task
from podcycle.redact import printable


@task(help={
    "model": "the model under test: a chessbot model.pt (default: none; give --model or --run)",
    "run": "the model under test: a finished run's collected model, by RUN_ID (default: none; "
           "give --run or --model)",
    "opponent": "random | stockfish:elo=N | stockfish:skill=N | stockfish:depth=N | "
                "model:PATH | run:RUN_ID | uci:COMMAND (default: random)",
    "games": "games to play, an even number: each opening with both colours (default: 20)",
    "openings": "opening book, EPD or PGN (default: config/openings.epd)",
    "concurrency": "games played at the same time (default: 1)",
    "tc": "time control for engines that search: nodes=N, depth=N, movetime=SECONDS or "
          "BASE+INC in seconds (default: movetime=0.05)",
    "max_moves": "adjudicate a draw after this many moves; 0 = no limit (default: 200)",
    "resign": "adjudicate a loss when an engine's own score stays at or below -CP for MOVES "
              "moves, as CP/MOVES (e.g. 700/3; default: off)",
    "draw": "adjudicate a draw after move 30 when both engines' scores stay within ±CP for "
            "MOVES moves each, as CP/MOVES (e.g. 10/8; default: off)",
    "move_timeout": "seconds past its time control before a silent engine forfeits "
                    "(default: 10)",
    "sprt": "run an SPRT and stop once it decides: elo0=A,elo1=B[,alpha=0.05,beta=0.05] "
            "(default: off)",
    "pgn": "where to write the games (default: the run's strength/ folder with --run, else "
           "artifacts/matches/match-<time>.pgn)",
    "seed": "seed of the random mover (default: 1)",
    "json": "print the result as JSON on stdout (progress stays on stderr) (default: off)",
})
@guarded
def match(c, model=None, run=None, opponent="random", games=None, openings=None,
          concurrency=None, tc="movetime=0.05", max_moves=None, resign=None, draw=None,
          move_timeout=None, sprt=None, pgn=None, seed=None, json=False):
    """Play the model against an opponent: W/D/L, Elo ± 95% interval, optional SPRT.

    Games come in pairs (each opening with both colours); the Elo interval is computed from
    the pairs' pentanomial results as fishtest does. Games are written to a PGN as they
    finish; Ctrl-C stops the match and its engines, keeping the finished games."""
    import sys

    from invoke.exceptions import Exit

    from podcycle.cli import emit_json
    from podcycle.match import format_summary, prepare, run_match
    from podcycle.signals import restore_signals, trap_signals

    under_test, rival, config = prepare(
        # Numbers arrive as text (None defaults) and are checked by prepare, naming the flag:
        # an int default would make Invoke convert them itself, with a traceback for "abc".
        model=model, run_id=run, opponent=opponent, games=games, openings=openings,
        concurrency=concurrency, tc=tc, max_moves=max_moves, resign=resign, draw=draw,
        move_timeout=move_timeout, sprt=sprt, pgn=pgn, seed=seed,
        artifacts_dir=settings(c).artifacts_dir)
    print(f"{under_test.name} vs {rival.name}: {config.games} games, tc {config.tc.text}, "
          f"concurrency {config.concurrency}, PGN {config.pgn}", file=sys.stderr, flush=True)
    # SIGTERM (a kill, a cancelled job) ends the match as Ctrl-C does: every engine stopped,
    # the finished games kept and summed up, exit 130.
    previous = trap_signals()
    try:
        # A line names the game's opening, from the book's own text: shown, never obeyed.
        result = run_match(under_test, rival, config,
                           progress=lambda line: print(printable(line), file=sys.stderr,
                                                       flush=True))
    finally:
        restore_signals(previous)
    summary = result.summary()
    if json:
        emit_json(summary)
    else:
        print(format_summary(summary), flush=True)
    if result.interrupted:
        print(f"interrupted: {len(result.games)} finished games kept in {config.pgn}",
              file=sys.stderr)
        raise Exit(code=130)
