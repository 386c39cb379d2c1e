"""Sweeps: an Optuna study whose trials are ordinary cycle runs, each on its own pod, K at a
time, under one budget (sweep.run, sweep.status, sweep.stop).

The study is Optuna's (GridSampler for a grid, TPE otherwise, MedianPruner when asked); it
lives in the sweep's folder, `<artifacts>/../sweeps/<name>/`, as Optuna's JournalStorage on a
JournalFileBackend: an append-only log, each write fsync'ed, so a kill -9 loses at most the
write in flight (a torn last line, which the next `--resume` cuts off before Optuna reads it).
Its lock is a kernel lock (flock) that dies with its holder, never a stale lock file. One
process drives a sweep at a time (a lock in the folder, as a run's).

Each trial runs `inv cycle.full-smoke` as a child process with RUNPOD_CYCLE_RUN_ID =
`<sweep>-t<number>`, so its run folder, report and spend guard are the normal ones; the
child writes its output to `trials/t<number>.log`, which the sweep follows for the trainer's
per-epoch line (pruning). The child does not depend on the sweep: a sweep killed with -9
leaves its trials running to their ends, each stopping its own pod.

Resume (`sweep.run --resume NAME`): finished trials stay as they are; a trial left RUNNING
by a dead sweep is settled from its run: a finished run gives its value; a run still driven
by a live process (its cycle outlived the sweep) is waited for; any other run is continued
with `cycle.full-smoke --resume` (only its missing steps run; its pod is reused or
restarted, never doubled, and stopped at the end).

The budget (--max-cost, max_cost): a trial's worst case is its GPU's price per hour times its
time bound (max_minutes); that is its share, which its pod's spend guard carries as
--max-cost, so even a dead host cannot overspend. A trial starts only when the spent (what
finished trials were billed), plus the running trials' worst cases, plus its own share stays
within the budget.

The sweep file and the budget's arithmetic are podcycle.sweep_config's, the report
podcycle.sweep_report's, sweep.status and sweep.stop podcycle.sweep_status's.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from podcycle import report
from podcycle import sweep_config as sc
from podcycle.config import Settings, key_for_children, say
from podcycle.errors import ConfigError, DatasetError, PodCycleError
from podcycle.owner_lock import OwnerLock
from podcycle.runs import (
    DRIVING_SWEEP,
    RunBusy,
    RunFolder,
    atomic_write,
    nearest_existing,
    write_refusal,
)
from podcycle.signals import handlers_to_trap, interrupt, restore_signals, trap_signals

# What a new sweep's start writes before its record (sweep.json): its lock, and the study's
# journal (and the journal's lock) as the study is created.
START_FILES = frozenset({".lock", "study.journal", ".study.journal.lock"})
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,55}")  # room for "-t<number>"
# The trainer's per-epoch line (chessbot.train), as the cycle streams it from the pod.
EPOCH_LINE = re.compile(r"\[train\] epoch (\d+)/(\d+)\b.*?val_loss=(\S+)\s+val_top1=(\S+)")
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
INTERRUPTED = 130


class SweepError(PodCycleError):
    pass


# What every reader of sweep.json takes for granted (sweep_status, the report, --resume).
META_SHAPE: dict[str, type | tuple[type, ...]] = {
    "name": str, "objective": str, "direction": str, "trials": int, "parallel": int,
    "params": list, "status": str, "artifacts_dir": str}
# Keys that may be null (a sweep without a budget), else a number: sweep.status formats them.
META_NUMBERS = ("budget", "share", "max_minutes")


class SweepBusy(PodCycleError):
    exit_code = 5


class SweepStarting(SweepBusy):
    """A sweep whose start is under way in process `pid`: its name claimed (its folder made
    and locked), its plan checked, its record (sweep.json) not yet written."""

    def __init__(self, folder: SweepFolder, pid: int) -> None:
        super().__init__(f"sweep {folder.name} is starting in pid {pid}: its plan is being "
                         "checked (datasets, the GPU's price), and it has no trial yet",
                         f"look again in a moment with inv sweep.status {folder.name}, or "
                         f"stop it with inv sweep.stop {folder.name}")
        self.pid = pid


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or sweep.stop): every trial was stopped; --resume continues. `billing`: the
    trials whose pod's stop failed (sweep_status.billing_trials), which may still bill."""

    def __init__(self, name: str, billing: list[str] | None = None) -> None:
        super().__init__(name)
        self.billing = billing or []


class SweepNotStarted(KeyboardInterrupt):
    """Ctrl-C (or sweep.stop) while a new sweep was starting, before its record or any trial:
    nothing was made, and its folder is gone, so its name is free again."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid sweep name {name!r}",
                          "use letters, digits, '.', '_' and '-' (no path separators), at "
                          "most 56")
    return name


def new_name() -> str:
    import secrets

    return time.strftime("sw-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)


def sweeps_root(settings: Settings) -> Path:
    """Where sweeps live: the sweeps_dir setting (POD_CYCLE_SWEEPS_DIR, in the environment,
    .env or invoke.yaml; checked as the settings resolve), else `sweeps/` beside the runs
    folder. It was read from the environment alone: a .env's went unseen."""
    from podcycle.config import check_folder

    if settings.sweeps_dir is not None:
        return settings.sweeps_dir
    root = settings.artifacts_dir.parent / "sweeps"
    check_folder(root, "default", "POD_CYCLE_SWEEPS_DIR")
    return root


def run_id_of(name: str, number: int) -> str:
    return f"{name}-t{number}"


# -- the sweep's folder ----------------------------------------------------------------------
class SweepFolder:
    def __init__(self, root: Path, name: str) -> None:
        self.name = validate_name(name)
        self.path = (root / name).resolve()
        self.meta_path = self.path / "sweep.json"
        self.journal = self.path / "study.journal"
        self.journal_lock = self.path / ".study.journal.lock"
        self.lock_path = self.path / ".lock"
        self.trials = self.path / "trials"
        self.reports = self.path / "reports"
        self.report = self.reports / "sweep.md"
        self.objective_png = self.reports / "objective_vs_params.png"
        self.curves_png = self.reports / "curves.png"
        self._lock = OwnerLock(self.lock_path)

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> dict[str, Any]:
        from podcycle.files import read_regular

        try:
            meta = json.loads(read_regular(self.meta_path))
        except FileNotFoundError:
            pid = self.starting_pid()
            if pid is not None:
                raise SweepStarting(self, pid) from None
            if self.killed_start():
                raise SweepError(f"sweep {self.name}'s start was killed before it made "
                                 f"anything (no trial, no pod; {self.path} holds no "
                                 "sweep.json)", "start it again with the same inv sweep.run "
                                 "command: it takes that folder over") from None
            # A name that names nothing is refused input (exit 2), as runs.show's is.
            raise SweepError(f"no sweep {self.name!r} under {self.path.parent}",
                             known_sweeps_hint(self.path.parent), code=2) from None
        except OSError as exc:  # a FIFO, a folder, no permission: never waited on
            raise SweepError(f"{self.meta_path} cannot be read ({exc.strerror})",
                             "fix or remove it (the sweep can no longer resume)") from None
        except (ValueError, RecursionError):
            raise SweepError(f"{self.meta_path} is not valid JSON",
                             "fix or remove it (the sweep can no longer resume)") from None
        wrong = ([] if isinstance(meta, dict) else ["the whole file"]) or [
            key for key, kind in META_SHAPE.items()
            if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool)] + [
            key for key in META_NUMBERS if meta.get(key) is not None and (
                not isinstance(meta[key], int | float) or isinstance(meta[key], bool))]
        if wrong:
            raise SweepError(f"{self.meta_path} is not a sweep's record (JSON of the wrong "
                             f"shape: {', '.join(wrong)})",
                             "fix or remove it (the sweep can no longer resume)")
        return meta

    def killed_start(self) -> bool:
        """Whether this is the folder of a start killed before its record (kill -9, a power
        cut): only what a start writes first (its lock, the study's journal), no sweep.json,
        and nobody holds its lock. Nothing was made (trials begin after the record)."""
        if not self._start_files_only():
            return False
        try:  # a live start's lock file is empty from its making to its lock: not a killed one
            record = json.loads(self.lock_path.read_text() or "{}")
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(record, dict) and bool(record.get("pid")) and not self.is_driven()

    def _without_record(self) -> bool:
        """The folder is there and holds no sweep.json (none at all: a damaged one is one)."""
        return self.path.is_dir() and not os.path.lexists(self.meta_path)

    def _start_files_only(self) -> bool:
        if not self._without_record():
            return False
        try:
            names = {entry.name for entry in self.path.iterdir()}
        except OSError:
            return False
        return ".lock" in names and names <= START_FILES

    def take_over_killed_start(self) -> bool:
        """Take the folder of a killed start (killed_start) for a new start of the name: its
        lock held, and what that start wrote removed. False when it is not one, or another
        start took it first (the lock decides between two)."""
        if not self.killed_start():
            return False
        try:
            self.lock()
        except SweepBusy:
            return False
        if not self._start_files_only():  # under the lock: a start may have written since
            self.unlock()
            return False
        for name in START_FILES - {".lock"}:
            (self.path / name).unlink(missing_ok=True)
        return True

    def starting_pid(self) -> int | None:
        """The process starting this sweep (its folder locked, no record yet), or None."""
        if not self._without_record():
            return None
        pid = (self.holder() or {}).get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    def save_meta(self, meta: dict[str, Any]) -> None:
        atomic_write(self.meta_path, json.dumps(meta, indent=2, sort_keys=True))

    def trial_log(self, number: int) -> Path:
        return self.trials / f"t{number}.log"

    def lock(self) -> None:
        holder = self._lock.acquire()
        if holder is not None:
            raise SweepBusy(f"sweep {self.name} is driven by another process (pid "
                            f"{holder.get('pid', 'unknown')})",
                            f"watch it with inv sweep.status {self.name}, or stop it with inv "
                            f"sweep.stop {self.name}")

    def unlock(self) -> None:
        self._lock.release()

    def is_driven(self) -> bool:
        return self._lock.held()

    def holder(self) -> dict[str, Any] | None:
        """The live process driving the sweep ({"pid", "since"}), or None."""
        return self._lock.holder()


def known_sweeps_hint(root: Path) -> str:
    names = sorted(p.parent.name for p in root.glob("*/sweep.json")) if root.is_dir() else []
    if not names:
        return f"no sweeps under {root}: start one with inv sweep.run --config config/sweep.toml"
    return "sweeps here: " + ", ".join(names[-8:])


# -- the study -------------------------------------------------------------------------------
class KernelLock:
    """The journal's lock for Optuna's JournalFileBackend: an flock the kernel frees when its
    holder dies (Optuna's own file locks outlive a kill -9 until their grace period)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.local = threading.Lock()

    def acquire(self) -> bool:
        import fcntl

        self.local.acquire()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor frees the flock
            self.fd = None
        self.local.release()


def cut_torn_tail(journal: Path) -> bool:
    """Cut an unfinished last line off the journal (a write a kill -9 interrupted): Optuna
    skips it when it is last, but refuses the whole log once a new line follows it."""
    try:
        size = journal.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(journal, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        handle.seek(0)
        keep = handle.read().rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def journal_storage(folder: SweepFolder) -> Any:
    """The study's journal, read: Optuna replays every line of it here. A damaged one (bytes
    that are not its JSON lines, an unknown operation, a line of the wrong shape) is a
    SweepError naming the file, not whatever Optuna's replay raised."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from podcycle.redact import printable

    try:
        return JournalStorage(JournalFileBackend(str(folder.journal),
                                                 lock_obj=KernelLock(folder.journal_lock)))
    except OSError:
        raise  # the file cannot be read (its owner, its disk): said as such, not "damaged"
    except Exception as exc:  # noqa: BLE001 - the replay of a damaged log raises anything
        what = printable(f"{type(exc).__name__}: {exc}")
        raise SweepError(
            f"the sweep's study log {folder.journal} is damaged, so its trials cannot be "
            f"read ({what[:160]})",
            f"put back a copy of it if you have one; else move {folder.path} away and run "
            "the sweep anew (the runs its trials made stay in the runs folder)") from None


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampler(meta: dict[str, Any]) -> Any:
    import optuna

    params = [sc.Param.from_dict(p) for p in meta["params"]]
    if sc.grid_combinations(params) is not None:
        class AskTellGrid(optuna.samplers.GridSampler):
            """Optuna's GridSampler; its after_trial calls study.stop(), which only
            study.optimize() allows: the sweep counts its trials itself."""

            def after_trial(self, *args: Any, **kwargs: Any) -> None:
                return None

        return AskTellGrid({p.name: p.values for p in params}, seed=meta.get("seed_sampler"))
    return optuna.samplers.TPESampler(seed=meta.get("seed_sampler"))


def _pruner(meta: dict[str, Any]) -> Any:
    import optuna

    if not meta.get("prune"):
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=meta["prune_startup_trials"],
                                       n_warmup_steps=meta["prune_warmup_epochs"])


def open_study(folder: SweepFolder, meta: dict[str, Any], *, create: bool) -> Any:
    import optuna

    quiet_optuna()
    kwargs = {"study_name": meta["name"], "storage": journal_storage(folder),
              "sampler": _sampler(meta), "pruner": _pruner(meta)}
    if create:
        return optuna.create_study(direction=meta["direction"], **kwargs)
    return optuna.load_study(**kwargs)


def suggest(trial: Any, param: sc.Param) -> Any:
    if param.kind in ("grid", "choices"):
        return trial.suggest_categorical(param.name, param.values)
    if param.kind == "int":
        return trial.suggest_int(param.name, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(param.name, param.low, param.high, log=param.log)


# -- a trial's run ---------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_argv(meta: dict[str, Any], params: dict[str, Any], *, resume: bool) -> list[str]:
    """`inv cycle.full-smoke` for one trial: its parameters over the sweep's base, its GPU,
    its share of the budget as the pod's spend guard. Never the API key (environment)."""
    values = {**meta["base"], **params}
    argv = [str(Path(sys.executable).parent / "inv"), "cycle.full-smoke"]
    if values.get("dataset"):
        argv += ["--dataset-dir", str(Path(values["dataset"]).expanduser().resolve())]
    if values.get("epochs"):
        argv += ["--epochs", str(values["epochs"])]
    extra = [f"{sc.PARAMS[name].flag}={_fmt(values[name])}" for name in sc.PARAMS
             if sc.PARAMS[name].train_arg and name in values]
    if extra:
        argv.append("--train-extra-args=" + " ".join(extra))
    gpu = meta.get("gpu") or {}
    if gpu.get("id"):
        argv += ["--gpu-type-id", gpu["id"]]
    if gpu.get("cloud"):
        argv += ["--cloud", gpu["cloud"]]
    if meta.get("share") is not None:
        argv += ["--max-cost", f"{sc.guard_cost(meta['share']):.4f}"]
    if meta.get("max_minutes") is not None:
        argv += ["--max-minutes", f"{meta['max_minutes']:g}"]
    if meta.get("strength_games"):
        argv += ["--strength-games", str(meta["strength_games"]), "--strength-opponent",
                 meta.get("strength_opponent") or "random"]
    if meta.get("backend"):
        argv += ["--backend", meta["backend"]]
    if resume:
        argv.append("--resume")
    return argv


def trial_env(meta: dict[str, Any], params: dict[str, Any]) -> dict[str, str]:
    """The cycle settings a trial's parameters set through its environment."""
    values = {**meta["base"], **params}
    return {sc.PARAMS[name].flag: _fmt(values[name]) for name in sc.PARAMS
            if sc.PARAMS[name].via == "env" and name in values}


def run_cost(run: RunFolder) -> float | None:
    """What the run's pods cost (report.run_cost: RunPod's billed amount once it caught up
    with the estimate, else price x billed time, a pod still running counted up to now)."""
    if not run.exists():
        return None
    try:
        run.reload()
        state = run.state
    except PodCycleError:
        return None
    return report.run_cost(state)[0]


def read_metrics(run: RunFolder) -> dict[str, Any] | None:
    from podcycle.files import read_regular

    try:
        return json.loads(read_regular(run.run_artifacts / "metrics.json"))  # a FIFO: None
    except (OSError, ValueError, RecursionError):
        return None


def run_value(objective: str, run: RunFolder) -> float:
    run.reload()
    return sc.objective_value(objective, read_metrics(run), run.state.strength)


def pid_runs(pid: int | None, run_id: str) -> bool:
    """Whether `pid` is alive and is the cycle of `run_id` (not a recycled pid)."""
    if not pid:
        return False
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"RUNPOD_CYCLE_RUN_ID={run_id}".encode() in raw.split(b"\0")


def last_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    errors = [line.strip() for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][:300]
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1][:300] if tail else "no output"


def epoch_curve(log: Path) -> list[dict[str, float]]:
    """The per-epoch validation lines a trial's log shows (a pruned trial has no metrics.json)."""
    rows: dict[int, dict[str, float]] = {}
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    for match in EPOCH_LINE.finditer(text):
        try:
            rows[int(match.group(1))] = {"epoch": int(match.group(1)),
                                         "val_loss": float(match.group(3)),
                                         "val_top1": float(match.group(4))}
        except ValueError:
            continue
    return [rows[k] for k in sorted(rows)]


# -- running a sweep -------------------------------------------------------------------------
@dataclass
class Running:
    number: int
    trial_id: int
    run_id: str
    share: float
    prior_cost: float  # what the run's earlier pods cost (a continued run)
    log: Path
    proc: subprocess.Popen | None = None
    pid: int | None = None  # a cycle this process did not start (it outlived a sweep)
    prune_requested: bool = False
    started: float = 0.0

    @property
    def adopted(self) -> bool:
        return self.proc is None


@dataclass
class Options:
    config: Path | None = None
    resume: str | None = None
    flags: sc.Overrides | None = None
    backend: str | None = None


class Sweep:
    """One process driving one sweep to its end (or to Ctrl-C, or to its budget)."""

    def __init__(self, folder: SweepFolder, meta: dict[str, Any], study: Any,
                 settings: Settings, announce: Callable[[str], None]) -> None:
        self.folder = folder
        self.meta = meta
        self.study = study
        self.settings = settings
        self.say = announce
        self.artifacts = Path(meta["artifacts_dir"])
        self.params = [sc.Param.from_dict(p) for p in meta["params"]]
        self.running: dict[int, Running] = {}
        self.events: queue.Queue = queue.Queue()
        self.stopping = False
        self.waiting_said = False
        # Trials a dead sweep left with an unfinished run, waiting for a slot and the budget
        # (fill continues them before it asks for new ones): (trial number, run folder).
        self.to_continue: list[tuple[int, RunFolder]] = []
        self.parked: set[int] = set()  # of those, the ones whose pod was stopped meanwhile
        # The report after a trial waits until 4x the last one's writing time has gone by:
        # it reads every trial, so over a long sweep it grew to seconds a trial, on the loop
        # that refills the slots (8.9 s at 1,000 trials). At most a fifth of the loop's time;
        # one that waited is written once due (the loop wakes every few seconds), and the
        # sweep's end always writes it.
        self.clock: Callable[[], float] = time.monotonic
        self.report_due = 0.0
        self.report_waiting = False

    # -- bookkeeping -------------------------------------------------------------------------
    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def finished(self) -> list[Any]:
        return [t for t in self.trials() if t.state.name in FINISHED_STATES]

    def remaining(self) -> int:
        return max(0, self.meta["trials"] - len(self.finished()) - len(self.running))

    def spent(self) -> float:
        total = 0.0
        for trial in self.finished():
            cost = trial.user_attrs.get("cost")
            if cost is None and trial.user_attrs.get("run_id"):
                cost = run_cost(RunFolder(self.artifacts, trial.user_attrs["run_id"]))
            total += cost or 0.0
        return total

    def running_worst(self) -> list[float]:
        return [item.prior_cost + item.share for item in self.running.values()]

    def set_status(self, status: str, **extra: Any) -> None:
        self.meta["status"] = status
        self.meta.update(extra)
        self.folder.save_meta(self.meta)

    def write_report(self, *, when_due: bool = False) -> None:
        """The sweep's report; `when_due`: only if its time has come (see report_due)."""
        from podcycle import sweep_report

        began = self.clock()
        if when_due and began < self.report_due:
            self.report_waiting = True
            return
        self.report_waiting = False
        try:
            sweep_report.write(self.folder, self.meta, self.trials())
        except Exception as exc:  # noqa: BLE001 - a report must never stop the trials
            self.say(f"warning: the sweep report could not be written: {exc}")
        ended = self.clock()
        self.report_due = ended + 4 * (ended - began)

    def catch_up_report(self) -> None:
        """A report that waited after a trial, written once due: with the other trials
        running for hours, it showed a finished trial as running until the next ended."""
        if self.report_waiting:
            self.write_report(when_due=True)

    # -- the loop ----------------------------------------------------------------------------
    def drive(self) -> str:
        # SIGHUP too; one the sweep was started ignoring (nohup) stays ignored, for it and
        # for its trials.
        previous = handlers_to_trap()

        def interrupted(signum: int, frame: Any) -> None:
            if self.stopping:
                self.say("stopping: waiting for the trials to stop their pods")
                return
            self.stopping = True
            self.events.put(("signal", signal.Signals(signum).name))

        for sig in previous:
            signal.signal(sig, interrupted)
        try:
            self.settle_running()
            while True:
                if self.stopping:
                    return self.stop_all()
                outcome = self.fill()
                if outcome and not self.running:
                    return outcome
                if not self.running:
                    return "finished"
                self.wait_event()
                self.catch_up_report()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def fill(self) -> str | None:
        """Start trials while slots, trials and budget allow. Returns "budget reached" when
        the budget holds the next trial back. A trial left to continue that must wait (for a
        slot, or the budget) has its pod stopped meanwhile: it would bill outside --parallel
        and the budget (a stopped pod is started again when the trial continues)."""
        outcome = self._fill()
        for number, run in self.to_continue:
            if number not in self.parked and not self.stopping:
                self.parked.add(number)
                self.park(number, run)
        return outcome

    def child_environ(self, run_id: str, extra: dict[str, str] | None = None
                      ) -> dict[str, str]:
        """The environment of an `inv` this sweep starts for a trial's run (its cycle, the
        stop of its pod): the sweep's own, its backend's folder, the run and artifacts, and
        a key given as `--api-key` (the environment, never the command line)."""
        env = dict(os.environ)
        env.update(self.meta.get("child_env") or {})
        env.update(extra or {})
        env["RUNPOD_CYCLE_RUN_ID"] = run_id
        env["POD_CYCLE_ARTIFACTS_DIR"] = str(self.artifacts)
        # No node count of its own: a new trial's run takes one pod (run_sweep refused any
        # other count the sweep's environment, .env or invoke.yaml give), and a trial started
        # on a cluster by an older version keeps its shape (a count given would refuse it).
        env.pop("RUNPOD_NODES", None)
        env[DRIVING_SWEEP] = self.folder.name  # in the run's lock: who to stop it with
        env.update(key_for_children(self.settings))
        return env

    def park(self, number: int, run: RunFolder) -> None:
        """Stop the pod (a cluster: delete it, its model collected first) of a trial's run
        that waits to continue: `inv cycle.stop`, its output in the trial's log."""
        state = self._run_state(run)
        if state is None or not state.may_bill:
            return
        self.say(f"trial {number} (run {run.run_id}) waits to continue: stopping its pod "
                 "meanwhile (it starts again when the trial continues)")
        env = self.child_environ(run.run_id)
        log = self.folder.trial_log(number)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            done = subprocess.run([str(Path(sys.executable).parent / "inv"), "cycle.stop"],
                                  stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env)
        if done.returncode != 0:
            self.say(f"warning: could not stop the pod of run {run.run_id} (see {log}); stop "
                     f"it with inv cycle.stop -r {run.run_id}")

    def _fill(self) -> str | None:
        budget = self.meta.get("budget")
        share = self.meta.get("share") or 0.0
        # A signal stops the filling at once: each trial started is a pod that bills.
        while not self.stopping and len(self.running) < self.meta["parallel"] \
                and self.remaining() > 0:
            # Spent: the finished trials, and what every interrupted run still waiting to
            # continue has cost so far (sweep.status counts it too). A continued trial's worst
            # case is then its share on top of its own run's cost, already counted.
            waiting = [run_cost(run) or 0.0 for _, run in self.to_continue]
            spent, running = self.spent() + sum(waiting), self.running_worst()
            prior = waiting[0] if waiting else 0.0
            if not sc.may_start(budget, spent, running, share):
                line = (f"${spent:.4f} spent + ${sum(running):.4f} running of ${budget:.4f}")
                if not self.running:
                    left = self.remaining()
                    self.say(f"budget reached: {line}; {left} trial(s) not started"
                             + (f" ({len(self.to_continue)} of them interrupted: their runs "
                                "wait for inv sweep.run --resume with a larger --max-cost)"
                                if self.to_continue else ""))
                    self.meta["not_started"] = left
                    return "budget reached"
                if not self.waiting_said:
                    own = (f"its share ${share:.4f} on top of the ${prior:.4f} its run "
                           "cost, counted as spent" if prior else f"its share ${share:.4f}")
                    self.say(f"budget: the next trial ({own}) waits for a running one to "
                             f"end: {line}")
                    self.waiting_said = True
                return None
            self.waiting_said = False
            if self.to_continue:
                number, run = self.to_continue.pop(0)
                self.continue_run(self.trial(number), run)
            else:
                self.start_new()
        return None

    def start_new(self) -> None:
        trial = self.study.ask()
        params = {p.name: suggest(trial, p) for p in self.params}
        self.launch(trial.number, trial._trial_id, params, resume_run=False, prior_cost=0.0)

    def launch(self, number: int, trial_id: int, params: dict[str, Any], *,
               resume_run: bool, prior_cost: float) -> None:
        run_id = run_id_of(self.meta["name"], number)
        storage = self.study._storage
        share = self.meta.get("share")
        storage.set_trial_user_attr(trial_id, "run_id", run_id)
        if share is not None:
            storage.set_trial_user_attr(trial_id, "share", share)
        log = self.folder.trial_log(number)
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = trial_argv(self.meta, params, resume=resume_run)
        env = self.child_environ(run_id, trial_env(self.meta, params))
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            settings_env = " ".join(f"{k}={v}" for k, v in trial_env(self.meta, params).items())
            out.write(f"# sweep {self.meta['name']}: {settings_env} {' '.join(argv[1:])}\n"
                      .encode())
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        storage.set_trial_user_attr(trial_id, "pid", proc.pid)
        item = Running(number, trial_id, run_id, share or 0.0, prior_cost, log, proc=proc,
                       started=time.time())
        self.running[number] = item
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        self.say(f"trial {number} ({'continuing ' if resume_run else ''}run {run_id}): "
                 f"{shown} (log {log})")
        threading.Thread(target=self.follow, args=(item, offset), daemon=True).start()

    def adopt(self, trial: Any, pid: int | None) -> None:
        """Wait for a trial whose cycle outlived the sweep that started it."""
        run_id = trial.user_attrs["run_id"]
        log = self.folder.trial_log(trial.number)
        # What its run cost so far counts against the budget, as a continued trial's does.
        prior = run_cost(RunFolder(self.artifacts, run_id)) or 0.0
        item = Running(trial.number, trial._trial_id, run_id,
                       float(trial.user_attrs.get("share") or 0.0), prior, log, pid=pid,
                       started=time.time())
        self.running[trial.number] = item
        self.say(f"trial {trial.number} (run {run_id}): its cycle is still running (pid "
                 f"{pid or 'unknown'}): waiting for it")
        offset = log.stat().st_size if log.exists() else 0
        threading.Thread(target=self.follow, args=(item, offset), daemon=True).start()

    def alive(self, item: Running) -> bool:
        if item.proc is not None:
            return item.proc.poll() is None
        return (pid_runs(item.pid, item.run_id)
                or RunFolder(self.artifacts, item.run_id).is_driven())

    def follow(self, item: Running, offset: int) -> None:
        """Follow a trial's log for the trainer's epoch lines until its cycle ends."""
        try:
            handle = open(item.log, "rb")
        except OSError:
            handle = None
        try:
            if handle is not None:
                handle.seek(offset)
            while True:
                ended = not self.alive(item)
                while handle is not None:
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        if line:
                            handle.seek(-len(line), os.SEEK_CUR)
                        break
                    match = EPOCH_LINE.search(line.decode(errors="replace"))
                    if match:
                        self.events.put(("epoch", item.number, *match.groups()))
                if ended:
                    break
                time.sleep(0.25)
        finally:
            if handle is not None:
                handle.close()
            code = item.proc.wait() if item.proc is not None else None
            self.events.put(("exit", item.number, code))

    def wait_event(self) -> None:
        try:
            event = self.events.get(timeout=5)
        except queue.Empty:
            return
        kind = event[0]
        if kind == "epoch":
            self.on_epoch(*event[1:])
        elif kind == "exit":
            self.on_exit(event[1], event[2])

    def on_epoch(self, number: int, epoch: str, total: str, val_loss: str,
                 val_top1: str) -> None:
        from optuna.trial import Trial

        item = self.running.get(number)
        if item is None:
            return
        self.say(f"trial {number}: epoch {epoch}/{total} val_loss={val_loss} "
                 f"val_top1={val_top1}")
        objective = self.meta["objective"]
        if objective == "strength":
            return  # nothing per epoch to judge a match by
        try:
            value = float(val_loss if objective == "val_loss" else val_top1)
        except ValueError:
            return
        if not math.isfinite(value):
            return
        import warnings

        trial = Trial(self.study, item.trial_id)
        with warnings.catch_warnings():  # a continued run reports an epoch again: ignored
            warnings.simplefilter("ignore")
            trial.report(value, int(epoch))
        if self.meta.get("prune") and not item.prune_requested and not self.stopping \
                and trial.should_prune():
            item.prune_requested = True
            trial.set_user_attr("prune_requested", True)
            self.say(f"trial {number}: pruned at epoch {epoch} ({objective} {value:g} is "
                     "worse than the median of earlier trials): stopping its run and pod")
            self.signal(item)

    def signal(self, item: Running) -> None:
        """Interrupt a trial's cycle (it stops its pod), as Ctrl-C would. SIGTERM, which the
        cycle takes as it takes Ctrl-C: a sweep started with `&` from a script runs with
        SIGINT ignored, and so would every trial it starts."""
        try:
            if item.proc is not None:
                if item.proc.poll() is None:
                    interrupt(item.proc.pid, self.say)
            elif item.pid and pid_runs(item.pid, item.run_id):
                interrupt(item.pid, self.say)
        except ProcessLookupError:
            pass

    def on_exit(self, number: int, code: int | None) -> None:
        import optuna

        item = self.running.pop(number, None)
        if item is None:
            return
        storage = self.study._storage
        run = RunFolder(self.artifacts, item.run_id)
        cost = run_cost(run)
        if cost is not None:
            storage.set_trial_user_attr(item.trial_id, "cost", round(cost, 6))
        if code is not None:
            storage.set_trial_user_attr(item.trial_id, "exit_code", code)
        spent = f" (${cost:.4f})" if cost is not None else ""
        state = self._run_state(run)
        if self.stopping and not item.prune_requested and code != 0:
            storage.set_trial_user_attr(item.trial_id, "interrupted", True)
            # "stopped" is the trial: its pod's stop may have failed (said before the end's
            # POD STILL RUNNING read as the pod stopped).
            self.say(f"trial {number} (run {item.run_id}) stopped{spent}: --resume continues "
                     "its run" + ("; POD STILL RUNNING: its pod's stop failed (inv sweep.stop "
                                  f"{self.meta['name']} stops it)"
                                  if state is not None and state.stop_failed else ""))
            return
        if code == RunBusy.exit_code and not item.adopted and not item.prune_requested:
            # Another process took the trial's run first (a cycle.full-smoke --resume of it in
            # another terminal, while this sweep continued it): that cycle is the trial's, as
            # one that outlived a sweep is. It failed the trial for good, though the run
            # then finished.
            self.adopt(self.trial(number), run.holder_pid())
            return
        if item.prune_requested:
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
            self.say(f"trial {number} pruned{spent}")
        elif code == 0 or (item.adopted and state is not None and state.finished) or \
                _only_its_stop_failed(state):
            try:
                value = run_value(self.meta["objective"], run)
            except (ValueError, PodCycleError) as exc:
                self.fail(item, f"{exc}")
            else:
                self.study.tell(number, value)
                self.say(f"trial {number} finished: {self.meta['objective']} {value:.5g}"
                         f"{spent}" + ("; POD STILL RUNNING: its stop failed (inv sweep.stop "
                                       f"{self.meta['name']} stops it)"
                                       if _only_its_stop_failed(state) else ""))
        elif item.adopted and (state is None or state.outcome != "failed") and \
                int(self.trial(number).user_attrs.get("continued", 0)) < 2:
            self.continue_run(self.trial(number), run)
            return
        else:
            self.fail(item, last_error(item.log))
        self.write_report(when_due=True)

    def fail(self, item: Running, reason: str) -> None:
        import optuna

        self.study._storage.set_trial_user_attr(item.trial_id, "failure", reason)
        self.study.tell(item.number, state=optuna.trial.TrialState.FAIL)
        self.say(f"trial {item.number} (run {item.run_id}) failed: {reason}; the sweep goes on")

    def trial(self, number: int) -> Any:
        return next(t for t in self.trials() if t.number == number)

    @staticmethod
    def _run_state(run: RunFolder) -> Any:
        if not run.exists():
            return None
        try:
            run.reload()
            return run.state
        except PodCycleError:
            return None

    # -- resume ------------------------------------------------------------------------------
    def settle_running(self) -> None:
        """Trials a dead sweep left RUNNING: a finished run gives its value; a live cycle is
        waited for; any other run is continued (cycle.full-smoke --resume) by fill, as slots
        and the budget allow."""
        import optuna

        for trial in [t for t in self.trials() if t.state.name == "RUNNING"]:
            if self.stopping:
                return
            run_id = trial.user_attrs.get("run_id") or run_id_of(self.meta["name"],
                                                                 trial.number)
            self.study._storage.set_trial_user_attr(trial._trial_id, "run_id", run_id)
            run = RunFolder(self.artifacts, run_id)
            pid = trial.user_attrs.get("pid")
            if pid_runs(pid, run_id) or run.is_driven():
                self.adopt(self.trial(trial.number), pid if pid_runs(pid, run_id)
                           else run.holder_pid())
                continue
            state = self._run_state(run)
            if trial.user_attrs.get("prune_requested"):
                cost = run_cost(run)
                if cost is not None:
                    self.study._storage.set_trial_user_attr(trial._trial_id, "cost", cost)
                self.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
                self.say(f"trial {trial.number} (run {run_id}): pruned before the crash")
            elif state is not None and state.finished:
                item = Running(trial.number, trial._trial_id, run_id, 0.0, 0.0,
                               self.folder.trial_log(trial.number))
                self.running[trial.number] = item
                self.say(f"trial {trial.number} (run {run_id}): its run finished while no "
                         "sweep watched")
                self.on_exit(trial.number, None)
            else:  # continued by fill, within --parallel and the budget
                self.to_continue.append((trial.number, run))

    def continue_run(self, trial: Any, run: RunFolder) -> None:
        storage = self.study._storage
        storage.set_trial_user_attr(trial._trial_id, "continued",
                                    int(trial.user_attrs.get("continued", 0)) + 1)
        if trial.user_attrs.get("interrupted"):
            storage.set_trial_user_attr(trial._trial_id, "interrupted", False)
        self.launch(trial.number, trial._trial_id, dict(trial.params),
                    resume_run=run.exists(), prior_cost=run_cost(run) or 0.0)

    # -- Ctrl-C ------------------------------------------------------------------------------
    def stop_all(self) -> str:
        if self.running:
            self.say(f"stopping {len(self.running)} running trial(s): each stops its pod")
        for item in list(self.running.values()):
            if item.adopted and not pid_runs(item.pid, item.run_id):
                # Its run is driven by a process this sweep did not start and cannot tell
                # apart (a cycle started by hand with -r): waiting for it kept sweep.stop and
                # Ctrl-C waiting until that training ended.
                self.running.pop(item.number, None)
                self.study._storage.set_trial_user_attr(item.trial_id, "interrupted", True)
                self.say(f"trial {item.number} (run {item.run_id}) is driven by another "
                         f"process (pid {item.pid or 'unknown'}), not by this sweep: left to "
                         "it (a Ctrl-C in its own terminal stops it and its pod)")
                continue
            self.signal(item)
        # A resumed sweep's trials still waiting to continue: the signal may have come
        # before fill stopped their pods (it stops no more once one came).
        for number, run in self.to_continue:
            if number not in self.parked:
                self.parked.add(number)
                self.park(number, run)
        while self.running:
            self.wait_event()
        return "stopped"


def _gpu_for(settings: Settings, cfg: sc.SweepConfig, connect: Callable[..., Any]
             ) -> dict[str, Any]:
    """The one GPU type every trial gets (so its price, and each trial's worst case, is
    known before the first pod): the file's gpu_type_id, else the setting, else the
    cheapest available."""
    from podcycle import provision

    backend = connect(settings)
    _refuse_earlier_pods(backend.client, settings, cfg.name)
    cloud = cfg.cloud or settings.cloud
    try:
        gpu_id, offer = provision.choose_gpu(
            backend.client, gpu_type_id=cfg.gpu_type_id or settings.gpu_type_id,
            cloud=cloud, gpu_count=settings.gpu_count, max_price=settings.max_price)
    except provision.UnknownGpu as exc:
        if not cfg.gpu_type_id:
            raise
        # Where it came from: the sweep file, not a flag or the settings.
        raise ConfigError(f"{cfg.path}: [sweep] gpu_type_id: {exc.message}",
                          exc.remedy) from None
    return {"id": gpu_id, "cloud": offer.cloud.lower() if offer else (
        None if cloud == "all" else cloud),
        "price_per_hour": offer.price_per_hour if offer else None,
        "sample_prices": bool(getattr(backend, "sample_prices", False))}


def _first_five(names: list[str]) -> str:
    """`a, b, c, d, e and 3 more`: what an earlier sweep left, named in one line."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _refuse_earlier_pods(client: Any, settings: Settings, name: str | None) -> None:
    """Pods named for this sweep's runs that still exist (an earlier sweep of the same name,
    its folder since removed or elsewhere): a new trial's cycle would adopt one by its name,
    with what it holds. Refused before anything is made."""
    if not name:
        return  # a generated name is new
    prefix = f"{settings.pod_name or 'pod-cycle'}-{name}-t"
    found = sorted(p.id for p in client.list_pods()
                   if p.name.startswith(prefix) and not p.status.gone)
    if found:
        raise SweepError(f"pods of an earlier sweep named {name!r} still exist "
                         f"({_first_five(found)}): its "
                         "trials' runs would take them over",
                         "pick another --name (or name in the file), or terminate them with "
                         "inv pod.terminate ID --yes", code=2)


def _check_writable(folder: Path) -> None:
    """The runs folder each trial's cycle writes its run into: one that cannot be written (a
    read-only mount, another user's) failed every trial at its start, after the sweep's own
    folder was made elsewhere, and its last line sent the operator to runs that never were."""
    existing = nearest_existing(folder)
    why = write_refusal(existing)
    if why:
        raise SweepError(f"the runs folder {folder} cannot be written ({existing}: {why}), "
                         "and each trial's run goes there",
                         "set POD_CYCLE_ARTIFACTS_DIR to a folder you can write")


def _refuse_earlier_runs(settings: Settings, name: str) -> None:
    """Run folders named for this sweep's trials (an earlier sweep of the same name whose
    sweep folder was removed): a trial failed on "already has steps recorded", and
    sweep.status charged it that run's cost and pod, which sweep.stop would then act on.
    Refused before anything is made."""
    root = Path(settings.artifacts_dir)
    prefix = run_id_of(name, 0)[:-1]
    found = sorted(p.name for p in root.glob(f"{prefix}*")
                   if p.is_dir() and p.name[len(prefix):].isdigit()) if root.is_dir() else []
    if found:
        raise SweepError(f"run folders of an earlier sweep named {name!r} exist in {root} "
                         f"({_first_five(found)}): its trials would be taken for theirs",
                         "pick another --name (or name in the file), or move those run "
                         "folders away", code=2)


def plan(settings: Settings, options: Options, *, announce: Callable[[str], None] = say,
         connect: Callable[..., Any] | None = None,
         claim: Callable[[SweepFolder], None] | None = None
         ) -> tuple[SweepFolder, dict[str, Any]]:
    """Check everything a new sweep needs (file, flags, datasets, GPU price, spend guard)
    before a request that creates anything, or a pod, exists. `claim` takes the sweep's
    folder as soon as its name is known and free: the checks after it (a large dataset's, the
    GPU's price) take a while, and a sweep.stop meanwhile must find the sweep starting."""
    from podcycle.config import expand_path
    from podcycle.dataset import validate

    if connect is None:
        from podcycle.backend import connect as connect_backend

        connect = connect_backend
    flags = sc.check_flags(options.flags or sc.Overrides())
    if options.config is None:
        raise ConfigError("no sweep file", "pass --config config/sweep.toml (or --resume NAME)")
    cfg = sc.load(options.config)
    in_file = cfg.base.get("dataset")
    cfg = sc.apply(cfg, flags)
    name = validate_name(cfg.name or new_name())
    root = sweeps_root(settings)
    folder = SweepFolder(root, name)
    starting = folder.starting_pid()
    if starting is not None:
        raise SweepStarting(folder, starting)
    killed = folder.killed_start()  # taken over by claim (the lock decides)
    if folder.path.exists() and not folder.meta_path.exists() and not killed:
        raise SweepError(f"the folder of sweep {name} ({folder.path}) exists but holds no "
                         "sweep.json: a sweep whose start failed (a full disk?), or not a "
                         "sweep's", "move that folder away, or pick another --name", code=2)
    if folder.path.exists() and not killed:
        raise SweepError(f"sweep {name} exists already ({folder.path})",
                         f"continue it with inv sweep.run --resume {name}, or pick another "
                         "--name", code=2)
    if claim is not None:
        claim(folder)
    _refuse_earlier_runs(settings, name)
    _check_writable(settings.artifacts_dir)
    datasets = [cfg.base.get("dataset") or str(settings.dataset_dir)]
    if "dataset" in cfg.params:
        # In the file's order: the first bad one is the one named (sorted, "/etc" came
        # before "/nonexistent").
        datasets = list(dict.fromkeys(cfg.params["dataset"].values))
        origin = f"{cfg.path}: [params.dataset]"
    elif flags.dataset is not None:
        origin = "--dataset-dir"
    elif in_file:
        origin = f"{cfg.path}: [sweep] dataset"
    else:
        origin = settings.source("dataset_dir")
        origin = "the default RUNPOD_DATASET_DIR" if origin == "default" else origin
    folders: dict[Path, str] = {}
    for dataset in datasets:
        folder_path = expand_path(dataset, origin)
        if not folder_path.is_dir():
            what = "is a file, not a folder" if folder_path.exists() else "does not exist"
            raise ConfigError(f"dataset folder {dataset!r} {what} (from {origin})",
                              "fix the path (relative paths are from the current folder)")
        same = folders.setdefault(folder_path.resolve(), dataset)
        if same != dataset:  # each value is a paid trial: two on one folder train it twice
            raise ConfigError(f"{origin}: {same!r} and {dataset!r} are the same folder",
                              "list each dataset once")
        try:
            validate(folder_path.resolve())
        except DatasetError as exc:  # its remedy names --dataset-dir: say where it came from
            raise DatasetError(f"{exc.message} (from {origin})",
                               exc.remedy if origin == "--dataset-dir" else
                               f"fix that folder (train.jsonl and val.jsonl), or name another "
                               f"in {origin}") from None
    if cfg.strength_games and cfg.strength_opponent:
        from podcycle.match import parse_opponent

        try:  # every trial would play it: a typo would fail them all after their training
            parse_opponent(cfg.strength_opponent, artifacts_dir=settings.artifacts_dir,
                           flag="strength_opponent", probe=True)
        except ConfigError as exc:
            raise ConfigError(f"{cfg.path}: [sweep] {exc.message}", exc.remedy) from None
    gpu = _gpu_for(settings, cfg, connect)
    share = None
    if cfg.max_cost is not None:
        from podcycle import provision

        price = gpu["price_per_hour"]
        if not price or price <= 0:
            raise ConfigError(f"a sweep budget needs the GPU's price, and the catalog gave "
                              f"none for {gpu['id']}",
                              "leave out max_cost (each trial still stops at max_minutes), or "
                              "pick a GPU with a price (gpu_type_id)")
        share = sc.trial_share(price, cfg.max_minutes)
        # The guard the pods will carry.
        provision.spend_guard(cfg.max_minutes, sc.guard_cost(share), price)
        if share > cfg.max_cost:
            raise ConfigError(
                f"the budget ${cfg.max_cost:g} is less than one trial's worst case "
                f"${share:.4f} (${price:.2f}/h x {cfg.max_minutes:g} min)",
                "raise max_cost (--max-cost) or lower max_minutes (--max-minutes)")
    elif cfg.max_minutes is not None:
        from podcycle import provision

        provision.spend_guard(cfg.max_minutes, None, None)
    trials = cfg.trials if cfg.trials is not None else cfg.grid_size
    base = dict(cfg.base)
    if base.get("dataset"):
        base["dataset"] = str(Path(base["dataset"]).expanduser().resolve())
    params = []
    for param in cfg.params.values():
        if param.name == "dataset":
            param = replace(param, values=[str(Path(v).expanduser().resolve())
                                           for v in param.values])
        params.append(param.as_dict())
    meta = {
        "name": name, "config": str(options.config), "objective": cfg.objective,
        "direction": cfg.direction, "trials": trials, "parallel": cfg.parallel,
        "prune": cfg.prune, "prune_startup_trials": cfg.prune_startup_trials,
        "prune_warmup_epochs": cfg.prune_warmup_epochs, "budget": cfg.max_cost,
        "max_minutes": cfg.max_minutes, "share": share, "gpu": gpu, "base": base,
        "params": params, "seed_sampler": cfg.seed_sampler,
        "strength_games": cfg.strength_games,
        "strength_opponent": cfg.strength_opponent or ("random" if cfg.strength_games
                                                       else None),
        "backend": options.backend, "artifacts_dir": str(settings.artifacts_dir.resolve()),
        "child_env": {"POD_CYCLE_LOCAL_DIR": str(settings.local_dir.expanduser().resolve())},
        "created_at": time.time(), "status": "new", "runs": [],
    }
    return folder, meta


def _only_its_stop_failed(state: Any) -> bool:
    """A trial's run that trained and collected its model, whose pod's stop (or cluster's
    delete) then failed: its cycle exits 4, and the trial was failed with its
    model's value lost ("no best", or a worse trial ranked first), while the pod billed on.
    The value stands; the pod is named at the sweep's end (sweep_status.billing_trials)."""
    # A full-smoke stops its pod before its local-validate, and a failed stop ends the run:
    # local-validate is then still to do (the value is the collected metrics'; a strength
    # objective without its match has no value and fails as before).
    if state is None or not state.done("collect") or \
            not set(state.pending()) <= {"local-validate"}:
        return False
    return state.stop_failed


def check_some_trial_ended_well(result: dict[str, Any], outcome: str) -> None:
    """A sweep whose every trial failed ends non-zero: "finished" with nothing to rank is a
    failure the operator must see (a typo every trial shares, a dataset every trial lacks)."""
    states = [trial["state"] for trial in result["trials"]]
    if states and all(state == "FAIL" for state in states):
        raise SweepError(f"sweep {result['name']} {outcome}, but every one of its "
                         f"{len(states)} trial(s) failed: there is no best",
                         f"see why in {result['report']} (each trial's run: inv runs.show "
                         "RUN_ID), fix it, and start a new sweep")


def _resumed_study(folder: SweepFolder, meta: dict[str, Any], flags: sc.Overrides,
                   announce: Callable[[str], None]) -> Any:
    """A resume's study: what its flags may change (--parallel, --trials, --max-cost) set in
    `meta` (saved by the caller once the sweep runs), every refusal made before that."""
    if flags.parallel is not None:
        meta["parallel"] = flags.parallel
    if flags.trials is not None:
        params = [sc.Param.from_dict(p) for p in meta.get("params") or []]
        size = sc.grid_combinations(params) if params else None
        if size is not None and flags.trials > size:
            # Past the grid, Optuna's grid sampler hands out combinations again: each
            # repeat a paid pod (a new sweep is refused the same way).
            raise ConfigError(f"--trials {flags.trials} is more than sweep {folder.name}'s "
                              f"grid of {size} combination(s)",
                              f"use --trials {size} or fewer")
        meta["trials"] = flags.trials
    if flags.max_cost is not None:
        if meta.get("share") is None:
            raise ConfigError(f"sweep {folder.name} was planned without a budget, so its "
                              "trials have no worst case", "start a new sweep with "
                              "max_cost and max_minutes")
        if flags.max_cost < meta["share"]:  # as a new sweep's is: no trial could start
            raise ConfigError(
                f"--max-cost {flags.max_cost:g} is less than one trial's worst case "
                f"${meta['share']:.4f} (sweep {folder.name}'s share)",
                f"give --max-cost {meta['share']:.4f} or more (it is the sweep's whole "
                "budget, kept for later resumes)")
        meta["budget"] = flags.max_cost
    cut = cut_torn_tail(folder.journal)
    if cut:
        announce("the study's journal ended in a torn write (the sweep was killed mid-"
                 "write): cut it off")
    study = open_study(folder, meta, create=False)
    started = len(study.trials)
    if flags.trials is not None and flags.trials < started:
        # remaining() would count the interrupted ones against it: never continued, and
        # the sweep said "finished"
        raise ConfigError(f"--trials {flags.trials} is fewer than the {started} trial(s) "
                          f"sweep {folder.name} has started",
                          f"use --trials {started} or more (or leave it out): a started "
                          "trial is continued, never dropped")
    return study


def _begin_new_sweep(settings: Settings, options: Options, announce: Callable[[str], None],
                     connect: Callable[..., Any] | None
                     ) -> tuple[SweepFolder, dict[str, Any], Any]:
    """A new sweep, from its plan to its record (sweep.json), as one step: the plan checked,
    the name claimed as soon as plan() knows it (the folder made here, and locked: another
    start may have taken it since plan() looked), the study created, the plan said, the
    record written. Any failure on the way, Ctrl-C and sweep.stop's signal included, removes
    what this start made and nothing else (_forget_the_start). Returns the folder, the
    record and the study."""
    claimed: list[tuple[SweepFolder, list[Path]]] = []

    def claim(folder: SweepFolder) -> None:
        made = []  # the sweeps folders this start makes: a refused sweep leaves none
        above = folder.path.parent
        while not above.exists() and above != above.parent:
            made.append(above)
            above = above.parent
        from podcycle.signals import held_signals

        # Signals held from the folder's making to its record in `claimed`: a Ctrl-C in
        # between left the folder, and the name refused.
        with held_signals(None):
            folder.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.path.mkdir()
            except FileExistsError:
                taken = folder.take_over_killed_start()
                if not taken:
                    raise SweepError(f"sweep {folder.name} exists already ({folder.path}): "
                                     "another sweep.run of that name started meanwhile",
                                     f"watch it with inv sweep.status {folder.name}, or pick "
                                     "another --name", code=2) from None
                made = []
            else:
                taken = False
                try:
                    folder.lock()  # before it is this start's to remove: held, it is
                except BaseException:  # a full disk: the folder is this start's, unheld
                    _forget_the_start(folder, made)
                    raise
            claimed.append((folder, made))
        if taken:
            announce(f"sweep {folder.name}: an earlier start of it was killed before it made "
                     "anything (no trial, no pod): starting afresh in its folder")

    try:
        folder, meta = plan(settings, options, announce=announce, connect=connect,
                            claim=claim)
        if not claimed:
            claim(folder)
        study = open_study(folder, meta, create=True)
        _announce_plan(folder, meta, announce)
        meta["pid"] = os.getpid()
        meta.pop("not_started", None)
        folder.save_meta({**meta, "status": "running"})
        return folder, meta, study
    except BaseException:
        if claimed:
            _forget_the_start(*claimed[0])
        raise


def _announce_plan(folder: SweepFolder, meta: dict[str, Any],
                   announce: Callable[[str], None]) -> None:
    gpu = meta["gpu"]
    price = (f" at ${gpu['price_per_hour']:.2f}/h" if gpu.get("price_per_hour") else "")
    budget = (f"; budget ${meta['budget']:g}, each trial's worst case ${meta['share']:.4f} "
              f"({meta['max_minutes']:g} min, its pod's spend guard)"
              if meta.get("budget") else "")
    announce(f"sweep {folder.name}: {meta['trials']} trial(s) of {meta['objective']} "
             f"({meta['direction']}), {meta['parallel']} at a time on {gpu['id']}{price}"
             f"{budget}; folder {folder.path}")
    if meta.get("budget") and meta["trials"] * meta["share"] > meta["budget"]:
        announce(f"the budget ${meta['budget']:g} is below the {meta['trials']} trials' "
                 f"worst case (${meta['trials'] * meta['share']:.4f}): trials start while "
                 "what was spent and what runs leave room for one more")


def _forget_the_start(folder: SweepFolder, made: list[Path]) -> None:
    """A new sweep that failed or was interrupted before its record was written: nothing was
    made (no trial, no pod), so the folder this start made goes, then its lock, with
    signals ignored meanwhile (a closing terminal's second SIGHUP, a second Ctrl-C, killed
    the removal half-way); its name is free again. An interruption is SweepNotStarted
    (exit 130, said so)."""
    import shutil

    from podcycle.signals import ignored_signals

    with ignored_signals():
        shutil.rmtree(folder.path, ignore_errors=True)
        folder.unlock()
        for above in made:  # nearest first; one another sweep has filled meanwhile stays
            try:
                above.rmdir()
            except OSError:
                break
    error = sys.exc_info()[1]
    if isinstance(error, KeyboardInterrupt) and not isinstance(error, SweepNotStarted):
        raise SweepNotStarted(folder.name) from None


def run_sweep(settings: Settings, options: Options, *, announce: Callable[[str], None] = say,
              connect: Callable[..., Any] | None = None) -> dict[str, Any]:
    """sweep.run: a new sweep from a file, or --resume NAME. Returns the sweep's status.
    Raises SweepInterrupted after Ctrl-C (every trial's pod stopped)."""
    from podcycle import hosttools

    hosttools.check()  # once, not a failed start per trial
    if settings.nodes != 1:
        # Its trials became clusters: priced and guarded as one pod each (twice the budget's
        # share, half its time), never paused, and missed by sweep.stop, which said nothing
        # billed while they did; a resume failed every pod trial for good ("a run keeps its
        # shape").
        source = settings.source("nodes")
        raise ConfigError(f"{settings.nodes} nodes (from {source}): a sweep runs each of its "
                          "trials on one pod, not on a cluster",
                          f"unset it ({source}) for the sweep; a cluster run is inv "
                          "cycle.full-smoke --nodes N")
    if settings.data_center is not None:
        # Cluster-only: every trial was refused for it ("places a cluster; it needs --nodes
        # 2"), the sweep made and its name used up, and nothing trained.
        from podcycle.config import undo

        source = settings.source("data_center")
        raise ConfigError(f"--data-center {settings.data_center} (from {source}) places a "
                          "cluster, and a sweep runs each of its trials on one pod",
                          f"{undo(source, '--data-center')} for the sweep (a pod's data centre "
                          "follows its GPU's stock, or its --network-volume's)")
    if options.resume:
        folder = SweepFolder(sweeps_root(settings), options.resume)
        meta = folder.meta()
        flags = sc.check_flags(options.flags or sc.Overrides())
        if options.config is not None or flags.dataset or flags.epochs or flags.name or \
                flags.max_minutes:
            raise ConfigError("--resume continues a sweep as it was planned",
                              "leave out --config, -d, -e, --name and --max-minutes (--parallel, "
                              "--trials and --max-cost may change)")
        folder.lock()
        try:
            study = _resumed_study(folder, meta, flags, announce)
        except BaseException:  # refused: the sweep is left as it was, and free
            folder.unlock()
            raise
        announce(f"resuming sweep {folder.name} ({folder.path})")
    else:
        # From the plan to its record: a Ctrl-C, or sweep.stop's signal (which killed it),
        # left a folder holding only its lock, which refused the name after; and a
        # sweep.stop during the plan said "no sweep", and the sweep went on to make its pods.
        start_handlers = trap_signals()
        try:
            folder, meta, study = _begin_new_sweep(settings, options, announce, connect)
        finally:
            restore_signals(start_handlers)  # the sweep's own, from its drive on
    try:
        if options.resume:
            meta["pid"] = os.getpid()
            meta.pop("not_started", None)
            folder.save_meta({**meta, "status": "running"})
        meta["status"] = "running"
        sweep = Sweep(folder, meta, study, settings, announce)
        try:
            outcome = sweep.drive()
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                sweep.set_status("crashed", error=str(exc)[:300])
                sweep.write_report()  # the last trials' (one after a trial may wait)
            raise
        if outcome == "stopped":
            # Every trial stopped: what is left is the record and the report, in a moment. A
            # second Ctrl-C there (or a closing terminal's second signal) cut them short, and
            # the line that says how to go on with them.
            from podcycle.signals import ignored_signals
            from podcycle.sweep_status import billing_trials, status

            with ignored_signals():
                sweep.set_status(outcome, ended_at=time.time())
                sweep.write_report()
                billing = billing_trials(status(settings, folder.name,
                                                root=folder.path.parent))
            raise SweepInterrupted(folder.name, billing)
        sweep.set_status(outcome, ended_at=time.time())
        sweep.write_report()
        from podcycle.sweep_status import billing_trials, status

        result = status(settings, folder.name, root=folder.path.parent)
        billing = billing_trials(result)
        if not billing:
            check_some_trial_ended_well(result, outcome)
        best = result.get("best")
        if best:
            announce(f"best: trial {best['number']} (run {best['run_id']}) "
                     f"{meta['objective']} {best['value']:.5g}")
        announce(f"sweep {folder.name} {outcome}: report {folder.report}")
        if billing:
            raise SweepError(f"sweep {folder.name} {outcome}, but POD STILL RUNNING: "
                             f"{'; '.join(billing)} may still bill",
                             f"stop them with inv sweep.stop {folder.name}; each trial's run "
                             "says why (inv runs.show RUN_ID)", code=4)
        return result
    finally:
        folder.unlock()
