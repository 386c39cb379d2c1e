"""File paths handed to OpenSSH, whatever folder they lie in.

`ssh -o UserKnownHostsFile=PATH` splits PATH at whitespace (the option takes several files),
so a run folder under "My Projects" made ssh look for two files that do not exist, and the
cycle reported a changed host key: the value is now double-quoted. Some characters no quoting
makes safe on every OpenSSH in use, so a path holding one is refused before anything is
created: `%` starts a token (%h, %d) and `${` a variable (OpenSSH 8.4+) in a key or
known_hosts path; before OpenSSH 8.7 a `"` ends the quoted value and a backslash escapes
nothing; a line break ends the option in sshd_config."""

from __future__ import annotations

from pathlib import Path

from podcycle.errors import ConfigError

# What ssh would read as something else in a path, and how to say it.
_UNSAFE = (("%", "a %, which ssh reads as a token (%h, %d)"),
           ("${", "a ${, which ssh reads as a variable"),
           ('"', 'a ", which OpenSSH before 8.7 cannot take in a quoted path'),
           ("\\", "a backslash, which OpenSSH before 8.7 cannot take in a quoted path"),
           ("\n", "a line break, which ends an option"))
# The end of a remedy: "set X to a folder " + CLEAN.
CLEAN = 'whose path has no %, ${, ", backslash or line break'


def check_path(path: Path, what: str, remedy: str) -> None:
    """Refuse a path ssh would read as something else (see the module's text)."""
    for text, why in _UNSAFE:
        if text in str(path):
            raise ConfigError(f"{what} {str(path)!r} holds {why}", remedy)


def file_option(name: str, path: Path) -> str:
    """`NAME="PATH"` for ssh's -o: double-quoted, so whitespace stays in the path (`"` and
    `\\` escaped as OpenSSH 8.7+ reads them; check_path refuses them for older ones)."""
    quoted = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}="{quoted}"'
