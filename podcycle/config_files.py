"""Invoke's config files (invoke.yaml and its kin) as one-line errors, never as their text.

Invoke reads and merges its config files itself, outside any task: the system file, the
user's (`~/.invoke.yaml`), the project's (`invoke.yaml` beside `tasks/`) and a runtime one
(`-f FILE` or INVOKE_RUNTIME_CONFIG). A file it cannot parse, or a `podcycle:` that is a value
in one file and a section in another, ends `inv` with Invoke's traceback, and the merge
error's text holds both sides whole: the `podcycle:` section of the other file, with anything
a user put in it (a key, where one was put against the README's advice). `install` replaces
those tracebacks, and only those (raised from Invoke's config loader), with a line that names
the file and the place: the project and runtime files, and their merge with the user's and
system's. Invoke reads the user's and system's files before it imports `tasks/`, so an error
in those two alone is Invoke's own traceback (it prints no settings of pod-cycle's).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

SUFFIXES = (".yaml", ".yml", ".json")
REMEDY = "fix that file, or move it away to use the defaults (README: Settings)"
# A runtime config file's remedies: given by -f/--config, or by the variable.
REMEDY_FLAG = "give a config file's path, or leave -f out (README: Settings)"
REMEDY_VARIABLE = ("point INVOKE_RUNTIME_CONFIG at a config file, or unset it "
                   "(README: Settings)")


def install(project: Path, defaults: dict[str, Any]) -> None:
    """Make `sys.excepthook` turn a config file error into one line (exit 2); every other
    exception goes on to the hook that was there before. `defaults`: the `podcycle:`
    section the collection configures (tasks/__init__.py), the first layer of the merge."""
    previous = sys.excepthook
    problem = runtime_problem(sys.argv[1:], os.environ) if _run_by_invoke(sys.argv[0]) \
        else None
    if problem:  # Invoke would go on without it, or end in a traceback
        from podcycle.config import masked

        remedy = REMEDY_FLAG if _runtime_flag(sys.argv[1:]) is not None else REMEDY_VARIABLE
        sys.stderr.write(masked(f"error: {problem}\n  → {remedy}") + "\n")
        sys.stderr.flush()
        os._exit(2)

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        files = candidates(project, sys.argv[1:], os.environ)
        message = describe(exc, files, defaults) if from_invoke_config(tb) else None
        if message is None:
            previous(kind, exc, tb)
            return
        from podcycle.redact import redact

        sys.stdout.flush()
        sys.stderr.write(redact(f"error: {message}\n  → {REMEDY}") + "\n")
        sys.stderr.flush()
        os._exit(2)  # a ConfigError's code; nothing was started that needs cleaning up

    sys.excepthook = hook


def _run_by_invoke(program: str) -> bool:
    """The command line is inv's (`inv`, `invoke`, `python -m invoke`), not that of another
    program importing the tasks (pytest, whose own -f is --looponfail)."""
    path = Path(program)
    return path.name in ("inv", "invoke") or (path.name == "__main__.py"
                                               and path.parent.name == "invoke")


def from_invoke_config(tb: TracebackType | None) -> bool:
    """The exception went through Invoke's config loader (invoke/config.py): a JSON or YAML
    error anywhere else (a task's own bug) is not a config file's, and keeps its traceback."""
    loader = os.path.join("invoke", "config.py")
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(loader):
            return True
        tb = tb.tb_next
    return False


def candidates(project: Path, argv: list[str], environ: Any) -> list[Path]:
    """Invoke's config files in its merge order (later wins): system, user, project, runtime."""
    found: list[Path] = []
    for base in (Path("/etc/invoke"), Path("~/.invoke").expanduser(), project / "invoke"):
        found += [base.with_name(base.name + suffix) for suffix in SUFFIXES]
    runtime = _runtime_flag(argv) or environ.get("INVOKE_RUNTIME_CONFIG")
    if runtime:
        found.append(Path(runtime).expanduser())
    return found


def runtime_problem(argv: list[str], environ: Any) -> str | None:
    """What is wrong with the runtime config file (-f FILE or INVOKE_RUNTIME_CONFIG), or
    None: Invoke silently runs without one that does not exist (a typo goes unnoticed), and
    ends in a traceback on a folder or a name it cannot read as a config file."""
    flag = _runtime_flag(argv)
    return file_problem(flag, from_flag=True) if flag else \
        file_problem(environ.get("INVOKE_RUNTIME_CONFIG"), from_flag=False)


def file_problem(given: str | None, *, from_flag: bool = True) -> str | None:
    """runtime_problem of the path given (None: no runtime config file), by -f/--config or
    else by INVOKE_RUNTIME_CONFIG. The path is shown with its control characters escaped."""
    from podcycle.redact import printable

    if given is None:
        return None
    if not given:
        return ("-f/--config was given an empty path" if from_flag else
                "INVOKE_RUNTIME_CONFIG is set, and empty")
    real = Path(given).expanduser()
    shown = printable(str(real))  # an escape in the name never reaches the terminal raw
    if not real.exists():
        return f"{shown}: no such config file (given with -f/--config or INVOKE_RUNTIME_CONFIG)"
    if real.is_dir():
        return f"{shown} is a folder, not a config file"
    if real.suffix not in (*SUFFIXES, ".py"):
        return f"{shown}: Invoke reads config files ending in .yaml, .yml, .json or .py"
    return None


def _runtime_flag(argv: list[str]) -> str | None:
    """Invoke's own -f/--config, given before the first task name (a task's --config, as
    sweep.run's, is that task's)."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("-f", "--config") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if not arg.startswith("-"):
            return None  # a task name: what follows is the task's
        # inv's own flags that take a value (`inv -r tasks -f x.yaml`): the value is no task.
        index += 2 if arg in _CORE_VALUED or (
            arg in _CORE_OPTIONAL and index + 1 < len(argv)
            and not argv[index + 1].startswith("-")) else 1
    return None


# Invoke's core flags that take a value, and those that may (`inv --list pod`).
_CORE_VALUED = {"-c", "--collection", "-r", "--search-root", "-D", "--list-depth", "-F",
                "--list-format", "-T", "--command-timeout", "--hide",
                "--print-completion-script"}
_CORE_OPTIONAL = {"-h", "--help", "-l", "--list"}


def describe(exc: BaseException, files: list[Path], defaults: dict[str, Any]
             ) -> str | None:
    """One line for a config file error Invoke raised, or None for any other exception."""
    from invoke.config import AmbiguousMergeError
    from invoke.vendor.yaml import MarkedYAMLError, YAMLError

    if isinstance(exc, MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return (f"{mark.name} is not valid YAML: {exc.problem} "
                f"(line {mark.line + 1}, column {mark.column + 1})")
    if isinstance(exc, YAMLError | json.JSONDecodeError):
        return f"an Invoke config file is not valid YAML or JSON ({_brief(exc)}): {_listed(files)}"
    if isinstance(exc, AmbiguousMergeError):
        clash = first_clash(files, defaults)
        if clash is None:
            return ("Invoke could not merge its config files (a section in one is a single "
                    f"value in another): {_listed(files)}")
        path, key, wanted = clash
        return f"{path}: `{key}` must be {wanted}"
    if isinstance(exc, IsADirectoryError):  # `mkdir invoke.yaml`
        return f"{exc.filename} is a folder, not a config file"
    if isinstance(exc, UnicodeDecodeError):
        for path in files:
            offset = _undecodable(path)
            if offset is not None:
                return f"{path} is not UTF-8 text (a byte at offset {offset} cannot be read)"
    if isinstance(exc, AttributeError | TypeError):  # a file that is one value, not sections
        for path in files:
            data = _read(path)
            if data is not None and not isinstance(data, dict):
                return (f"{path} must hold sections (`podcycle:` and its indented settings), "
                        "not a single value")
    if isinstance(exc, TypeError | RecursionError):  # Invoke's env crawl of the merged files
        for path in files:
            problem = _odd_shape(_read(path))
            if problem:
                return f"{path}: {problem}"
    return None


def _odd_shape(data: Any, where: str = "", inside: tuple[int, ...] = ()) -> str | None:
    """What in a config file's data Invoke cannot walk: a key that is not a name (`1: 2`,
    a TypeError), or a YAML alias to a section it lies in (`a: &x {b: *x}`, endless)."""
    if isinstance(data, dict | list):
        if id(data) in inside:
            return (f"`{where}` refers to a section it lies in (a YAML alias, *name, to its "
                    "own &name), which no setting can hold")
        inside = (*inside, id(data))
        items = data.items() if isinstance(data, dict) else enumerate(data)
        for key, value in items:
            if isinstance(data, dict) and not isinstance(key, str):
                return (f"`{where + '.' if where else ''}{key!r}` is not a setting's name "
                        "(names are words, such as artifacts_dir)")
            problem = _odd_shape(value, f"{where}.{key}" if where else str(key), inside)
            if problem:
                return problem
    return None


def _undecodable(path: Path) -> int | None:
    """Where `path` stops being UTF-8, or None (no such file, or it decodes)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    except OSError:
        pass
    return None


def _brief(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}, line {exc.lineno}, column {exc.colno}"
    return type(exc).__name__


def _listed(files: list[Path]) -> str:
    present = [str(path) for path in files if path.is_file()]
    return ", ".join(present) or "none of " + ", ".join(str(path) for path in files)


def first_clash(files: list[Path], defaults: dict[str, Any]) -> tuple[Path, str, str] | None:
    """The first file (in merge order) whose value at some key is a section where the files
    before it (and Invoke's and pod-cycle's defaults) hold a single value, or the other way
    round: where Invoke's merge fails. Names the key, never a value."""
    from invoke import Config

    merged: dict[str, Any] = {**Config.global_defaults(), "podcycle": dict(defaults)}
    for path in files:
        data = _read(path)
        if not isinstance(data, dict):
            continue
        for key, kind in _clashes(merged, data):
            return path, key, kind
        _merge(merged, data)
    return None


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return json.loads(text)
        from invoke.vendor import yaml

        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - a file that cannot be read is not where it clashed
        return None


def _clashes(base: dict[str, Any], new: dict[str, Any], prefix: str = ""
             ) -> Iterator[tuple[str, str]]:
    for key, value in new.items():
        if key not in base:
            continue
        name = f"{prefix}{key}"
        if isinstance(base[key], dict) and isinstance(value, dict):
            yield from _clashes(base[key], value, f"{name}.")
        elif isinstance(base[key], dict):
            yield name, "a section (indented `name: value` lines), not a single value"
        elif isinstance(value, dict):
            yield name, "a single value, not a section"


def _merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
