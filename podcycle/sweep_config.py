"""The sweep file (config/sweep.toml): what a sweep tries, what it optimises, how many trials at
a time, and its one budget. Everything is checked here, before a sweep folder, a request or a
pod exists; each refusal is one line naming the file and the key. Also the arithmetic the
sweep lives by (a trial's share of the budget, which trial may start, the objective read from
a finished run), kept free of I/O so it is tested in milliseconds.

    [sweep]
    objective = "val_loss"        # val_loss (minimised) | val_top1 | strength (maximised)
    trials = 4                    # a grid's size when every parameter is a grid
    parallel = 2                  # trials (pods) at a time
    max_cost = 1.0                # USD for the whole sweep (optional)
    max_minutes = 20              # each trial's time bound: its pod's spend guard
    dataset = "data/dataset/_smoke_runpod"
    epochs = 1
    blocks = 1                    # a base value of a parameter, for every trial

    [params.lr]
    low = 1e-4
    high = 1e-2
    log = true

    [params.channels]
    grid = [8, 16]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chessbot.train_args import RANGES as TRAINER
from podcycle import config
from podcycle.errors import ConfigError
from podcycle.redact import printable

OBJECTIVES = {"val_loss": "minimize", "val_top1": "maximize", "strength": "maximize"}


@dataclass(frozen=True)
class ParamKind:
    """What a parameter is and how it reaches a trial's run."""
    kind: type  # float, int or str (a path)
    minimum: float | None
    maximum: float | None
    flag: str  # chessbot.train's flag, the cycle's flag, or the cycle's environment variable
    via: str  # "train": --train-extra-args; "cycle": a flag of cycle.full-smoke; "env": the
    #           cycle's own setting from its environment

    @property
    def train_arg(self) -> bool:
        return self.via == "train"


# The parameters a trial's run takes: chessbot.train's flags through --train-extra-args (as
# --flag=value, one word each), within the trainer's own ranges, the cycle's own --epochs
# and --dataset-dir, and its TRAIN_BATCH_SIZE setting.
PARAMS: dict[str, ParamKind] = {
    "lr": ParamKind(float, *TRAINER["lr"], "--lr", "train"),
    "weight_decay": ParamKind(float, *TRAINER["weight_decay"], "--weight-decay", "train"),
    "blocks": ParamKind(int, *TRAINER["blocks"], "--blocks", "train"),
    "channels": ParamKind(int, *TRAINER["channels"], "--channels", "train"),
    "seed": ParamKind(int, 0, 2**31 - 1, "--seed", "train"),
    "batch_size": ParamKind(int, 1, 1 << 20, "TRAIN_BATCH_SIZE", "env"),
    "epochs": ParamKind(int, *TRAINER["epochs"], "--epochs", "cycle"),
    "dataset": ParamKind(str, None, None, "--dataset-dir", "cycle"),
}

# [sweep] keys besides the parameters' base values.
# Trials at a time: each is a pod that bills and a cycle process on this machine (its SSH
# sessions, its rsync), so a few dozen is already much for one host.
MAX_PARALLEL = 64

SWEEP_KEYS = ("name", "objective", "trials", "parallel", "prune", "prune_startup_trials",
              "prune_warmup_epochs", "max_cost", "max_minutes", "gpu_type_id", "cloud",
              "seed_sampler", "strength_games", "strength_opponent")
PARAM_KEYS = ("grid", "choices", "low", "high", "log", "type")


@dataclass
class Param:
    name: str
    kind: str  # grid | choices | float | int
    values: list[Any] = field(default_factory=list)  # grid or choices
    low: float | None = None
    high: float | None = None
    log: bool = False

    def as_dict(self) -> dict[str, Any]:
        if self.kind in ("grid", "choices"):
            return {"name": self.name, "kind": self.kind, "values": list(self.values)}
        return {"name": self.name, "kind": self.kind, "low": self.low, "high": self.high,
                "log": self.log}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Param:
        return cls(name=data["name"], kind=data["kind"], values=list(data.get("values") or []),
                   low=data.get("low"), high=data.get("high"), log=bool(data.get("log")))

    def describe(self) -> str:
        if self.kind in ("grid", "choices"):
            return f"{self.kind} {self.values}"
        return f"{self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass
class SweepConfig:
    path: str  # the file, for messages
    objective: str = "val_loss"
    trials: int | None = None
    parallel: int = 1
    prune: bool = False
    prune_startup_trials: int = 2
    prune_warmup_epochs: int = 0
    max_cost: float | None = None
    max_minutes: float | None = None
    gpu_type_id: str | None = None
    cloud: str | None = None
    seed_sampler: int | None = None
    strength_games: int = 0
    strength_opponent: str | None = None
    name: str | None = None
    base: dict[str, Any] = field(default_factory=dict)  # base values of parameters
    params: dict[str, Param] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def all_grid(self) -> bool:
        return self.grid_size is not None

    @property
    def grid_size(self) -> int | None:
        """The grid's combinations; None when a parameter is a distribution."""
        return grid_combinations(self.params.values())


# A grid's most combinations: Optuna's GridSampler lists every one in memory, whatever the
# trials asked (3,000 x 1,000 x 64 values ran out of memory), and a sweep runs at most
# 10,000 trials.
MAX_GRID = 10_000


def grid_combinations(params: Iterable[Param]) -> int | None:
    """How many combinations the parameters make when every one is a grid; None when one is
    a distribution (which has no size)."""
    params = list(params)
    if not all(p.kind == "grid" for p in params):
        return None
    return math.prod(len(p.values) for p in params)


def _where(path: str, table: str, key: str) -> str:
    return f"{path}: [{table}] {key}"


def _refuse(path: str, table: str, key: str, problem: str, remedy: str) -> ConfigError:
    return ConfigError(f"{_where(path, table, key)} {problem}", remedy)


def _shown(value: Any) -> str:
    if isinstance(value, bool):  # as the file wrote it: TOML's true, not Python's True
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "..."


def check_value(path: str, table: str, key: str, name: str, value: Any) -> Any:
    """A parameter's value (base, grid item or choice) of the right type and range."""
    spec = PARAMS[name]
    if spec.kind is str:
        if not isinstance(value, str) or not value.strip():
            raise _refuse(path, table, key, f"must be a folder path (a string), got "
                          f"{_shown(value)}", f"e.g. {key} = \"data/dataset/_smoke_runpod\"")
        return value
    return _number(path, table, key, value, spec.kind, spec.minimum, spec.maximum)


def _number(path: str, table: str, key: str, value: Any, kind: type,
            minimum: float | None, maximum: float | None) -> Any:
    what = "an integer" if kind is int else "a number"
    bounds = config._range(kind, minimum, maximum)
    remedy = f"give {key} {what}" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(path, table, key, f"must be {what}, got {_shown(value)}", remedy)
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(path, table, key, f"must be a finite number, got {value!r}", remedy)
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise _refuse(path, table, key, f"must be {what}, got {value!r}", remedy)
            value = int(value)
    else:
        value = float(value)
    if minimum is not None and value < minimum:
        raise _refuse(path, table, key, f"must be at least {config._fmt(minimum, kind)}, "
                      f"got {value!r}", remedy)
    if maximum is not None and value > maximum:
        raise _refuse(path, table, key, f"must be at most {config._fmt(maximum, kind)}, "
                      f"got {value!r}", remedy)
    return value


def load(path: Path) -> SweepConfig:
    """Read and check a sweep file; ConfigError (file and key named) on the first problem."""
    from podcycle.files import MAX_CONFIG_BYTES, read_regular, toml_text

    shown = str(path)
    try:
        # /dev/zero read until the memory ran out; a FIFO waited for ever.
        raw = read_regular(path, limit=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such sweep file",
                          "pass --config with an existing file, e.g. config/sweep.toml") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot be read ({exc.strerror})",
                          "pass --config with a readable file") from None
    remedy = "fix the file (see config/sweep.toml for the format)"
    return parse(config.toml_loads(toml_text(raw, shown), shown, remedy), shown)


def _refuse_secrets(data: dict[str, Any], path: str) -> None:
    """Refuse a file whose text values (or keys) are, or hold, a secret this machine is
    configured with (the RunPod key pasted as the sweep's name): the name became the sweep's
    folder, and the key was written in clear into its journal, logs and reports, and listed
    by sweep.status once no longer in the environment to mask it. Its place is named, never
    its value, as the flags' own check does (cli.secret_argument)."""
    from podcycle.config import register_written_secrets
    from podcycle.redact import holds_secret

    register_written_secrets()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str) and holds_secret(value):
            raise ConfigError(
                f"{path}: {where} is, or holds, a secret this machine is configured with (the "
                "RunPod API key?), so the file is not used: pasted in the wrong place?",
                "give it what it names; the key goes in --api-key, RUNPOD_API_KEY or the "
                "keyring")
        items = value.items() if isinstance(value, dict) else enumerate(value) \
            if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(key, str):
                walk(key, f"a name in {where}")  # named without itself
                walk(item, f"{where} {key}" if where.endswith("]") else f"{where}.{key}")
            else:
                walk(item, f"{where}[{key}]")

    for table, value in data.items():
        walk(table, "a table's name")
        if table == "params" and isinstance(value, dict):
            for name, spec in value.items():
                walk(name, "a name in [params]")
                walk(spec, f"[params.{name}]")
        else:
            walk(value, f"[{table}]")


def parse(data: dict[str, Any], path: str) -> SweepConfig:
    _refuse_secrets(data, path)
    for table, value in data.items():
        if table in ("sweep", "params"):
            continue
        tables = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        if isinstance(value, dict) or tables:  # [x], or [[x]] (an array of tables)
            raise ConfigError(f"{path}: unknown table [{table}]",
                              "a sweep file has [sweep] and [params.NAME] tables")
        # `trials = 4` above the first header: it was "unknown table [trials]".
        raise ConfigError(f"{path}: {printable(table)} is set outside any table",
                          "write the sweep's settings under a [sweep] header, and each "
                          "parameter's under its [params.NAME]")
    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: sweep must be a table ([sweep])",
                          "write the settings under a [sweep] header")
    cfg = SweepConfig(path=path)
    for key, value in sweep.items():
        if key in PARAMS:
            cfg.base[key] = check_value(path, "sweep", key, key, value)
            continue
        if key not in SWEEP_KEYS:
            raise _refuse(path, "sweep", key, "is not a sweep setting",
                          f"known: {', '.join(SWEEP_KEYS)}, and base values of the "
                          f"parameters ({', '.join(PARAMS)})")
        _sweep_key(cfg, path, key, value)
    params = data.get("params", {})
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: [params] has no parameter to sweep",
                          "add one, e.g. [params.lr] with grid = [0.001, 0.003]")
    for name, spec in params.items():
        cfg.params[name] = _param(path, name, spec)
    check(cfg)
    return cfg


def _sweep_key(cfg: SweepConfig, path: str, key: str, value: Any) -> None:
    table = "sweep"
    if key == "objective":
        if value not in OBJECTIVES:
            raise _refuse(path, table, key, f"{_shown(value)} is not an objective",
                          f"use one of: {', '.join(OBJECTIVES)}")
        cfg.objective = value
    elif key == "trials":
        cfg.trials = _number(path, table, key, value, int, 1, 10_000)
    elif key == "parallel":
        cfg.parallel = _number(path, table, key, value, int, 1, MAX_PARALLEL)
    elif key == "prune":
        if not isinstance(value, bool):
            raise _refuse(path, table, key, f"must be true or false, got {_shown(value)}",
                          "e.g. prune = true")
        cfg.prune = value
    elif key in ("prune_startup_trials", "prune_warmup_epochs", "strength_games"):
        setattr(cfg, key, _number(path, table, key, value, int, 0, 10_000))
    elif key == "seed_sampler":
        cfg.seed_sampler = _number(path, table, key, value, int, 0, 2**31 - 1)
    elif key == "max_cost":
        cfg.max_cost = _number(path, table, key, value, float, config.GUARD_MIN_COST,
                               config.GUARD_MAX_COST)
    elif key == "max_minutes":
        cfg.max_minutes = _number(path, table, key, value, float, config.GUARD_MIN_MINUTES,
                                  config.GUARD_MAX_MINUTES)
    elif key == "cloud":
        if value not in config.CLOUDS:
            raise _refuse(path, table, key, f"{_shown(value)} is not a cloud",
                          f"use one of: {', '.join(config.CLOUDS)}")
        cfg.cloud = value
    else:  # name, gpu_type_id, strength_opponent: text
        if not isinstance(value, str) or not value.strip():
            raise _refuse(path, table, key, f"must be a non-empty string, got {_shown(value)}",
                          f"e.g. {key} = \"...\", or leave it out")
        setattr(cfg, key, value.strip())


def _param(path: str, name: str, spec: Any) -> Param:
    table = f"params.{name}"
    if name not in PARAMS:
        raise ConfigError(f"{path}: [{table}] unknown parameter {name!r}",
                          f"the parameters are: {', '.join(PARAMS)}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: [{table}] must be a table",
                          f"e.g. [{table}] with grid = [...]")
    for key in spec:
        if key not in PARAM_KEYS:
            raise _refuse(path, table, key, "is not a parameter key",
                          f"a parameter takes grid = [...], choices = [...], or low, high, "
                          f"log and type ({', '.join(PARAM_KEYS)})")
    kind = PARAMS[name]
    given = [k for k in ("grid", "choices") if k in spec] + (
        ["low/high"] if "low" in spec or "high" in spec else [])
    if not given:
        raise ConfigError(f"{path}: [{table}] says neither grid, choices nor low/high",
                          "give grid = [...], choices = [...], or low and high")
    if len(given) > 1:
        raise ConfigError(f"{path}: [{table}] gives {' and '.join(given)}",
                          "give one of them")
    if given[0] in ("grid", "choices"):
        key = given[0]
        for extra in ("log", "type"):
            if extra in spec:
                raise _refuse(path, table, extra, f"does not go with {key}",
                              "log and type describe a low/high distribution")
        values = spec[key]
        if not isinstance(values, list):
            raise _refuse(path, table, key, f"must be a list, got {_shown(values)}",
                          f"e.g. {key} = [1, 2]")
        if not values:
            raise _refuse(path, table, key, "is empty", f"list at least one value, or "
                          f"remove [{table}]")
        checked = [check_value(path, table, f"{key}[{i}]", name, v)
                   for i, v in enumerate(values)]
        if len(set(map(repr, checked))) != len(checked):
            raise _refuse(path, table, key, "lists a value twice", "list each value once")
        return Param(name, key, checked)
    if kind.kind is str:
        raise ConfigError(f"{path}: [{table}] {name} takes grid or choices (folders), not "
                          "low/high", "e.g. grid = [\"data/dataset/_smoke_runpod\"]")
    for key in ("low", "high"):
        if key not in spec:
            raise _refuse(path, table, key, "is missing (a distribution needs low and high)",
                          f"add {key} = ...")
    type_name = spec.get("type", "int" if kind.kind is int else "float")
    if type_name not in ("float", "int"):
        raise _refuse(path, table, "type", f"must be \"float\" or \"int\", got "
                      f"{_shown(type_name)}", "e.g. type = \"float\"")
    if kind.kind is int and type_name == "float":
        raise _refuse(path, table, "type", f"is \"float\", but {name} is an integer",
                      "use type = \"int\" (or leave type out)")
    number = int if type_name == "int" else float
    low, high = (_number(path, table, key, spec[key], number, kind.minimum, kind.maximum)
                 for key in ("low", "high"))
    if low > high:
        raise ConfigError(f"{path}: [{table}] low ({low:g}) > high ({high:g})",
                          "swap them, or give low <= high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _refuse(path, table, "log", f"must be true or false, got {_shown(log)}",
                      "e.g. log = true")
    if log and low <= 0:
        raise _refuse(path, table, "log", f"= true needs low > 0, got low = {low:g}",
                      "raise low above 0, or use log = false")
    return Param(name, type_name, low=low, high=high, log=log)


def check(cfg: SweepConfig) -> None:
    """The checks between keys (also after flags changed some)."""
    path = cfg.path
    if cfg.grid_size is not None and cfg.grid_size > MAX_GRID:
        widest = max(cfg.params.values(), key=lambda p: len(p.values))
        raise ConfigError(
            f"{path}: the grid makes {cfg.grid_size:,} combinations "
            f"({' x '.join(str(len(p.values)) for p in cfg.params.values())}), more than "
            f"the {MAX_GRID:,} a sweep can hold",
            f"give fewer values, or make the widest, [params.{widest.name}], a range (low and "
            "high) and set trials")
    if cfg.grid_size is not None:
        if cfg.trials is not None and cfg.trials > cfg.grid_size:
            raise _refuse(path, "sweep", "trials", f"({cfg.trials}) is more than the grid's "
                          f"{cfg.grid_size} combination(s)",
                          f"use trials = {cfg.grid_size} or fewer (or leave it out)")
    elif cfg.trials is None:
        raise _refuse(path, "sweep", "trials", "is missing: a distribution has no size",
                      "e.g. trials = 8")
    if cfg.prune and cfg.objective == "strength":
        raise _refuse(path, "sweep", "prune", "cannot prune on the strength objective (the "
                      "match is played after training, not per epoch)",
                      "use prune = false, or objective = \"val_loss\"")
    if cfg.objective == "strength" and (cfg.strength_games < 2 or cfg.strength_games % 2):
        raise _refuse(path, "sweep", "strength_games", f"must be an even number of at least 2 "
                      f"for the strength objective, got {cfg.strength_games}",
                      "e.g. strength_games = 8")
    if cfg.objective != "strength" and cfg.strength_games:
        raise _refuse(path, "sweep", "strength_games", "is only for objective = \"strength\"",
                      "remove it, or set objective = \"strength\"")
    if cfg.max_cost is not None and cfg.max_minutes is None:
        raise _refuse(path, "sweep", "max_minutes", "is missing: a budget (max_cost) needs "
                      "each trial's time bound to know its worst case (price x minutes)",
                      "e.g. max_minutes = 20 (or --max-minutes)")


@dataclass
class Overrides:
    """sweep.run's flags over the file (validated like the file's keys)."""
    parallel: int | None = None
    trials: int | None = None
    max_cost: float | None = None
    max_minutes: float | None = None
    dataset: str | None = None
    epochs: int | None = None
    name: str | None = None


def apply(cfg: SweepConfig, flags: Overrides) -> SweepConfig:
    """Flags beat the file's [sweep] keys; -d/-e give the base every trial starts from, and
    a [params.dataset] / [params.epochs] overrides it per trial."""
    for key in ("parallel", "trials", "max_cost", "max_minutes", "name"):
        value = getattr(flags, key)
        if value is not None:
            setattr(cfg, key, value)
    if flags.dataset is not None:
        cfg.base["dataset"] = flags.dataset
    if flags.epochs is not None:
        cfg.base["epochs"] = flags.epochs
    if flags.trials is not None and cfg.grid_size is not None and flags.trials > cfg.grid_size:
        # check() named the file's `trials`, which the file may not even have.
        raise ConfigError(f"--trials {flags.trials} is more than the {cfg.grid_size} "
                          f"combination(s) of {cfg.path}'s grid",
                          f"use --trials {cfg.grid_size} or fewer (or leave it out)")
    check(cfg)
    return cfg


def check_flags(flags: Overrides) -> Overrides:
    """The flags' numbers, each refused naming the flag."""
    flags.parallel = config.parse_number("--parallel", flags.parallel, int, minimum=1,
                                         maximum=MAX_PARALLEL, example=2)
    flags.trials = config.parse_number("--trials", flags.trials, int, minimum=1,
                                       maximum=10_000, example=4)
    flags.max_cost = config.parse_number("--max-cost", flags.max_cost, float,
                                         minimum=config.GUARD_MIN_COST,
                                         maximum=config.GUARD_MAX_COST, example=5)
    flags.max_minutes = config.parse_number("--max-minutes", flags.max_minutes, float,
                                            minimum=config.GUARD_MIN_MINUTES,
                                            maximum=config.GUARD_MAX_MINUTES, example=30)
    flags.epochs = config.parse_number("--epochs", flags.epochs, int, minimum=1,
                                       maximum=10_000, example=1)
    return flags


# -- the budget ------------------------------------------------------------------------------
def trial_share(price_per_hour: float, max_minutes: float) -> float:
    """A trial's worst case: the price for its time bound (its pod's spend guard stops it
    there), rounded up to 1/100 cent. It was raised to the guard's least --max-cost ($0.01),
    which a short bound on a cheap GPU does not reach: 2 min at $0.24/h reserved $0.0100 for
    a $0.0080 trial, and a budget that held another trial ended the sweep."""
    cost = price_per_hour * max_minutes / 60
    return math.ceil(cost * 10_000 - 1e-6) / 10_000


def guard_cost(share: float) -> float:
    """The --max-cost a trial's pod carries for its `share`: the share, but never under the
    guard's least; the time bound stops the pod first then."""
    return max(share, config.GUARD_MIN_COST)


def may_start(budget: float | None, spent: float, running: list[float], share: float) -> bool:
    """The budget rule: a trial starts only when what was spent, plus every running trial's
    worst case, plus its own worst case (its share) stays within the budget."""
    if budget is None:
        return True
    return spent + sum(running) + share <= budget + 1e-9


# -- the objective ---------------------------------------------------------------------------
def objective_value(objective: str, metrics: dict[str, Any] | None,
                    strength: dict[str, Any] | None) -> float:
    """The trial's value: val loss or top-1 of the last epoch (metrics.json), or the strength
    match's score (0..1, the model's points per game). ValueError says what is missing."""
    if objective == "strength":
        if not strength or strength.get("score") is None:
            raise ValueError("the run has no strength result")
        forfeits = [f for f in strength.get("failures") or [] if f.get("loser") == "opponent"]
        if forfeits:  # a score the opponent's crashes made measures the opponent, not the model
            raise ValueError(f"{len(forfeits)} of its {strength.get('games')} strength games "
                             "were won by the opponent's failure (a crash, a hang, an illegal "
                             "move), not by play: check strength_opponent")
        failures, games = strength.get("failures") or [], strength.get("games") or 0
        if games and len(failures) >= games:  # a 0 made of its own engine's crashes
            raise ValueError(f"every one of its {games} strength games ended by its engine's "
                             "failure (a crash, a hang or an illegal move), not by play: the "
                             "trial's log says why")
        value = float(strength["score"])
    else:
        epochs = (metrics or {}).get("epochs") or []
        last = (metrics or {}).get("final") or (epochs[-1] if epochs else None)
        if not last or last.get(objective) is None:
            raise ValueError(f"the run's metrics.json has no {objective}")
        value = float(last[objective])
    if not math.isfinite(value):
        raise ValueError(f"{objective} is {value}")
    return value
