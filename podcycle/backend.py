"""Which RunPod an operation talks to (RunPod itself or the local RunPod), its client, and what
it can do. Callers branch on these capabilities, never on the backend's name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from podcycle.config import Settings, effective_backend, say
from podcycle.errors import ConfigError

if TYPE_CHECKING:
    from podcycle.runpod.client import RunPodClient

# CPU-sized training for pods without a GPU (the local RunPod) unless the operator says
# otherwise (TRAIN_EPOCHS, TRAIN_BATCH_SIZE, --epochs win).
CPU_TRAINING = {"EPOCHS": "3", "MODEL_BLOCKS": "4", "MODEL_CHANNELS": "32", "BATCH_SIZE": "128"}


# RunPod's HTTP proxy: every N/http port of a pod at https://<pod id>-<N>.proxy.runpod.net.
RUNPOD_HTTP_PROXY = "https://{pod}-{port}.proxy.runpod.net"


@dataclass
class Backend:
    name: str  # runpod | local: for messages and records only
    base_url: str
    client: RunPodClient
    key_source: str
    # The tool may add the operator's SSH key to the account without asking (a local,
    # throwaway account); on RunPod that takes `api.doctor --register-ssh-key`.
    registers_ssh_keys: bool = False
    # An SSH key of the backend's own, used unless RUNPOD_SSH_KEY is set explicitly.
    own_ssh_key: Path | None = None
    # Training settings that fit the backend's pods (env for the train preset).
    training_env: dict[str, str] = field(default_factory=dict)
    # Catalog prices and stock are sample data, not quotes.
    sample_prices: bool = False
    # How a pod's HTTP port is reached: RunPod's HTTP proxy URL (format with pod, port), or
    # None for the port mapping the pod reports (the local RunPod, on 127.0.0.1).
    http_proxy: str | None = None


def connect(settings: Settings, *, announce: bool = True) -> Backend:
    from podcycle.runpod.client import RunPodClient

    name = effective_backend(settings)
    if name == "local":
        from podcycle import sshkeys
        from podcycle.local import control

        info, started = control.up(settings.local_dir)
        if announce:
            why = "" if settings.backend == "local" else " (no RunPod API key found)"
            verb = "started" if started else "using"
            say(f"backend: local RunPod{why}; {verb} {info['url']}")
            control.say_other_checkout(info, started)
        return Backend("local", info["url"], RunPodClient(info["url"], info["api_key"]),
                       "local RunPod key", registers_ssh_keys=True,
                       own_ssh_key=sshkeys.local_backend_key(settings.local_dir),
                       training_env=dict(CPU_TRAINING), sample_prices=True)
    if not settings.api_key:
        raise ConfigError(
            "backend is runpod but no RunPod API key was found",
            "set RUNPOD_API_KEY, store it in the keyring (service=runpod, "
            "username=RUNPOD_API_KEY), or use --backend local",
        )
    if announce and settings.backend == "auto":
        say(f"backend: RunPod at {settings.api_base_url} (key from {settings.api_key_source})")
    return Backend("runpod", settings.api_base_url,
                   RunPodClient(settings.api_base_url, settings.api_key),
                   settings.api_key_source, http_proxy=RUNPOD_HTTP_PROXY)
