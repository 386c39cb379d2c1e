"""Helpers the task modules share: settings from flags, errors to exit codes, output."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from podcycle.config import Settings, resolve
from podcycle.errors import PodCycleError
from podcycle.redact import install_logging_filter, redact


def settings(ctx: Any, **flags: Any) -> Settings:
    section = ctx.config.get("podcycle", {}) if ctx is not None else {}
    return resolve(flags, dict(section))


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into a clean message and a non-zero exit (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from invoke.exceptions import Exit

        if os.environ.get("POD_CYCLE_DEBUG") == "1":
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                                format="%(asctime)s %(name)s %(message)s")
        install_logging_filter()
        try:
            return func(*args, **kwargs)
        except PodCycleError as exc:
            raise Exit(f"error: {redact(exc.render())}", code=exc.exit_code) from None

    return wrapper


def emit_json(data: Any) -> None:
    """JSON on stdout: known secrets redacted, secret-looking env values masked."""
    from podcycle.redact import scrub_pod

    text = json.dumps(scrub_pod(data), indent=2, sort_keys=True, default=str)
    sys.stdout.write(redact(text) + "\n")
    sys.stdout.flush()


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        print(redact(line))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()
