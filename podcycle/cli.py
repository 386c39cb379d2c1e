"""Helpers the task modules share: settings from flags, errors to exit codes, output."""

from __future__ import annotations

import ast
import errno
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import invoke

from podcycle.config import Settings, output_reader_gone, parse_number, resolve
from podcycle.errors import PodCycleError
from podcycle.redact import escaped, holds_secret, install_logging_filter, printable, redact

if TYPE_CHECKING:
    from podcycle.runpod.client import RunPodClient

# One set of short flags, the same meaning in every task (README "Short flags"). Invoke's
# automatic ones took the first free letter, so -r meant --resume in one task and --run-id
# in another. Every other flag is long only.
SHORT_FLAGS = {
    "json": "j",
    "run_id": "r",
    "backend": "b",
    "dataset_dir": "d",
    "epochs": "e",
    "template_name": "t",
    "gpu_type_id": "g",
    "cloud": "c",
    "name": "n",
    "limit": "l",
    "wait": "w",
}


# An optional positional argument that was not given reaches the task as this value.
class _Absent(str):
    """The value of an optional positional argument left out: "" as before, and yet not the
    same as an empty one given (`inv pod.cost ""`, `--pod-id "$POD"` with POD unset), which
    is refused as any empty flag is."""


ABSENT = _Absent("")


HELP_WORDS = ("-h", "--help")


def _patch_the_parser() -> None:
    """What Invoke's parser does at the end of a task's arguments and flags, done the
    project's way. Invoke has no optional positional arguments (`inv pod.cost [ID]`): it
    refuses to finish a task whose positional argument is missing, so the arguments a task
    marks optional get the value ABSENT first. `--help` taken as a positional argument
    (`inv runs.compare --help`) shows the task's help. A required positional that is missing,
    a flag without its value, a switch given a value (`--json=1`), a word that is no task or
    flag and `--help` of no task are refused saying what they are and how to give them
    (Invoke's own lines named only a parameter, printed its internal record, or said `No
    idea what 'x' is!`)."""
    from invoke.parser.parser import ParseMachine as Parser

    if getattr(Parser.complete_context, "_podcycle", False):
        return
    original = Parser.complete_context

    def complete_context(self: Any) -> None:
        if self.context:
            positional = self.context.positional_args
            if any(arg.value in HELP_WORDS for arg in positional) and self.initial and \
                    "--help" in self.initial.flags:
                # As Invoke does for a --help after a task's arguments: the task's help.
                self.initial.flags["--help"].value = self.context.name
                for arg in positional:
                    if arg.value is None or arg.value in HELP_WORDS:
                        arg.set_value(ABSENT, cast=False)  # str() would make it a plain ""
            for arg in positional:
                if getattr(arg, "optional_positional", False) and arg.value is None:
                    arg.set_value(ABSENT, cast=False)
            missing = self.context.missing_positional_args
            if missing:
                self.error(missing_positionals(self.context.name, positional, missing))
        original(self)

    complete_context._podcycle = True  # type: ignore[attr-defined]
    Parser.complete_context = complete_context
    original_flag = Parser.complete_flag

    def complete_flag(self: Any) -> None:
        flag = self.flag
        unvalued = flag is not None and flag.takes_value and not flag.optional and (
            not self.flag_got_value if flag.kind is list else flag.raw_value is None)
        if unvalued:  # a list flag (--env) too: Invoke let `--env` alone through, empty
            self.error(flag_without_value(flag, self.context))
        original_flag(self)

    Parser.complete_flag = complete_flag
    original_error = Parser.error

    def error(self: Any, msg: str) -> None:
        unknown = re.fullmatch(r"No idea what (.+) is!", msg)
        if unknown:
            msg = unknown_token(ast.literal_eval(unknown.group(1)), self.context,
                                self.contexts, self.initial)
        # Invoke prints this itself, past the task's own masking: an --api-key value the
        # parser took for a stray word (a task without the flag, the flag twice) showed, and
        # so did the configured key pasted where a pod id belongs.
        from podcycle.config import masked

        original_error(self, masked(msg))

    Parser.error = error
    original_switch, original_handle = Parser.switch_to_flag, Parser.handle

    def switch_to_flag(self: Any, flag: str, inverse: bool = False) -> None:
        original_switch(self, flag, inverse)
        self._podcycle_after = flag  # as given: `--no-local-smoke` of `--no-local-smoke=1`

    def handle(self: Any, token: str) -> None:
        # The token right after a switch that was given with `=`: Invoke split `--yes=false`
        # into `--yes` and `false`, then took `false` for the next argument (a volume named
        # 'false', with --yes on) or a task ('1' is no task).
        after, self._podcycle_after = getattr(self, "_podcycle_after", None), None
        if after is not None and self.flag is not None and not self.flag.takes_value and \
                (after, token) in _EQUALS:
            self.error(switch_with_value(after, token, self.context))
        original_handle(self, token)

    Parser.switch_to_flag, Parser.handle = switch_to_flag, handle

    from invoke.parser.parser import Parser as ArgvParser

    original_parse_argv = ArgvParser.parse_argv

    def parse_argv(self: Any, argv: list[str]) -> Any:
        # Invoke splits `--json=1` into `--json` and `1` before it knows --json is a switch,
        # then refused `1` as an unknown task: remember which values came with an `=`.
        _EQUALS.clear()
        _EQUALS.update(tuple(token.split("=", 1)) for token in argv
                       if token.startswith("-") and "=" in token)
        _ARGV[:] = argv
        return original_parse_argv(self, argv)

    ArgvParser.parse_argv = parse_argv

    from invoke.exceptions import ParseError
    from invoke.program import Program

    original_parse_tasks = Program.parse_tasks

    def parse_tasks(self: Any) -> None:
        # inv's own switches (`inv --echo=1 runs.list`) are parsed before the tasks are
        # loaded, so before these patches: Invoke split the token and left `1` as a task.
        unparsed = self.core.unparsed
        flags = self.initial_context.flags  # a Lexicon: `-e` is an alias of `--echo`
        for token in self.argv[1:] if unparsed else []:
            if not token.startswith("-") or "=" not in token:
                continue
            given, value = token.split("=", 1)
            if given in flags and not flags[given].takes_value and value == unparsed[0]:
                from podcycle.config import masked

                raise ParseError(masked(switch_with_value(given, value, None)))
        original_parse_tasks(self)

    Program.parse_tasks = parse_tasks

    original_cleanup = Program.parse_cleanup

    def parse_cleanup(self: Any) -> None:
        from invoke.exceptions import Exit

        from podcycle.config import masked

        wanted = self.args.help.value
        if isinstance(wanted, str) and wanted not in self.parser.contexts:
            # `inv --help runs.lst`: Invoke said `No idea what 'runs.lst' is!`.
            raise ParseError(masked(unknown_token(wanted, None, self.parser.contexts)))
        try:
            original_cleanup(self)
        except Exit as exc:  # `inv --list KEY`: "Sub-collection 'KEY' not found!"
            if not exc.message:
                raise
            raise Exit(masked(exc.message), code=exc.code) from None

    Program.parse_cleanup = parse_cleanup
    original_update = Program.update_config

    def update_config(self: Any, merge: bool = True) -> None:
        # Where Invoke loads the runtime config file: its -f/--config as it parsed them,
        # before the first task or after one (config_files checks only the former, as the
        # tasks load), the last one given winning. Past a task's name, `-f sweep.toml` was
        # Invoke's UnknownFileType traceback and `-f typo.yaml` ran without it in silence.
        from invoke.exceptions import Exit

        from podcycle import config_files
        from podcycle.config import masked

        given = self.args.config.value
        problem = config_files.file_problem(
            given if given is not None else os.environ.get("INVOKE_RUNTIME_CONFIG"),
            from_flag=given is not None)
        if problem:
            owner = next((ctx.name for ctx in self.tasks if "--config" in ctx.flags), None)
            remedy = (f"-f is inv's own settings file; {owner} takes its file as --config FILE"
                      if owner and given is not None and not any(
                          token.split("=", 1)[0] == "--config" for token in _ARGV)
                      else config_files.REMEDY_FLAG if given is not None
                      else config_files.REMEDY_VARIABLE)
            raise Exit(masked(f"error: {problem}\n  → {remedy}"), code=2)
        original_update(self, merge)

    Program.update_config = update_config


# `--flag=value` pairs of the argv being parsed (see parse_argv above).
_EQUALS: set[tuple[str, ...]] = set()
_ARGV: list[str] = []  # the command line being parsed, for what a refusal can tell of it


def switch_with_value(given: str, value: str, context: Any) -> str:
    """The refusal of `--json=1`: a switch (`given` as typed: --json, -j, --no-local-smoke)
    takes no value; it does its part when written alone."""
    task = getattr(context, "name", None)
    return (f"error: {given}" + (f" of inv {task}" if task else "")
            + f" is a switch and takes no value (got {given}={value})\n"
            f"  → write {given} alone, or leave it out")


def _long_flags(context: Any) -> list[str]:
    return [name for name in getattr(context, "flags", {}) if name.startswith("--")]


def flag_without_value(flag: Any, context: Any) -> str:
    """The refusal of a flag given last, or before another flag, without its value."""
    name, metavar = flag.name.replace("_", "-"), flag.name.replace("-", "_").upper()
    task = context.name if context is not None and any(
        known is flag for known in context.flags.values()) else None
    return (f"error: --{name}" + (f" of inv {task}" if task else "")
            + " needs a value, none was given\n"
            f"  → e.g. --{name} {metavar}; inv --help{f' {task}' if task else ''} for the rest")


def _flag_given_twice(token: str, context: Any) -> str | None:
    """The flag `token` is the value of, when that flag came earlier in the command line
    too (`--workers 1 --workers 2`, `--workers=1 --workers=2`), else None. A flag meant to
    repeat (a list, as --env) is not: the stray word is what is wrong there."""
    flags = getattr(context, "flags", None) or {}
    seen: set[str] = set()
    at = 0
    while at < len(_ARGV):
        word = _ARGV[at]
        known = flags.get(word)
        if word.startswith("--") and "=" in word:
            (flag, value), at = word.split("=", 1), at + 1
        elif known is not None and not known.takes_value:  # a switch: the next word is not its
            seen.add(word)
            at += 1
            continue
        elif word.startswith("-") and at + 1 < len(_ARGV):
            flag, value, at = word, _ARGV[at + 1], at + 2
        else:
            at += 1
            continue
        argument = flags.get(flag)
        if value == token and flag in seen and getattr(argument, "kind", None) is not list:
            return flag
        seen.add(flag)
    return None


def unknown_token(token: str, context: Any, contexts: Any, initial: Any = None) -> str:
    """The refusal of a word `inv` cannot place: a flag the task (or inv) does not have, or a
    task that does not exist, with the nearest names."""
    import difflib

    task = getattr(context, "name", None)
    if token.startswith("-"):
        flag = token.split("=")[0]
        near = difflib.get_close_matches(flag, _long_flags(context) + _long_flags(initial),
                                         n=2, cutoff=0.75)
        return ((f"error: inv {task} has no flag {flag}" if task
                 else f"error: inv has no option {flag}")
                + (f" (did you mean {' or '.join(near)}?)" if near else "")
                + f"\n  → inv --help{f' {task}' if task else ''} lists its "
                + ("flags" if task else "options; inv --list the tasks"))
    twice = _flag_given_twice(token, context)
    if twice:  # Invoke took the second value for a task: "'2' is no task"
        return (f"error: {twice} is given twice{f' to inv {task}' if task else ''}\n"
                f"  → give it once")
    if any(name.startswith(f"{token}.") for name in contexts):
        return (f"error: {token!r} is a group of tasks, not a task\n"
                f"  → inv --list {token} shows them")
    near = difflib.get_close_matches(token, [name for name in contexts if "." in name], n=3,
                                     cutoff=0.6)
    takes = "no more arguments" if context is not None and context.positional_args \
        else "no positional argument"
    what = (f"{token!r} is no task, and inv {task} takes {takes}" if task
            else f"no task named {token!r}")
    return (f"error: {what}" + (f" (did you mean {' or '.join(near)}?)" if near else "")
            + "\n  → inv --list shows the tasks" + (f"; inv --help {task} its arguments"
                                                     if task else ""))


def missing_positionals(task_name: str, positional: Sequence[Any], missing: Sequence[Any]
                        ) -> str:
    """The refusal of `inv TASK` without its required positional arguments (exit 1, as for
    every argument Invoke cannot parse): what each missing one is, and how to give them."""
    def meaning(arg: Any) -> str:
        text = (arg.help or "").removesuffix(" (required)")
        return f"{arg.name.upper()}, {text}" if text else arg.name.upper()

    required = [arg for arg in positional if not getattr(arg, "optional_positional", False)]
    usage = " ".join(arg.name.upper() for arg in required)
    flags = " ".join(f"--{arg.name.replace('_', '-')} {arg.name.upper()}" for arg in required)
    return (f"error: inv {task_name} needs {', and '.join(meaning(arg) for arg in missing)}\n"
            f"  → e.g. inv {task_name} {usage} (or {flags}); inv --help {task_name} for the "
            "rest")


class _Argument(invoke.parser.Argument):
    """An invoke Argument that copies fast: invoke deep-copies every task's arguments for
    each parse, and with ~70 tasks that generic deepcopy was half of `inv --list`'s own
    time. Names, help and defaults are immutable; only a list value needs its own copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Argument:
        import copy

        clone = copy.copy(self)
        for name in ("_value", "raw_value"):
            value = getattr(self, name, None)
            if isinstance(value, list):
                setattr(clone, name, list(value))
        memo[id(self)] = clone
        return clone


class PodCycleTask(invoke.Task):
    """A task with the project's fixed short flags, whose positional arguments never swallow
    --help (`inv pod.status --help` shows the help, not a request for pod '--help'), and
    which may have optional positional arguments (`optional=[...]` names them; absent, they
    arrive as ABSENT)."""

    def __init__(self, *args: Any, optional_positional: Any = (), **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        self.optional_positional = tuple(optional_positional)
        if self.optional_positional:
            kwargs["positional"] = [*(kwargs.get("positional") or []),
                                    *self.optional_positional]
        _patch_the_parser()
        super().__init__(*args, **kwargs)

    def get_arguments(self, *args: Any, **kwargs: Any) -> list[Any]:
        arguments = super().get_arguments(*args, **kwargs)
        for argument in arguments:
            argument.__class__ = _Argument
            if argument.name in self.optional_positional:
                argument.optional_positional = True
        return arguments

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short and short not in taken_names:
            opts["names"].append(short)
        return opts

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        values = list(args[1:]) + [kwargs.get(name) for name in self.positional]
        if any(value in ("-h", "--help") for value in values):
            import subprocess

            namespace = self.body.__module__.rsplit(".", 1)[-1]
            name = f"{namespace}.{self.name.replace('_', '-')}"
            code = subprocess.run([sys.executable, "-m", "invoke", "--help", name]).returncode
            raise invoke.exceptions.Exit(code=code)
        refused = empty_flag(kwargs, self.positional, self.optional_positional) or \
            secret_argument(dict(zip(self.positional, args[1:], strict=False)) | kwargs)
        if refused:
            raise invoke.exceptions.Exit(refused, code=2)
        return super().__call__(*args, **kwargs)


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke.task with PodCycleTask."""
    return invoke.task(*args, klass=PodCycleTask, **kwargs)


def number(flag: str, value: Any, kind: type = int, *, minimum: float | None = None,
           maximum: float | None = None, example: float | None = None) -> Any:
    """A numeric flag's value (None when not given), or a one-line error naming the flag:
    not a number, nan/inf, below `minimum` or above `maximum`. `flag` is the name without
    dashes; the remedy suggests `example` (default 1) brought within the bounds. The same
    check as settings from the environment and invoke.yaml (podcycle.config.parse_number)."""
    return parse_number(f"--{flag}", value, kind, minimum=minimum, maximum=maximum,
                        example=example)


def settings(ctx: Any, **flags: Any) -> Settings:
    section = ctx.config.get("podcycle", {}) if ctx is not None else {}
    return resolve(flags, dict(section), config_files=runtime_file_settings(ctx))


def runtime_file_settings(ctx: Any) -> dict[str, str]:
    """The podcycle settings that Invoke's -f file gives, each to that file's name: a value
    refused from it was said to be "in invoke.yaml", a file the user never gave."""
    config = getattr(ctx, "config", None)
    path, loaded = getattr(config, "_runtime_path", None), getattr(config, "_runtime", None)
    section = loaded.get("podcycle") if path and isinstance(loaded, dict) else None
    if not isinstance(section, dict):
        return {}
    from podcycle.redact import printable

    return {name: f"{printable(str(path))} (-f)" for name in section}


def runpod_client(ctx: Any, backend: str | None = None, api_key: str | None = None
                  ) -> RunPodClient:
    """The RunPod client a task talks to: its settings resolved, its backend connected (the
    local RunPod started when that is the backend)."""
    from podcycle.backend import connect

    return connect(settings(ctx, backend=backend, api_key=api_key)).client


def _escape_unencodable(error: UnicodeError) -> tuple[str, int]:
    """What the terminal cannot encode, as printable() writes it: `\\u5f20`, and a byte that
    was not text in the locale (a surrogate) as the byte, `\\xc3`."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return escaped(error.object[error.start:error.end]), error.end


def standard_streams() -> None:
    """`inv cycle.full-smoke >&-` (or a daemon that closed them): Python starts with
    sys.stdout None, the pod's streamed log had nowhere to go and the cycle failed as a lost
    SSH connection; and the next file opened takes the free descriptor, so a child's output
    would land in it (a run's state file). Each of 0, 1 and 2 found closed gets /dev/null, as
    daemons do: what the user discarded stays discarded, and nothing else is written to."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, buffering=1, closefd=False))
    # A terminal whose encoding cannot show a character (a teammate's pod named in CJK on a
    # Latin-1 terminal, the help's arrows under LC_ALL=C with PYTHONUTF8=0) gets its escape
    # (`\u5f20`), as printable() writes a control character: the table that shows what
    # bills is never lost to a UnicodeEncodeError.
    import codecs

    codecs.register_error("podcycle-escape", _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="podcycle-escape")
        except (AttributeError, ValueError, OSError):  # not a text file (a test's stand-in)
            pass
    if not isinstance(sys.stdout, WatchedOutput):
        sys.stdout = WatchedOutput(sys.stdout)


class WatchedOutput:
    """stdout, remembering the errno of a write or flush of its that failed (`> log` on a
    full disk, or past `ulimit -f`): such an OSError names no file, and without this the
    error blamed a path (PYTHONUNBUFFERED=1 loses the text at once, so flushing again to
    find out tells nothing). Everything else is stdout's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.failed: int | None = None

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self.failed = exc.errno
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self.failed = exc.errno
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def output_failure(exc: BaseException) -> PodCycleError | None:
    """What to say when `exc` is stdout's own write failing for want of room (a full disk,
    a quota, a file-size limit under `> FILE`); None for anything else. The exit's own flush
    of what stdout still holds then goes to /dev/null, not into a second error."""
    if not isinstance(exc, OSError) or exc.filename is not None or \
            exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or \
            getattr(sys.stdout, "failed", None) is None:
        return None
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return PodCycleError(
        f"the output could not be written ({exc.strerror or exc})",
        "a file-size limit stopped it (ulimit -f): raise it, or send the output elsewhere"
        if exc.errno == errno.EFBIG else
        "free space where it goes (> FILE), or send it elsewhere")


def refuse_a_deleted_working_folder() -> None:
    """Exit 1 with a line when the working folder no longer exists (deleted under the
    shell, its disk unmounted): the .env and relative paths are read from it."""
    try:
        os.getcwd()
    except FileNotFoundError:
        sys.stderr.write("error: the folder this command runs in no longer exists (deleted, "
                         "or its disk unmounted)\n  → cd to a folder that exists (the "
                         "project's, for its .env) and run it again\n")
        raise SystemExit(1) from None


def quiet_broken_pipe() -> None:
    """`inv --list | head`, `inv runs.list | head -3`: the reader closes the pipe and the next
    print raises BrokenPipeError, which reached the user as Python's traceback (from
    Invoke's own --list and `--help TASK` too; not from a bare `inv --help` or `--version`,
    which Invoke answers before it loads the tasks). When stdout or stderr is a pipe its
    reader has closed, that is the reader's choice: exit 1 in silence, as Python's
    documentation advises. Any other BrokenPipeError (a socket, a child's pipe) keeps its
    traceback."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        full = output_failure(exc)  # `inv --list > /dev/full`: Invoke's own print
        if full is not None:
            sys.stderr.write(f"error: {printable(full.render(), lines=True)}\n")
            return
        if not (issubclass(kind, BrokenPipeError) and output_reader_gone()):
            if previous is not sys.__excepthook__:
                previous(kind, exc, tb)
                return
            # A traceback (POD_CYCLE_DEBUG=1, or a bug) names paths and values a key may
            # be among (a folder named after it): masked like every other line.
            import traceback

            try:
                sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))
                sys.stderr.flush()
            except Exception:  # noqa: BLE001 - the plain one, rather than none
                previous(kind, exc, tb)
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):  # the exit's flush must not fail again
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass

    sys.excepthook = hook


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into a clean message and a non-zero exit (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from invoke.exceptions import Exit

        if os.environ.get("POD_CYCLE_DEBUG") == "1":
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                                format="%(asctime)s %(name)s %(message)s")
        install_logging_filter()
        from podcycle.config import masked

        try:
            return func(*args, **kwargs)
        except PodCycleError as exc:
            # masked: a refusal before the task resolved its settings (a flag's value that is
            # the configured key, `--tail KEY`) knows the key only this way.
            raise Exit(f"error: {printable(masked(exc.render()), lines=True)}",
                       code=exc.exit_code) from None
        except OSError as exc:
            if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                # `> log` on a full disk: stdout, not a path of ours.
                full = output_failure(exc) or PodCycleError(exc.strerror or "the disk is full",
                                                            _PATH_REMEDIES[exc.errno])
                raise Exit(f"error: {printable(full.render(), lines=True)}", code=1) from None
            if exc.filename is None or os.environ.get("POD_CYCLE_DEBUG") == "1":
                raise  # a socket or process error (not a path the user gave), or debugging
            raise Exit(f"error: {printable(masked(path_error(exc).render()), lines=True)}",
                       code=1) from None
        except KeyboardInterrupt:
            # Ctrl-C where the task has no words of its own for it (in its imports, a listing,
            # a comparison): Invoke exited 1 in silence, as if it had failed.
            raise Exit("interrupted: the command stopped before it finished", code=130) \
                from None
        except RuntimeError as exc:
            # Path.resolve() on a symbolic link loop (a --local-dir, POD_CYCLE_LOCAL_DIR or
            # another folder setting), as Python 3.11 raises it: 'Symlink loop from ...'.
            loop = re.fullmatch(r"Symlink loop from (.+)", str(exc))
            if loop is None:
                raise
            where = printable(masked(loop.group(1)))
            raise Exit(f"error: {where} is a loop of symbolic links, so it leads nowhere\n"
                       "  → point the setting or flag at a real folder, or fix the link "
                       "(ls -l shows where it points)", code=1) from None

    return wrapper


# The task arguments that carry a secret on purpose.
SECRET_ARGUMENTS = ("api_key", "env", "password", "password_stdin")


def secret_argument(kwargs: dict[str, Any]) -> str | None:
    """The refusal of a task argument that is, or holds, a secret this machine is configured
    with (the RunPod key pasted as a run id, a pod name, a pod id, a folder): it was sent to
    RunPod as a pod's name, written into a run folder's name and state, and echoed where the
    mask does not reach (lowercased, cut in a table). Refused before anything, never shown."""
    from podcycle.config import register_written_secrets

    register_written_secrets()  # the environment's and .env's; --api-key's is registered
    for name, value in kwargs.items():
        if name in SECRET_ARGUMENTS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and holds_secret(item):
                flag = f"--{name.replace('_', '-')}"
                return (f"error: the value of {flag} is, or holds, a secret this machine is "
                        "configured with (the RunPod API key?), so it is not used: pasted in "
                        f"the wrong place?\n  → give {flag} what it names; the key goes in "
                        "--api-key, RUNPOD_API_KEY or the keyring")
    return None


def empty_flag(kwargs: dict[str, Any], positional: Sequence[str],
               optional: Sequence[str] = ()) -> str | None:
    """The refusal of an empty flag (`-n "$NAME"` with NAME unset), a mistake and never the
    default: a task's own flags too, not only the settings (`sweep.run -n ""` ran a whole
    sweep under a generated name, `data.import-pgn --out ""` wrote into the repository).
    An optional positional argument given empty too (`inv pod.cost ""` showed every pod's
    bill); one left out arrives as ABSENT, which is not refused. A required one is left to
    the task, which names what it is (`the volume name '' ...`)."""
    for name, value in kwargs.items():
        if name in positional and name not in optional:
            continue
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and not item.strip() and item is not ABSENT
               for item in values):
            flag = f"--{name.replace('_', '-')}"
            if name in positional:
                return (f"error: {name.upper()} (or {flag}) is empty\n"
                        "  → give it a value, or leave it out for its default")
            return (f"error: {flag} is empty\n"
                    f"  → give {flag} a value, or leave it out for its default")
    return None


# What to do about a path the system refused, by errno.
_PATH_REMEDIES = {
    errno.ENOTDIR: "a part of that path is a file, not a folder: give a path under a folder",
    errno.EISDIR: "that is a folder where a file belongs: give the file's path",
    errno.EEXIST: "a file is in the way: give a path where a folder can be made",
    errno.EACCES: "you may not read or write there: give a path you own (or fix its mode)",
    errno.EPERM: "you may not read or write there: give a path you own (or fix its mode)",
    errno.ENOENT: "check the path (and the flag or setting that names it)",
    errno.ENOSPC: "the disk is full: free space, or give a path on another disk",
    errno.EDQUOT: "your disk quota is used up: free space, or give a path on another disk",
    errno.EROFS: "that file system is read-only: give a path on a writable disk",
    errno.EFBIG: "a file-size limit stopped the write (ulimit -f): raise it (ulimit -f "
                 "unlimited), or give a path on another file system",
}


def path_error(exc: OSError) -> PodCycleError:
    """A file system error on a path that came from a flag or setting, as one line: what
    failed, on which path, and what to do (the last line of defence: checks before any
    pod exists catch the usual cases with the flag named)."""
    where = f"{exc.filename}" + (f" → {exc.filename2}" if exc.filename2 else "")
    return PodCycleError(f"{exc.strerror or type(exc).__name__}: {where}",
                         _PATH_REMEDIES.get(exc.errno or 0,
                                            "check the path and its permissions"))


def echo(text: str) -> None:
    """One line of output (stdout) that quotes the API or the account (a name, an id): known
    secrets masked, control characters shown as escapes, never obeyed by the terminal."""
    print(printable(redact(text)), flush=True)


def emit_json(data: Any) -> None:
    """JSON on stdout: known secrets redacted, secret-looking env values masked (the same
    podcycle.redact.scrub as the text output: env objects and env change records)."""
    from podcycle.redact import scrub

    text = json.dumps(scrub(data), indent=2, sort_keys=True, default=str)
    sys.stdout.write(redact(text) + "\n")
    sys.stdout.flush()


# The widest a table cell is shown (--json gives every value whole).
CELL_MAX = 200


def _cell(value: Any) -> str:
    # Masked before it is cut: a secret cut across the edge was shown but its last letters.
    text = "" if value is None else printable(redact(value))
    if len(text) > CELL_MAX:  # an API's 2 MB name must not pad every row of the table
        return f"{text[:CELL_MAX - 20]}… ({len(text):,} chars)"
    return text


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    # A cell may hold a name from the account or a text from the API: its control characters
    # are shown, never obeyed (an escape sequence, a line break that forges a row), and a
    # very long one is cut, saying so.
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        print(redact(line))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()
