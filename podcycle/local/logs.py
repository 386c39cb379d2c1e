"""A local pod's logs as the v2 spec's `GET /v2/pods/{id}/logs` serves them: server-sent events
`{"ts", "source", "line"}` from two sources, `container` (the entrypoint's output, pod.log)
and `system` (the local RunPod's own events for the pod, system.log). Event ids are
`<ts>/<source letter><line number>`, so a reconnect with Last-Event-ID resumes exactly after
the last line it saw."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SOURCES = ("container", "system")
_TS = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) ")


@dataclass(order=True, frozen=True)
class Event:
    ts: str
    source: str
    n: int
    line: str = field(compare=False)

    @property
    def id(self) -> str:
        return f"{self.ts}/{self.source[0]}{self.n:011d}"

    def sse(self) -> bytes:
        data = json.dumps({"ts": self.ts, "source": self.source, "line": self.line})
        return f"id: {self.id}\ndata: {data}\n\n".encode()


def cursor(text: str) -> tuple[str, str, int]:
    """The position after which a stream resumes: an event id, or a bare timestamp."""
    ts, _, rest = text.partition("/")
    source = next((s for s in SOURCES if rest[:1] == s[0]), "")
    try:
        n = int(rest[1:]) if source else 0
    except ValueError:
        n = 0
    return ts, source, n


class LogReader:
    """Reads new complete lines of a pod's log files, remembering where it stopped."""

    def __init__(self, pod_dir: Path, sources: list[str], first_ts: str) -> None:
        self.paths = {"container": pod_dir / "pod.log", "system": pod_dir / "system.log"}
        self.state = {source: {"offset": 0, "n": 0, "ts": first_ts} for source in sources}

    def poll(self) -> list[Event]:
        events = []
        for source, state in self.state.items():
            try:
                with open(self.paths[source], "rb") as handle:
                    handle.seek(state["offset"])
                    data = handle.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            state["offset"] += len(complete)
            for raw in complete.splitlines():
                state["n"] += 1
                text = raw.decode(errors="replace").rstrip("\r")
                if source == "system":
                    ts, _, text = text.partition("\t")
                else:
                    match = _TS.match(text)
                    ts = match.group(1) if match else state["ts"]
                state["ts"] = ts
                events.append(Event(ts, source, state["n"], text))
        return sorted(events)


def system_event(pod_dir: Path, ts: str, text: str) -> None:
    """Append one line to the pod's system log (status changes, errors)."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    with open(pod_dir / "system.log", "a", encoding="utf-8") as handle:
        handle.write(f"{ts}\t{text.replace(chr(10), ' | ')}\n")
