"""Datasets: import PGN games, encode for training, and the numbers to check before a GPU."""

from podcycle.cli import emit_json, guarded, number, settings, task
from podcycle.redact import printable


def _progress_printer():
    """Progress lines on stderr: rewritten in place on a terminal, plain lines otherwise."""
    import sys

    live = sys.stderr.isatty()

    def show(text: str, final: bool = False) -> None:
        if live:
            sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    return show


@task(help={
    "pgn": "PGN file(s): .pgn, .pgn.gz or .pgn.zst; a glob (quote it) or several separated "
           "by commas; a file given twice (another spelling, a symlink, a copy) is read once",
    "out": "dataset folder to write (default: data/dataset/<name of the first file>)",
    "label": "played (the move played; default) or stockfish (Debian's engine at --depth)",
    "depth": "stockfish search depth with --label stockfish (default: 8)",
    "min_elo": "keep games whose players are both rated at least this (default: no filter)",
    "max_games": "stop after keeping this many games (default: all; 0 = all)",
    "skip_plies": "drop the first N plies of every game, e.g. the opening (default: 0)",
    "time_control": "keep only these speeds, comma-separated: ultrabullet, bullet, blitz, "
                    "rapid, classical, correspondence (Lichess categories; default: all)",
    "val_fraction": "share of games that go to val.jsonl; split by game (default: 0.1)",
    "seed": "seed of the split; the same seed gives the same files (default: 1)",
    "workers": "processes that parse games (default: all cores)",
    "overwrite": "replace the dataset already in --out (train.jsonl, val.jsonl, "
                 "import_report.json; a folder holding other files is refused; default: "
                 "refuse)",
    "json": "print the import report as JSON on stdout (default: a summary)",
})
@guarded
def import_pgn(c, pgn, out=None, label="played", depth=None, min_elo=None, max_games=None,
               skip_plies=None, time_control=None, val_fraction=None, seed=None, workers=None,
               overwrite=False, json=False):
    """Turn PGN games into a dataset (train.jsonl/val.jsonl) with import_report.json."""
    from pathlib import Path

    from chessbot.pgn_import import (
        ImportProblem,
        Options,
        format_progress,
        run_import,
        split_inputs,
    )
    from podcycle.config import say
    from podcycle.errors import ConfigError, PodCycleError

    patterns = split_inputs(pgn)
    if not patterns:
        raise ConfigError("no PGN file given", "pass a file or a glob: inv data.import-pgn "
                          "'games/*.pgn.zst' --out data/dataset/mine")
    name = Path(patterns[0]).name.split(".")[0].replace("*", "all") or "games"
    out = Path(out) if out else Path("data/dataset") / name
    from podcycle.redact import has_control, printable

    if has_control(str(out)):  # refused later by every dataset check, and a garbled output
        raise ConfigError(f"--out '{printable(str(out))}' holds a control character (a line "
                          "break, a tab or an escape): the dataset could not be pushed or "
                          "trained under that path", "pick a plain path, e.g. --out "
                          "data/dataset/mine")
    depth = number("depth", depth, minimum=1, maximum=40, example=8)  # refused before a note
    if depth is not None and label != "stockfish":  # taken, and nothing searched at it
        say(f"warning: --depth is stockfish's search depth, and --label is {label!r}: the "
            "played moves need no search, so --depth changes nothing (add --label stockfish "
            "to label with the engine)")
    if time_control is not None and not any(t.strip() for t in time_control.split(",")):
        raise ConfigError(f"--time-control {time_control!r} names no speed",
                          "e.g. --time-control blitz,rapid (or leave it out for every speed)")
    vf = number("val-fraction", val_fraction, float, example=0.1)
    options = Options(
        label=label, depth=depth or 8,
        min_elo=number("min-elo", min_elo, minimum=0, maximum=4000, example=1800) or 0,
        max_games=number("max-games", max_games, minimum=0, maximum=10**9, example=1000) or 0,
        skip_plies=number("skip-plies", skip_plies, minimum=0, maximum=1000, example=8) or 0,
        time_control=tuple(t.strip().lower() for t in (time_control or "").split(",")
                           if t.strip()),
        val_fraction=0.1 if vf is None else vf,
        seed=number("seed", seed) if seed is not None else 1,
        workers=number("workers", workers, minimum=1, maximum=1024) or 0)
    show = _progress_printer()
    from podcycle.signals import interruptible

    # SIGTERM too: the temporary files go on the way out.
    with interruptible(f"the import into {out} stopped before it finished; its temporary "
                       "files are removed",
                       f"run it again (add --overwrite if {out} holds an older dataset)"):
        try:
            report = run_import(patterns, out, options, overwrite,
                                lambda p: show(format_progress(p), p["final"]), say)
        except ImportProblem as exc:
            raise PodCycleError(f"import refused: {exc}", exc.remedy, code=2) from None
    if json:
        emit_json(report)
        return
    print(f"wrote {out}: {report['positions']['train']:,} train / "
          f"{report['positions']['val']:,} val positions from {report['games_kept']:,} of "
          f"{report['games_read']:,} games ({report['label']} labels)")
    for reason, entry in report["skipped_by_reason"].items():
        if entry["count"]:
            print(f"  skipped {entry['count']:,} malformed ({reason}); first at {entry['first']}")
    for reason, count in report["filtered_by_reason"].items():
        if count:
            print(f"  filtered {count:,} ({reason})")
    for reason, count in report["positions_dropped"].items():
        if count:
            print(f"  left out {count:,} positions ({reason})")
    import shlex

    quoted = shlex.quote(str(out))  # a hint to paste: `imp 3` was two words
    say(f"next: inv data.stats {quoted}   then: inv cycle.full-smoke --dataset-dir {quoted}")


@task(help={
    "dataset_dir": "dataset folder (default: RUNPOD_DATASET_DIR, data/dataset/_smoke_runpod)",
    "workers": "processes that encode (default: all cores)",
    "cache_dir": "folder where encodings are cached, created if missing; a file or an "
                 "unwritable place is refused (default: DATASET_DIR/../.encoded_cache, where "
                 "the trainer and local validation look)",
    "json": "print {positions, bytes, seconds, path} as JSON on stdout (default: a summary)",
})
@guarded
def encode(c, dataset_dir=None, workers=None, cache_dir=None, json=False):
    """Encode a dataset once into compact memory-mapped files (cached by content)."""
    from pathlib import Path

    from podcycle.dataset import encode as encode_dataset

    folder = Path(settings(c).dataset_dir if dataset_dir is None else dataset_dir)
    workers = number("workers", workers, minimum=1, maximum=1024)
    show = _progress_printer()

    def progress(split: str, done: int, total: int) -> None:
        show(f"encoding {split}: {100 * done / max(1, total):.0f}% of {total / 1e6:.1f} MB",
             done == total)

    from podcycle.signals import interruptible

    with interruptible(f"the encoding of {folder} stopped before it finished; nothing "
                       "half-done is cached", "run it again: the splits already encoded are "
                       "kept"):
        data = encode_dataset(folder, cache_dir, workers, progress=progress)
    path = data.splits["train"].path.parent
    result = {"positions": data.positions, "bytes": data.nbytes,
              "seconds": round(data.seconds, 2), "path": str(path), "cached": data.cached,
              "bytes_per_position": round(data.nbytes / max(1, data.positions), 1),
              "splits": {name: {"positions": len(s), "path": str(s.path)}
                         for name, s in data.splits.items()}}
    if json:
        emit_json(result)
        return
    how = ("already encoded (cache)" if data.cached else
           f"encoded in {data.seconds:.1f}s ({data.positions / max(data.seconds, 1e-9):,.0f} "
           "positions/s)")
    print(f"{folder}: {data.positions:,} positions, {data.nbytes / 1e6:.1f} MB "
          f"({result['bytes_per_position']} bytes/position), {how}; cache {path}")


@task(optional_positional=["dataset_dir"], help={
    "dataset_dir": "dataset folder, as an argument or -d (default: RUNPOD_DATASET_DIR, "
                   "data/dataset/_smoke_runpod)",
    "workers": "processes that encode for the legal-move counts (default: all cores)",
    "json": "print the figures as JSON on stdout (default: a summary)",
})
@guarded
def stats(c, dataset_dir=None, workers=None, json=False):
    """Positions, games, labels, move spread, duplicates and the random-move baseline."""
    from pathlib import Path

    from podcycle import dataset
    from podcycle.signals import interruptible

    folder = Path(dataset_dir or settings(c).dataset_dir)
    workers = number("workers", workers, minimum=1, maximum=1024)
    with interruptible(f"the statistics of {folder} stopped before they finished",
                       "run it again: what the encoding finished is cached"):
        result = dataset.stats(folder, workers)
    if json:
        emit_json(result)
        return
    print(f"dataset {folder}")
    for name, split in result["splits"].items():
        games = f", {split['games']:,} games" if split["games"] else ""
        print(f"  {name:5} {split['positions']:>10,} positions{games}; "
              f"{split['legal_moves_mean']} legal moves on average")
    print(f"  labels        {printable(result['label_source'])}")
    if result["games_in_both_splits"] is not None:
        print(f"  games in both splits  {result['games_in_both_splits']}")
    print(f"  duplicates    {100 * result['duplicate_rate']:.2f}% of positions repeat one "
          "seen before")
    top = ", ".join(f"{m['move']} {100 * m['share']:.1f}%" for m in result["moves"]["top"])
    print(f"  moves         {result['moves']['distinct']:,} distinct, "
          f"{result['moves']['entropy_bits']} bits of entropy; most played: {top}")
    print(f"  baseline      a random legal move is right {100 * result['random_legal_top1']:.2f}%"
          " of the time on val: a trained model must beat that by a wide margin")
