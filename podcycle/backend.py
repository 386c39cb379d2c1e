"""Which RunPod an operation talks to (RunPod itself or the local RunPod), and its client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from podcycle.config import Settings, effective_backend, say
from podcycle.errors import ConfigError

if TYPE_CHECKING:
    from podcycle.runpod.client import RunPodClient


@dataclass
class Backend:
    name: str  # runpod | local
    base_url: str
    client: RunPodClient
    key_source: str


def connect(settings: Settings, *, announce: bool = True) -> Backend:
    from podcycle.runpod.client import RunPodClient

    name = effective_backend(settings)
    if name == "local":
        from podcycle.local import control

        info, started = control.up(settings.local_dir)
        if announce:
            why = "" if settings.backend == "local" else " (no RunPod API key found)"
            verb = "started" if started else "using"
            say(f"backend: local RunPod{why}; {verb} {info['url']}")
        return Backend("local", info["url"], RunPodClient(info["url"], info["api_key"]),
                       "local RunPod key")
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
                   settings.api_key_source)
