"""Container registry credentials (RunPod REST v2 /v2/registries), for private images.

RunPod pulls a template's image with the credential whose id is in the template's `registry`
field; GHCR packages are private by default, so without one the pod never starts. Only a
credential's id and name are ever readable: the username and the password (or token) are
write-only on RunPod, and here the password is taken from stdin or a prompt, registered as a
secret at once (so it is masked wherever it could appear) and sent once, in the create body.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import has_control, holds_key, printable, register_secret

if TYPE_CHECKING:
    from podcycle.runpod.client import RunPodClient
    from podcycle.runpod.models import Registry

# A name to type on the command line and in config/template.toml.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64"
# Shorter than this is no registry token (GitHub's are 40+ characters, Docker Hub passwords
# at least 9): almost surely a stray newline or a truncated paste. It also keeps the secret
# long enough to be masked by value (podcycle.redact masks secrets of 6 characters or more).
MIN_PASSWORD = 8
# Longer than this is no registry token (a GitHub token is 40 to 93 characters, an ECR
# login token about 2,000): a file piped in by mistake, or an endless stream.
MAX_PASSWORD = 16384


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"invalid registry credential name {name!r}: names are {NAME_RULE}",
                          "e.g. inv registry.create ghcr --username YOUR_GITHUB_USER")
    return name


def read_password(stdin: TextIO | None = None,
                  prompt: Callable[[str], str] | None = None, *,
                  runpod_key: str | None = None) -> str:
    """The password or token: all of stdin when it is not a terminal (one trailing newline
    dropped), else a no-echo prompt. Never a flag or an environment variable, which a
    process listing or a shell history would show. Registered as a secret at once. The
    RunPod key (`runpod_key`, the one the task uses) is refused: stored as a registry's
    password, RunPod would hand it to that registry at every pull (hunt, stop 51)."""
    stdin = stdin if stdin is not None else sys.stdin
    if stdin is not None and not stdin.isatty():
        value = stdin.read(MAX_PASSWORD + 3)  # bounded: `yes | inv registry.create` ends
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        source = "stdin"
    else:
        if prompt is None:
            import getpass

            prompt = getpass.getpass
        value = prompt("registry password or token (not echoed): ")
        source = "the prompt"
    key = holds_key(value, runpod_key, shortest=MIN_PASSWORD)  # a truncated paste too
    register_secret(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # the API takes JSON text: it failed there, as RunPod's 500
        raise ConfigError(f"the password or token from {source} holds bytes that are not "
                          "UTF-8 text (a binary file, or text in another encoding)",
                          "pass the registry's token as it gives it, e.g. gh auth token | "
                          "inv registry.create NAME --username USER") from None
    if key:
        raise ConfigError(f"the password or token from {source} is, or holds, the RunPod API "
                          "key: RunPod would hand it to the registry at every pull of the "
                          "image, so it is not stored (pasted in the wrong place?)",
                          "pass the registry's own token, e.g. gh auth token | inv "
                          "registry.create NAME --username USER")
    if not value.strip():
        raise ConfigError(f"no password or token on {source}",
                          "pipe it in, e.g. gh auth token | inv registry.create NAME "
                          "--username USER (a GitHub token needs read:packages)")
    if len(value) > MAX_PASSWORD:
        raise ConfigError(f"the password or token from {source} is longer than {MAX_PASSWORD:,} "
                          "characters: no registry token is, so the wrong text was piped in",
                          "pass exactly the token on stdin, e.g. printf %s \"$TOKEN\" | inv "
                          "registry.create NAME --username USER")
    if len(value) < MIN_PASSWORD or value != value.strip() or "\n" in value:
        raise ConfigError(f"the password or token from {source} does not look like one "
                          f"(under {MIN_PASSWORD} characters, or spaces or several lines)",
                          "pass exactly the token on stdin, e.g. printf %s \"$TOKEN\" | inv "
                          "registry.create NAME --username USER")
    return value


def resolve(client: RunPodClient, name_or_id: str) -> Registry:
    """The credential with this id, or the only one with this name."""
    found = client.list_registries()
    by_id = [r for r in found if r.id == name_or_id]
    if by_id:
        return by_id[0]
    named = [r for r in found if r.name == name_or_id]
    if len(named) == 1:
        return named[0]
    if named:
        raise PodCycleError(f"{len(named)} registry credentials are named {name_or_id!r} "
                            f"({', '.join(printable(r.id) for r in named)})",
                            "use the credential's id instead (inv registry.list)")
    known = ", ".join(f"{printable(r.name)} ({printable(r.id)})" for r in found[:8]) or "none"
    raise ConfigError(f"no registry credential named or with id {name_or_id!r} "
                      f"(the account has: {known})",
                      "list them with inv registry.list, or make one with inv "
                      "registry.create NAME --username USER")


def validate_username(username: str | None) -> None:
    if not username or not username.strip() or username != username.strip():
        raise ConfigError("--username is required (the registry user, e.g. your GitHub "
                          "user for ghcr.io)", "pass --username USER")
    if has_control(username) or any(c.isspace() for c in username):
        # A registry login is one word: a line break in it is a typo no pull would take.
        raise ConfigError(f"--username '{printable(username)}' holds a space or a control "
                          "character", "pass the registry user as one word, e.g. --username "
                          "octocat")


def create(client: RunPodClient, name: str, username: str, password: str) -> Registry:
    """Refuses a name already taken (one name, one credential) before sending anything."""
    validate_name(name)
    register_secret(password)
    validate_username(username)
    taken = [r for r in client.list_registries() if r.name == name]
    if taken:
        # Bad input (exit 2), as volume.create's duplicate name: it exited 1.
        raise ConfigError(f"a registry credential named {name!r} exists already "
                            f"({taken[0].id})",
                            f"delete it first (inv registry.delete {name} --yes) or pick "
                            "another name")
    return client.create_registry(name, username, password)


def users(client: RunPodClient, registry: Registry) -> list[dict[str, Any]]:
    """The account's templates whose `registry` is this credential."""
    return [t for t in client.list_templates() if t.get("registry") == registry.id]


def delete(client: RunPodClient, name_or_id: str, *, yes: bool) -> Registry:
    """Delete a credential. Refused while a template uses it: RunPod would silently clear the
    template's reference, and the next pod from it would fail to pull its image."""
    registry = resolve(client, name_or_id)
    using = users(client, registry)
    if using:
        raise PodCycleError(
            f"registry credential {printable(registry.name)} ({registry.id}) is used by "
            "template(s) " + ", ".join(f"{printable(t['name'])} ({printable(t['id'])})"
                                      for t in using),
            "point those templates elsewhere first (set registry = \"\" in the template file "
            "and run inv template.sync: a line left out leaves the template's credential as "
            "it is), then delete it")
    if not yes:
        raise PodCycleError(f"not deleted: registry credential {printable(registry.name)} "
                            f"({registry.id}); pods of private images need it to start",
                            f"run again with --yes: inv registry.delete {registry.id} --yes",
                            code=2)
    client.delete_registry(registry.id)
    return registry
