"""Run ids, run folders (artifacts/runpod_cycles/<run_id>/), their state file and atomic
writes. The state file records which steps finished, so a cycle can resume."""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from podcycle.errors import ConfigError

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STEPS = ("start", "push-dataset", "train", "collect", "local-validate", "stop")


def new_run_id() -> str:
    return time.strftime("rc-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)


def validate_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id) or ".." in run_id:
        raise ConfigError(
            f"invalid run id {run_id!r}",
            "use letters, digits, '.', '_' and '-' only (no path separators), at most 64")
    return run_id


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunFolder:
    def __init__(self, artifacts_dir: Path, run_id: str) -> None:
        self.run_id = validate_run_id(run_id)
        self.path = (artifacts_dir / run_id).resolve()
        self.provision_json = self.path / "provision.json"
        self.reports = self.path / "reports"
        self.observations = self.reports / "observations.md"
        self.loss_curve = self.reports / "loss_curve.png"
        self.collected = self.path / "collected"
        self.run_artifacts = self.collected / "run_artifacts"
        self.local_validation = self.path / "local_validation"
        self.infer_output = self.local_validation / "infer_move_output.txt"
        self.state_path = self.path / "state.json"
        self.known_hosts = self.path / "known_hosts"
        self.state = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"run_id": self.run_id, "steps": {}, "events": []}
        except ValueError:
            raise ConfigError(f"{self.state_path} is not valid JSON",
                              "fix or remove it (the run can no longer resume)") from None

    def save(self) -> None:
        atomic_write(self.state_path, json.dumps(self.state, indent=2, sort_keys=True))

    def step(self, name: str) -> dict[str, Any]:
        return self.state["steps"].get(name, {})

    def done(self, name: str) -> bool:
        return self.step(name).get("status") == "done"

    def mark(self, name: str, status: str, **fields: Any) -> None:
        entry = self.state["steps"].setdefault(name, {})
        entry.update(fields, status=status)
        self.save()

    def event(self, text: str) -> None:
        self.state.setdefault("events", []).append(
            {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "text": text})
        self.save()
