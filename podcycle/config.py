"""Settings layering, highest first: CLI flag → environment → `.env` in the working directory →
`invoke.yaml` → defaults (`tasks/__init__.py`, passed in as the Invoke config section).

The RunPod API key has its own order (the seed's): `--api-key`, `RUNPOD_API_KEY` (environment,
then `.env`), keyring (`service=runpod`, `username=RUNPOD_API_KEY`). It is never read from
`invoke.yaml`: a secret does not belong in a committed file.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chessbot.train_args import RANGES as TRAINER
from podcycle import PROJECT_ROOT
from podcycle.errors import ConfigError
from podcycle.redact import has_control, redact, register_secret

KEYRING_SERVICE = "runpod"
KEYRING_USERNAME = "RUNPOD_API_KEY"
BACKENDS = ("auto", "runpod", "local")
CLOUDS = ("secure", "community", "all")


@dataclass(frozen=True)
class Spec:
    env: str
    kind: type = str
    minimum: float | None = None  # numeric settings: the range every layer must respect
    maximum: float | None = None
    example: float | None = None  # a value the remedy of a refusal suggests


# The spend guard's bounds (--max-minutes, --max-cost): below half a minute a pod is stopped
# before it can boot; past 30 days a "guard" guards nothing. A real RunPod pod needs minutes
# to pull its image and boot: the help says so.
GUARD_MIN_MINUTES = 0.5
GUARD_MAX_MINUTES = 30 * 24 * 60
GUARD_MIN_COST = 0.01
GUARD_MAX_COST = 10_000.0
# Nodes of a RunPod Instant Cluster (--nodes): 1 is a plain pod; CreateClusterRequest's
# compute.podCount allows 2 to 250.
MAX_NODES = 250
# The CUDA version of the pod image's base (deploy/runpod_cloud_training/Dockerfile's FROM):
# a host whose driver offers less leaves torch without its GPU while the pod bills.
IMAGE_CUDA = "12.8"
CUDA_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")


# Setting name → environment variable and type. Names are the keys of the `podcycle` section
# of the Invoke config (invoke.yaml) and of the flag mapping the tasks pass in.
SPECS: dict[str, Spec] = {
    "backend": Spec("RUNPOD_BACKEND"),
    "api_base_url": Spec("RUNPOD_API_BASE_URL"),
    "template_name": Spec("RUNPOD_TEMPLATE_NAME"),
    "template_id": Spec("RUNPOD_TEMPLATE_ID"),
    "pod_name": Spec("RUNPOD_POD_NAME"),
    "gpu_type_id": Spec("RUNPOD_GPU_TYPE_ID"),
    "gpu_count": Spec("RUNPOD_GPU_COUNT", int, 1, 16),
    "nodes": Spec("RUNPOD_NODES", int, 1, MAX_NODES),
    "data_center": Spec("RUNPOD_DATA_CENTER"),
    "cloud": Spec("RUNPOD_CLOUD"),
    "min_cuda_version": Spec("RUNPOD_MIN_CUDA_VERSION"),
    "max_price": Spec("RUNPOD_MAX_PRICE", float, 0, 1000),
    "max_minutes": Spec("RUNPOD_MAX_MINUTES", float, GUARD_MIN_MINUTES,
                        GUARD_MAX_MINUTES),
    "max_cost": Spec("RUNPOD_MAX_COST", float, GUARD_MIN_COST, GUARD_MAX_COST),
    "network_volume": Spec("RUNPOD_NETWORK_VOLUME"),
    "ssh_key": Spec("RUNPOD_SSH_KEY", Path),
    "ssh_user": Spec("RUNPOD_SSH_USER"),
    "ssh_host": Spec("RUNPOD_SSH_HOST"),
    "ssh_port": Spec("RUNPOD_SSH_PORT", int, 1, 65535, example=22),
    "run_id": Spec("RUNPOD_CYCLE_RUN_ID"),
    "artifacts_dir": Spec("POD_CYCLE_ARTIFACTS_DIR", Path),
    "local_dir": Spec("POD_CYCLE_LOCAL_DIR", Path),
    "sweeps_dir": Spec("POD_CYCLE_SWEEPS_DIR", Path),
    "dataset_dir": Spec("RUNPOD_DATASET_DIR", Path),
    "ready_timeout": Spec("RUNPOD_READY_TIMEOUT", float, 1, 86400),
    "train_epochs": Spec("TRAIN_EPOCHS", int, *TRAINER["epochs"]),
    "train_batch_size": Spec("TRAIN_BATCH_SIZE", int, 1, 1 << 20),
    "train_blocks": Spec("TRAIN_BLOCKS", int, *TRAINER["blocks"]),
    "train_channels": Spec("TRAIN_CHANNELS", int, *TRAINER["channels"]),
    "image_repo": Spec("IMAGE_REPO"),
    "push_image": Spec("PUSH_IMAGE", bool),
}


# The collection's defaults of the settings (tasks/__init__.py configures them as Invoke's
# `podcycle:` section; invoke.yaml overrides them). A value of that section equal to its
# default is said to come from the default, not from invoke.yaml.
DEFAULTS: dict[str, Any] = {
    "backend": "auto",
    "api_base_url": "https://api.runpod.io",
    "template_name": "chess-bot-training",
    "gpu_count": 1,
    "cloud": "secure",
    "min_cuda_version": IMAGE_CUDA,
    "ssh_key": "~/.ssh/id_ed25519",
    "artifacts_dir": "artifacts/runpod_cycles",
    "local_dir": ".pod-cycle/local",
    "dataset_dir": "data/dataset/_smoke_runpod",
    "ready_timeout": 600,
    "push_image": False,
}

# Folders whose relative default (or invoke.yaml value) lies in the project, not in the
# working directory.
PROJECT_PATHS = ("artifacts_dir", "local_dir", "dataset_dir", "sweeps_dir")

# Settings whose command-line flag has another name than the setting.
FLAG_NAMES = {"train_epochs": "--epochs", "pod_name": "--name", "image_repo": "--repo",
              "push_image": "--push"}


def _fmt(value: float, kind: type) -> str:
    return str(int(value)) if kind is int else f"{value:g}"


def _example(kind: type, minimum: float | None, maximum: float | None,
             example: float | None) -> float:
    """A value the parser itself accepts, for a remedy."""
    import math

    value: float = 1 if example is None else example
    if minimum is not None and value < minimum:
        value = math.ceil(minimum) if kind is int else minimum
    if maximum is not None and value > maximum:
        value = math.floor(maximum) if kind is int else maximum
    return value


def _range(kind: type, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"from {_fmt(minimum, kind)} to {_fmt(maximum, kind)}"
    if minimum is not None:
        return f"{_fmt(minimum, kind)} or more"
    if maximum is not None:
        return f"at most {_fmt(maximum, kind)}"
    return ""


NAME_MAX = 128


def toml_loads(text: str, where: str, remedy: str) -> dict[str, Any]:
    """A TOML file's text as data, or a ConfigError `WHERE: not valid TOML (why)` (the
    sweep file's and the template file's one reading: tomllib raises RecursionError, not a
    TOMLDecodeError, for a file nested past Python's stack)."""
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        why = str(exc)
    except RecursionError:
        why = "nested deeper than Python can read"
    raise ConfigError(f"{where}: not valid TOML ({why})", remedy)


def check_name(origin: str, value: Any, example: str = "chess-data") -> str:
    """A name for RunPod (a pod, a volume, a template) as the operator gave it, or a
    ConfigError naming `origin`: 1 to 128 characters, no control character (a newline
    breaks every table that lists it) and no space at either end (names are looked up by
    equality: `data ` is not `data`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{origin} is empty", f"pass a name, e.g. {example}")
    if has_control(value):
        raise ConfigError(f"{origin} {value!r} holds a control character (a line break, a "
                          "tab, an escape, a bidirectional override or one that shows as "
                          "nothing)",
                          "use letters, digits, spaces and punctuation")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes of the command line that are not UTF-8 (surrogates)
        raise ConfigError(f"{origin} {value!r} holds bytes that are not UTF-8 text (RunPod's "
                          "names are JSON text)", "use letters, digits, spaces and "
                          "punctuation, in a UTF-8 terminal") from None
    if value != value.strip():
        raise ConfigError(f"{origin} {value!r} begins or ends with a space",
                          f"use {value.strip()!r}")
    if len(value) > NAME_MAX:
        raise ConfigError(f"{origin} is {len(value)} characters long, over {NAME_MAX}",
                          "use a shorter name")
    return value


def parse_number(origin: str, value: Any, kind: type = int, *, minimum: float | None = None,
                 maximum: float | None = None, example: float | None = None) -> Any:
    """The one checked path for every number a user gives (flag, environment, .env,
    invoke.yaml): an int or a finite float within [minimum, maximum], else a one-line
    ConfigError naming `origin` (a flag such as --max-minutes, or RUNPOD_MAX_MINUTES) whose
    remedy suggests only a value this function accepts. None (not given) stays None."""
    import math
    import re

    if value is None:
        return None
    what = "an integer" if kind is int else "a number"
    bounds = _range(kind, minimum, maximum)
    suggestion = _fmt(_example(kind, minimum, maximum, example), kind)
    if origin.startswith("--"):
        remedy = f"e.g. {origin} {suggestion}" + (f" ({bounds})" if bounds else "")
    else:
        remedy = (f"set {origin} to e.g. {suggestion}" + (f" ({bounds})" if bounds else "")
                  + ", or unset it")

    def refuse(problem: str) -> ConfigError:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else f"{shown[:30]}... ({len(str(value))} chars)"
        return ConfigError(f"{origin} {problem}, got {shown}", remedy)

    if isinstance(value, bool):
        raise refuse(f"must be {what}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        number: float = value
    else:
        text = str(value).strip()
        if not text.isascii() or "_" in text:  # Python reads '٣' as 3 and '1_0' as 10
            raise refuse(f"must be {what} written with the digits 0-9")
        try:
            number = int(text) if kind is int else float(text)
        except ValueError:
            if kind is int and re.fullmatch(r"[+-]?\d[\d_]*", text):  # past int's digit limit
                raise refuse(f"must be {bounds or 'a smaller integer'}") from None
            raise refuse(f"must be {what}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise refuse(f"must be a finite number{f' {bounds}' if bounds else ''}")
    if kind is int and isinstance(number, float):
        if not number.is_integer():
            raise refuse(f"must be {what}")
        number = int(number)
    if kind is float:
        number = float(number) + 0.0  # -0 is 0: it was shown as "at most $-0/h"
    if minimum is not None and number < minimum:
        raise refuse(f"must be at least {_fmt(minimum, kind)}")
    if maximum is not None and number > maximum:
        raise refuse(f"must be at most {_fmt(maximum, kind)}")
    return number


def expand_path(text: str, origin: str) -> Path:
    """A folder or file setting as a Path, `~` and `~user` expanded: a user this machine does
    not know, or a NUL (which no path can hold), is said naming where it came from."""
    if "\0" in text:
        raise ConfigError(f"{origin} holds a NUL character, which no path can",
                          f"fix {origin}")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # Python's "Could not determine home directory."
        user = text[1:].split("/", 1)[0]
        raise ConfigError(
            f"{origin}: {text!r} starts with ~{user}, and this machine has no user "
            f"{user!r}" if user else f"{origin}: {text!r} starts with ~, and this machine "
            "knows no home folder for you (HOME is unset)",
            f"give {origin} a full path") from None


def _convert(name: str, raw: Any, spec: Spec, origin: str) -> Any:
    kind = spec.kind
    if isinstance(raw, str) and raw.strip() == "" and origin.startswith("--"):
        # An empty variable means unset, by convention; an empty flag is a mistake (a
        # `--run-id "$RUN"` whose RUN is unset) that must not turn into the default.
        raise ConfigError(f"{origin} is empty", f"give {origin} a value, or leave it out for "
                          "its default")
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    if kind in (int, float):
        return parse_number(origin, raw, kind, minimum=spec.minimum, maximum=spec.maximum,
                            example=spec.example)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is Path:
            if not isinstance(raw, str | Path):  # invoke.yaml: `artifacts_dir: [a, b]`
                raise TypeError(raw)
            return expand_path(str(raw), origin)
        if kind is str and isinstance(raw, float):
            # invoke.yaml: `min_cuda_version: 12.10` is the number 12.1 by then, a text no
            # more: taken, it would be another value than the one written.
            raise TypeError(raw)
        return kind(raw)
    except (TypeError, ValueError):
        what = {bool: "true or false", Path: "a path (a text)",
                str: "a text (quote it: YAML reads an unquoted 12.10 as the number 12.1)"}.get(
            kind, f"a valid {kind.__name__}")
        if origin.startswith("--"):
            raise ConfigError(f"{origin} must be {what}, got {raw!r}",
                              f"pass a valid value to {origin}") from None
        raise ConfigError(
            f"setting {name} from {origin} is not {what}: {raw!r}",
            f"fix or unset {origin}",
        ) from None


@dataclass
class Settings:
    backend: str = "auto"
    api_base_url: str = "https://api.runpod.io"
    template_name: str | None = None
    template_id: str | None = None
    pod_name: str | None = None
    gpu_type_id: str | None = None
    gpu_count: int = 1  # per node on a cluster
    nodes: int = 1  # 2 or more: a RunPod Instant Cluster of that many pods (podcycle.clusters)
    data_center: str | None = None  # a cluster's preferred data centre (dataCenterIds)
    cloud: str = "secure"
    # The lowest CUDA version a GPU pod's host driver must offer (gpu.minCudaVersion of the
    # create): the image's, so that no pod lands where torch cannot use its GPU; "any" omits it.
    min_cuda_version: str = IMAGE_CUDA
    max_price: float | None = None
    max_minutes: float | None = None  # the spend guard: the pod stops itself after this
    max_cost: float | None = None     # ... or after spending this many USD at its price
    network_volume: str | None = None  # name or id of the network volume new pods mount
    ssh_key: Path | None = None
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    run_id: str | None = None
    artifacts_dir: Path = Path("artifacts/runpod_cycles")
    local_dir: Path = Path(".pod-cycle/local")
    sweeps_dir: Path | None = None  # None: `sweeps/` beside the runs folder (sweep.sweeps_root)
    dataset_dir: Path = Path("data/dataset/_smoke_runpod")
    ready_timeout: float = 600.0
    train_epochs: int | None = None
    train_batch_size: int | None = None
    # The model's size (residual blocks x channels) the cycle trains; None: the backend's
    # preset (6x64 on a GPU pod, 4x32 on the local RunPod's CPU pods).
    train_blocks: int | None = None
    train_channels: int | None = None
    image_repo: str | None = None
    push_image: bool = False
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str = "none"
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")


def undo(origin: str, flag: str) -> str:
    """How to take back a setting, in words, by where it came from (Settings.source): the
    flag left out, the variable unset, the line removed from .env or a config file."""
    if origin == flag and flag.startswith("-"):
        return f"leave out {flag}"
    if origin.endswith(" in .env"):
        return f"remove {origin.split()[0]} from .env"
    if origin.startswith("podcycle.") and " in " in origin:
        key, file = origin.split(" in ", 1)
        return f"remove {key} from {file}"
    return f"unset {origin}"


_DOTENV_WARNED: set[Path] = set()


def read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    import logging

    from dotenv import dotenv_values

    # python-dotenv logs "could not parse statement starting at line N" naming no file; the
    # line numbers are kept and said with the file's path (never the line: it may be a key).
    skipped: list[int] = []

    class Skipped(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            skipped.extend(a for a in record.args or () if isinstance(a, int))

    logger = logging.getLogger("dotenv.main")
    handler, propagate = Skipped(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        values = dotenv_values(path)
    except UnicodeDecodeError as exc:  # its text is never shown: it may hold the key
        raise ConfigError(
            f"{path} is not UTF-8 text (a byte at offset {exc.start} cannot be read)",
            "save .env as UTF-8 (or move it away): it holds KEY=value lines, see .env.example",
        ) from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if skipped and path not in _DOTENV_WARNED:  # once per process, however often it is read
        _DOTENV_WARNED.add(path)
        lines = ", ".join(str(n) for n in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        say(f"warning: {path}: line(s) {lines} are no KEY=value lines and were skipped "
            "(.env.example shows the settings)")
    return {k: v for k, v in values.items() if v is not None}


def keyring_api_key() -> str | None:
    """The key stored in the OS keyring, or None (no backend is not an error)."""
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            return keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME) or None
        except (KeyringError, RuntimeError, OSError):
            return None
    except Exception:  # noqa: BLE001 - a broken keyring install must not stop the tool
        return None


def resolve(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_path: Path | None = None,
    use_keyring: bool = True,
    config_files: Mapping[str, str] | None = None,
) -> Settings:
    """The settings, each from its highest layer (README: Settings). `config_files` names
    the file a `config` value came from where it is not invoke.yaml (Invoke's -f file), for
    the messages that name a setting's origin."""
    flags = dict(flags or {})
    config = dict(config or {})
    config_files = dict(config_files or {})
    environ = os.environ if environ is None else environ
    if dotenv_path is None:
        # The working directory's .env, else the project's: Invoke finds tasks/ from any
        # folder below the project, and from data/ the project's .env went unread (its
        # POD_CYCLE_ARTIFACTS_DIR too: pod.leftovers --stop then saw no run of its own).
        dotenv_path = Path.cwd() / ".env"
        if not dotenv_path.is_file():
            dotenv_path = PROJECT_ROOT / ".env"
    dotenv = read_dotenv(dotenv_path)
    settings = Settings()
    known = {f.name for f in fields(Settings)}
    for name, spec in SPECS.items():
        layers = (
            (FLAG_NAMES.get(name, f"--{name.replace('_', '-')}"), flags.get(name)),
            (spec.env, environ.get(spec.env)),
            (f"{spec.env} in .env", dotenv.get(spec.env)),
            ("default" if name in DEFAULTS and config.get(name) == DEFAULTS[name]
             and type(config.get(name)) is type(DEFAULTS[name])  # true is no 1
             else f"podcycle.{name} in {config_files.get(name, 'invoke.yaml')}",
             config.get(name)),
        )
        for origin, raw in layers:
            value = _convert(name, raw, spec, origin)
            if value is not None:
                if name in known:
                    setattr(settings, name, value)
                settings.sources[name] = origin
                break
    # A folder the defaults or invoke.yaml give as a relative path is the project's: Invoke
    # finds tasks/ from any folder below it, and `inv pod.leftovers --stop` run from data/
    # read data/artifacts/..., found no run folder, and stopped the pods of live runs. One
    # given by flag, environment or .env stays relative to the working directory.
    for name in PROJECT_PATHS:
        value, origin = getattr(settings, name), settings.source(name)
        if value is not None and (origin == "default" or origin.startswith("podcycle.")) \
                and not value.is_absolute():
            setattr(settings, name, PROJECT_ROOT / value)
    for name, spec in SPECS.items():  # a relative path in a .env is from the .env's folder
        value = getattr(settings, name, None)
        if spec.kind is Path and isinstance(value, Path) and not value.is_absolute() \
                and settings.source(name).endswith(" in .env"):
            setattr(settings, name, dotenv_path.absolute().parent / value)
    # The local backend needs no RunPod key: asked for by name, it does not read the OS
    # keyring (which may ask to be unlocked, and costs every command its import). A key given
    # by flag, environment or .env is still taken, and masked.
    settings.api_key, settings.api_key_source = _resolve_api_key(
        flags.get("api_key"), environ, dotenv, use_keyring and settings.backend != "local"
    )
    _refuse_the_key_elsewhere(settings)
    _validate(settings)
    return settings


def _refuse_the_key_elsewhere(settings: Settings) -> None:
    """The RunPod key pasted into another setting (RUNPOD_CLOUD=KEY, IMAGE_REPO=KEY, a folder
    named after it): it was echoed in refusals (lowercased, past the mask), written into
    run folders, or sent to RunPod as a name. Refused before any of that, never shown."""
    key = (settings.api_key or "").strip()
    if len(key) < 6:
        return
    for name in SPECS:
        value = getattr(settings, name, None)
        if name == "api_key" or not isinstance(value, (str, Path)):
            continue
        if key.lower() in str(value).lower():
            raise ConfigError(f"{settings.source(name)} holds the RunPod API key (pasted in "
                              "the wrong place?)",
                              f"set {settings.source(name)} to what it names; the key goes in "
                              "--api-key, RUNPOD_API_KEY or the keyring")


_configured_registered = False  # once a process: what it is configured with does not change


def register_configured_secrets() -> None:
    """Mask every key this machine is configured with, before any task has resolved its
    settings: a refusal of the command line (a stray word that is the key, pasted where a
    pod id belongs) is printed before that. The RunPod key from the environment, either
    .env and the OS keyring, and the environment's other secrets (HF_TOKEN, ...). Called on
    that refusal's path only: the keyring's import costs every command otherwise."""
    global _configured_registered
    if _configured_registered:
        return
    _configured_registered = True  # first: reading a .env may say a warning, which masks
    keyed, backend = register_written_secrets()
    argv = sys.argv[1:]
    for at, word in enumerate(argv):  # the command line's own choice wins
        if word in ("-b", "--backend") and at + 1 < len(argv):
            backend = argv[at + 1]
        elif word.startswith("--backend="):
            backend = word.split("=", 1)[1]
    # A local run never reads the keyring (README): it may ask to be unlocked, or wait; nor
    # does a run whose key comes from elsewhere (say() masks through here, every command).
    if not keyed and (backend or "").strip().lower() != "local":
        _register_forms(keyring_api_key())


def _register_forms(value: str | None) -> None:
    """A secret as written and as used (_cleaned: without quotes or a line break around
    it): a key given in quotes works, and its unquoted form is what a message may hold."""
    if value:
        register_secret(value.strip())
        register_secret(_cleaned(value))


_written_registered: tuple[bool, str | None] | None = None


def register_written_secrets() -> tuple[bool, str | None]:
    """The secrets this machine's environment and .env files give (RUNPOD_API_KEY, HF_TOKEN,
    ...), registered for masking: cheap, no keyring. Returns whether a RunPod key is among
    them (or on the command line), and the backend they name. Once a process."""
    global _written_registered
    if _written_registered is not None:
        return _written_registered
    _written_registered = (True, None)  # first: a .env's warning is said, and masks
    from podcycle.redact import is_secret_name

    for name, value in os.environ.items():
        if name == "RUNPOD_API_KEY" or is_secret_name(name):
            _register_forms(value)
    backend = os.environ.get("RUNPOD_BACKEND")
    # The keyring is the key's last source, as _resolve_api_key takes them: read only when
    # no earlier one gives a key (--api-key is registered with the command line).
    keyed = any(word == "--api-key" or word.startswith("--api-key=") for word in sys.argv[1:]) \
        or bool(os.environ.get("RUNPOD_API_KEY", "").strip())
    for path in {Path.cwd() / ".env", PROJECT_ROOT / ".env"}:
        try:
            values = read_dotenv(path)
        except (ConfigError, OSError, ValueError, RecursionError):
            continue  # the task that reads it says what is wrong with it
        if values.get("RUNPOD_API_KEY", "").strip():
            _register_forms(values["RUNPOD_API_KEY"])
            keyed = True
        backend = backend or values.get("RUNPOD_BACKEND")
    _written_registered = (keyed, backend)
    return _written_registered


def masked(text: str) -> str:
    """`text` with every configured secret masked, for what is printed before a task resolves
    its settings (see register_configured_secrets)."""
    try:
        register_configured_secrets()
    except Exception:  # noqa: BLE001 - said all the same, masked as far as known
        pass
    return redact(text)


def _resolve_api_key(
    flag: str | None, environ: Mapping[str, str], dotenv: Mapping[str, str], use_keyring: bool
) -> tuple[str | None, str]:
    if flag is not None and not _cleaned(str(flag)):
        raise ConfigError("--api-key is empty", "leave --api-key out to use RUNPOD_API_KEY or "
                          "the keyring, or pass the key (a flag shows in ps: prefer those)")
    candidates = (
        ("--api-key", flag),
        ("RUNPOD_API_KEY", environ.get("RUNPOD_API_KEY")),
        ("RUNPOD_API_KEY in .env", dotenv.get("RUNPOD_API_KEY")),
    )
    for source, value in candidates:
        if value and _cleaned(value):
            register_secret(_cleaned(value))
            return _header_safe(_cleaned(value), source), source
    if use_keyring:
        value = keyring_api_key()
        if value and _cleaned(value):
            register_secret(_cleaned(value))
            source = f"keyring (service={KEYRING_SERVICE}, username={KEYRING_USERNAME})"
            return _header_safe(_cleaned(value), source), source
    return None, "none"


def _cleaned(key: str) -> str:
    """The key as pasted, less what cannot be part of it (RunPod's keys are letters, digits
    and '_'): the spaces and line break around it (`echo KEY | secret-tool store` keeps the
    newline, which the keyring then gave back and the header check refused, while the same
    key from the environment worked), and quotes around it (RUNPOD_API_KEY='"KEY"' was sent
    as it was, and RunPod's 401 read as a revoked key)."""
    key = key.strip()
    while len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        key = key[1:-1].strip()
    return key


def _header_safe(key: str, source: str) -> str:
    """The key goes in an Authorization header: a space, a line break or a non-ASCII
    character there is a copy-paste accident (RunPod's keys are printable ASCII), refused in
    one line that never shows the key, instead of an encoding traceback or a request that
    fails as if the network were down."""
    if all("!" <= ch <= "~" for ch in key):
        return key
    raise ConfigError(
        f"the RunPod API key from {source} holds a character no HTTP header can carry "
        "(a space, a line break or a non-ASCII character)",
        "copy the key again from the RunPod console (Settings → API Keys) and set it anew")


# The folders pod-cycle writes into (runs, the local RunPod's state): one that names a file
# read as empty (runs.list: "no runs under /etc/passwd", exit 0) or failed later on a bare
# "Not a directory" naming no setting.
WRITTEN_FOLDERS = ("artifacts_dir", "local_dir")


def check_folder(path: Path, origin: str, flag: str | None = None) -> None:
    """Refuse a folder setting that names something other than a folder (a file, a broken
    link), or a path under one, naming where it came from: `origin` (a flag, a variable, a
    config key; "default" for the default), `flag` its flag if it has one. A loop of links is
    left to be named where the path is resolved (cli.guarded)."""
    import stat

    found = path
    while not os.path.lexists(found):
        if found.parent == found:
            return  # nothing of it exists yet: made when needed
        found = found.parent
    try:
        if stat.S_ISDIR(os.stat(found).st_mode):
            return
        what = "not a folder (a file?)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return
        what = "a broken link"
    source = f"the default of {flag}" if origin == "default" else f"from {origin}"
    problem = (f"{path} ({source}) is {what}" if found == path
               else f"{path} ({source}): {found} is {what}")
    if origin == "default":
        raise ConfigError(problem, f"move it away, or give {flag} a folder")
    raise ConfigError(problem, f"point it at a folder, or {undo(origin, flag or origin)}")


def _validate(settings: Settings) -> None:
    for name in WRITTEN_FOLDERS:
        check_folder(getattr(settings, name), settings.source(name),
                     FLAG_NAMES.get(name, f"--{name.replace('_', '-')}"))
    if settings.sweeps_dir is not None:  # no flag: its variable is how it is given
        check_folder(settings.sweeps_dir, settings.source("sweeps_dir"),
                     SPECS["sweeps_dir"].env)
    if settings.backend not in BACKENDS:
        raise ConfigError(
            f"unknown backend {settings.backend!r} (from {settings.source('backend')})",
            f"use one of: {', '.join(BACKENDS)}",
        )
    settings.cloud = settings.cloud.lower()
    if settings.cloud not in CLOUDS:
        raise ConfigError(
            f"unknown cloud {settings.cloud!r} (from {settings.source('cloud')})",
            f"use one of: {', '.join(CLOUDS)}",
        )
    if settings.pod_name is not None:
        check_name(settings.source("pod_name"), settings.pod_name)
    for name, value in (("ssh_host", settings.ssh_host), ("ssh_user", settings.ssh_user)):
        if value is not None:
            from podcycle.runpod.models import HOST_AND_PORT, ssh_target_problem

            problem = (ssh_target_problem(value, "root", 22) if name == "ssh_host"
                       else ssh_target_problem("localhost", value, 22))
            given = HOST_AND_PORT.fullmatch(value) if name == "ssh_host" else None
            if problem and given:
                raise ConfigError(f"RUNPOD_SSH_HOST (from {settings.source(name)}): the "
                                  f"{problem}",
                                  f"set RUNPOD_SSH_HOST={given[1]} RUNPOD_SSH_PORT="
                                  f"{given[2]}")
            if problem:
                raise ConfigError(f"{SPECS[name].env} (from {settings.source(name)}): the "
                                  f"{problem}", f"set {SPECS[name].env} to a "
                                  f"{'host name' if name == 'ssh_host' else 'user name'}, "
                                  "or unset it")
    if settings.gpu_count < 1:
        raise ConfigError("gpu count must be at least 1", "pass --gpu-count 1 or more")
    if settings.min_cuda_version != "any" and not CUDA_VERSION.fullmatch(
            settings.min_cuda_version):
        raise ConfigError(
            f"RUNPOD_MIN_CUDA_VERSION (from {settings.source('min_cuda_version')}) is not a "
            f"CUDA version major.minor: {settings.min_cuda_version[:40]!r}",
            f"set it to e.g. {IMAGE_CUDA} (the pod image's CUDA), or to any for hosts of any "
            "driver")
    if not _is_http_url(settings.api_base_url):
        raise ConfigError(
            f"RUNPOD_API_BASE_URL is not an http(s) URL (from "
            f"{settings.source('api_base_url')}): {settings.api_base_url!r}",
            "set it to e.g. https://api.runpod.io (v2 paths are appended; no user@ part)",
        )
    if not _keeps_the_key_private(settings.api_base_url):
        raise ConfigError(
            f"RUNPOD_API_BASE_URL is plain http to another machine (from "
            f"{settings.source('api_base_url')}): {settings.api_base_url!r} would carry the "
            "API key across the network unencrypted",
            "use https:// (plain http:// is only for a RunPod API on this machine: "
            "127.0.0.1, ::1 or localhost)",
        )


def _keeps_the_key_private(url: str) -> bool:
    """https, or http to this machine's loopback (the local RunPod, a tunnel's near end):
    every request carries the key in its Authorization header."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_http_url(url: str) -> bool:
    """http(s)://host[:port][/path] that a request can be sent to: a scheme, a host, a port
    in range, no spaces (`http://[::1` or `https://:80` would fail as if the network
    were down)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return False
    # No user@ part and no backslash: Python reads "http://vm:1\@127.0.0.1" as a request to
    # 127.0.0.1 (which passes the loopback rule) while urllib3 sends it, key and all, to vm.
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and "@" not in parts.netloc and "\\" not in url
            and not any(c.isspace() for c in url) and (port is None or port > 0))


def key_for_children(settings: Settings) -> dict[str, str]:
    """The environment that hands a key given as `--api-key` to the `inv` commands a task
    starts (a sweep's trials, check.regression's probes): never their command line, where
    `ps` shows it. A key from the environment, `.env` or the keyring reaches them as it
    reached this process."""
    if settings.api_key and settings.api_key_source == "--api-key":
        return {"RUNPOD_API_KEY": settings.api_key}
    return {}


def effective_backend(settings: Settings) -> str:
    """`auto` means runpod when a key is found, else local."""
    if settings.backend != "auto":
        return settings.backend
    return "runpod" if settings.api_key else "local"


# stderr's reader is gone for good: a pipe with no reader, a terminal hung up or gone.
READER_GONE = {errno.EPIPE, errno.EIO, errno.ENXIO}


def output_reader_gone() -> bool:
    """Whether stdout or stderr is a pipe whose reading end has closed (POLLERR): `inv ... |
    head` after head has read its lines."""
    import select

    try:
        poll = select.poll()
        for stream in (sys.stdout, sys.stderr):
            poll.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def say(message: str) -> None:
    """A message for the operator: always stderr, so --json stdout stays parseable. One that
    cannot be written is dropped, and so is every later one: stderr's reader is gone (the
    `tee` of `inv ... 2>&1 | tee log` that the same Ctrl-C ended, a terminal hung up), and
    what happens on the way out, a pod stopped, must not depend on saying so."""
    from podcycle.redact import printable

    try:  # a line may quote a pod (its spend guard's log line): shown, never obeyed
        # One write with its newline: print() writes the two apart, and a SIGTERM between
        # them left the line open, the interruption's own line glued to its end.
        sys.stderr.write(printable(masked(message), lines=True) + "\n")
        sys.stderr.flush()
    except OSError as exc:
        if exc.errno not in READER_GONE:
            return  # this one message lost (a full disk under 2>file): the next may go
        try:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        except OSError:
            pass


def cache_root() -> Path:
    """pod-cycle's cache folder: POD_CYCLE_CACHE_DIR, else ~/.cache/pod-cycle."""
    return Path(os.environ.get("POD_CYCLE_CACHE_DIR") or Path.home() / ".cache" / "pod-cycle")
