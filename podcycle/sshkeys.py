"""The operator's SSH key: which one, its public line, whether the account has it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from podcycle.config import Settings
from podcycle.errors import PodCycleError


def local_backend_key(local_dir: Path) -> Path:
    """A key of the local RunPod's own, made on first use, so the local cycle never needs (or
    touches) the operator's ~/.ssh."""
    key = local_dir.resolve() / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "pod-cycle-local", "-f", str(key)], check=True)
    return key


def private_key(settings: Settings, backend: str) -> Path:
    explicit = settings.source("ssh_key") != "default" and settings.source(
        "ssh_key") != "podcycle.ssh_key in invoke.yaml"
    path = settings.ssh_key.expanduser() if settings.ssh_key else None
    if backend == "local" and not explicit:
        return local_backend_key(settings.local_dir)
    if path is None or not path.is_file():
        raise PodCycleError(
            f"SSH private key not found: {path}",
            "create one with ssh-keygen -t ed25519, or point RUNPOD_SSH_KEY at yours")
    return path


def public_line(private: Path) -> str:
    pub = private.with_name(private.name + ".pub")
    if pub.is_file():
        return pub.read_text().strip()
    try:
        out = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        raise PodCycleError(f"cannot read the public half of {private} (passphrase?)",
                            f"write it with: ssh-keygen -y -f {private} > {pub}") from None
    return out.stdout.strip()


def blob(line: str) -> str:
    parts = line.split()
    return parts[1] if len(parts) >= 2 else line


def is_registered(line: str, keys: list[str]) -> bool:
    return any(blob(k) == blob(line) for k in keys)
