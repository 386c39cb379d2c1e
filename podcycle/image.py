"""`image.build`: the pod image's tags and the docker command that builds (and pushes) it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from podcycle import PROJECT_ROOT
from podcycle.errors import ConfigError, PodCycleError

DOCKERFILE = "deploy/runpod_cloud_training/Dockerfile"


# Docker's reference grammar (distribution/reference): an optional registry host[:port], then
# lowercase path components separated by '/', each alphanumerics joined by '.', '_', '__' or
# '-'s.
_HOST = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]+)?)"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*")
# A whole reference, as a pod's image is given: the repository (its registry host may hold
# capitals, or be an IPv6 address in brackets), an ASCII tag, a digest.
# As Docker tells a registry from a first path part: a dot, a port, or localhost.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REF_HOST = (rf"(?:\[[0-9A-Fa-f:]+\](?::[0-9]+)?|localhost(?::[0-9]+)?"
             rf"|{_LABEL}(?:\.{_LABEL})+(?::[0-9]+)?|{_LABEL}:[0-9]+)")
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(rf"(?P<repo>(?:{_REF_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
                       rf"(?::{_TAG})?(?:@{_DIGEST})?")
MAX_REPOSITORY = 255  # Docker's limit on a repository name


def reference_problem(image: str) -> str | None:
    """Why `image` is no image reference Docker (and RunPod's pull) takes, or None."""
    found = REFERENCE.fullmatch(image)
    if found is None:
        return (f"image {image[:80]!r} is not an image reference ([registry/]name[:tag]"
                "[@digest], lowercase name parts: e.g. ghcr.io/you/chess-bot-runpod:latest)")
    if len(found.group("repo")) > MAX_REPOSITORY:
        return f"image's name is {len(found.group('repo'))} characters, over Docker's 255"
    return None


def normalise_repo(repo: str | None, origin: str = "IMAGE_REPO") -> str:
    """The repository lowercased, or a ConfigError naming `origin` (--repo, IMAGE_REPO, ...)."""
    if not repo or not repo.strip():
        raise ConfigError("IMAGE_REPO is not set",
                          "set IMAGE_REPO (e.g. ghcr.io/<user>/chess-bot-runpod) or pass --repo")
    repo = repo.strip().lower()  # GHCR (and Docker) require lowercase repository names
    if "@" in repo or re.fullmatch(r"[^:]+(?::[0-9]+)?/.*:[^/]*|[^/:]+:[^/]*", repo):
        raise ConfigError(f"{origin} {repo!r} must be a repository without a tag or digest",
                          "drop the ':tag' (or '@sha256:...') part; tags are <git-short-sha> "
                          "and latest")
    if REPOSITORY.fullmatch(repo) and len(repo) > MAX_REPOSITORY:
        raise ConfigError(f"{origin} is {len(repo)} characters: Docker takes a repository name "
                          f"of at most {MAX_REPOSITORY}", "use a shorter name")
    if not REPOSITORY.fullmatch(repo):
        raise ConfigError(
            f"{origin} {repo!r} is not a valid image repository name",
            "use [registry/]name/parts of lowercase letters, digits and single '.', '_' or "
            "'-' between them, e.g. ghcr.io/<user>/chess-bot-runpod")
    return repo


def git_short_sha(root: Path = PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise PodCycleError("cannot read the git commit for the image tag",
                            "run image.build inside the pod-cycle git checkout with at least "
                            "one commit") from None
    return out.stdout.strip()


def context_paths(root: Path = PROJECT_ROOT) -> list[str]:
    """The folders the build context holds, as .dockerignore lets them in: its `!folder/`
    lines after a `*` that leaves everything else out (this project's own). Else the whole
    checkout: []."""
    try:
        lines = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()]
    except (OSError, UnicodeDecodeError):
        return []
    rules = [line for line in lines if line and not line.startswith("#")]
    if not rules or rules[0] != "*":
        return []
    return [line[1:] for line in rules[1:] if line.startswith("!") and line.endswith("/")]


def changed_files(root: Path = PROJECT_ROOT) -> int:
    """How many files of the build context differ from HEAD (changed, added, untracked and
    not ignored): the image holds them, the tag names HEAD. Files .dockerignore keeps out
    of the context (a scratch file at the top) are not counted, but .dockerignore itself
    is: a change to it changes what the image holds. 0 when git cannot say."""
    paths = context_paths(root)
    if paths:
        paths.append(".dockerignore")
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *paths],
                             cwd=root, text=True, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return 0
    return len([line for line in out.stdout.splitlines() if line.strip()])


def tags(repo: str, sha: str) -> list[str]:
    return [f"{repo}:{sha}", f"{repo}:latest"]


def build_command(repo: str, sha: str, push: bool) -> list[str]:
    command = ["docker", "buildx", "build", "--push"] if push else ["docker", "build"]
    for tag in tags(repo, sha):
        command += ["-t", tag]
    command += ["-f", DOCKERFILE, "."]
    return command


def check_docker() -> None:
    if shutil.which("docker") is None:
        raise PodCycleError("docker is not installed (no `docker` on PATH)",
                            "install Docker Engine (and buildx for --push), or use --dry-run "
                            "to print the command")
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise PodCycleError("no Docker engine answers (`docker info` failed)",
                            "start the Docker daemon (or check DOCKER_HOST), or use --dry-run")


def render(command: list[str]) -> str:
    return shlex.join(command)
