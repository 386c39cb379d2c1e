"""The programs the cycle runs on this machine (ssh, rsync), checked when a run starts, before
anything is created: a missing or too old one found at push-dataset left a pod billing for a
failure its start could have named. macOS's own rsync (2.6.9, or openrsync) lacks what the
cycle's transfers use (`--mkpath`, rsync 3.2.3; Ubuntu 20.04 and RHEL 8 ship 3.1.3)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from podcycle.errors import ConfigError

RSYNC_MIN = (3, 2, 3)
_INSTALL = {
    "ssh": "install OpenSSH's client (Debian/Ubuntu: sudo apt-get install openssh-client)",
    "rsync": "install rsync 3.2.3 or newer (Debian 11+ / Ubuntu 22.04+: sudo apt-get install "
             "rsync; macOS: brew install rsync) and put it first on PATH",
}


@functools.cache
def rsync_version(rsync: str) -> tuple[int, ...] | None:
    """rsync's version from `rsync --version`; None when it names none (openrsync) or does
    not run."""
    try:
        out = subprocess.run([rsync, "--version"], capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)", out.stdout, re.MULTILINE)
    return tuple(int(part) for part in found.groups()) if found else None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check() -> str:
    """ssh and rsync are on PATH, and rsync is 3.2.3 or newer: returns what was found (for
    the doctor); else a ConfigError saying which and how to install it."""
    found = {program: shutil.which(program) for program in ("ssh", "rsync")}
    for program, path in found.items():
        if path is None:
            raise ConfigError(f"{program} is not installed (not found on PATH): the cycle "
                              "moves data to and from its pods with it", _INSTALL[program])
    version = rsync_version(found["rsync"])
    if version is None or version < RSYNC_MIN:
        shown = (f"version {_dotted(version)}" if version
                 else "of no version it names (openrsync, or it did not run)")
        raise ConfigError(f"rsync at {found['rsync']} is {shown}; the cycle needs rsync "
                          f"{_dotted(RSYNC_MIN)} or newer (--mkpath)", _INSTALL["rsync"])
    return f"rsync {_dotted(version)} at {found['rsync']}, ssh at {found['ssh']}"
