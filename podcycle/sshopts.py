"""File paths handed to OpenSSH, whatever folder they lie in.

`ssh -o UserKnownHostsFile=PATH` splits PATH at whitespace (the option takes several files),
so a run folder under "My Projects" made ssh look for two files that do not exist, and the
cycle reported a changed host key. And ssh reads `%` in a key or known_hosts path as a token
(%h, %d), which no quoting turns off on every OpenSSH, so such a path is refused before
anything is created."""

from __future__ import annotations

from pathlib import Path

from podcycle.errors import ConfigError


def check_path(path: Path, what: str, remedy: str) -> None:
    """Refuse a path ssh would read as something else (see the module's text)."""
    if "%" in str(path):
        raise ConfigError(f"{what} {path} holds a %, which ssh reads as a token (%h, %d), "
                          "not as part of the path", remedy)


def file_option(name: str, path: Path) -> str:
    """`NAME="PATH"` for ssh's -o: double-quoted, so whitespace stays in the path; `"` and
    `\\` escaped, as ssh's own parser of option values takes them."""
    quoted = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}="{quoted}"'

