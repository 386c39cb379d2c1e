"""A local pod's logs as the v2 spec's `GET /v2/pods/{id}/logs` serves them: server-sent events
`{"ts", "source", "line"}` from two sources, `container` (the entrypoint's output, pod.log)
and `system` (the local RunPod's own events for the pod, system.log). An event's id is
`<ts>/c<n>s<n>`: how many lines of each source the reader has been given or passed over, so a
reconnect with Last-Event-ID resumes each source after its own last line (a container line
written in the same second as a system line is never taken for one already seen)."""

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

    def sse(self, event_id: str) -> bytes:
        """The event as one SSE message; event_id is its position_id (where a resume goes on)."""
        data = json.dumps({"ts": self.ts, "source": self.source, "line": self.line})
        return f"id: {event_id}\ndata: {data}\n\n".encode()


_POSITION = re.compile(r"[^/]*/" + "".join(f"{s[0]}(\\d+)" for s in SOURCES))


def position_id(ts: str, seen: dict[str, int]) -> str:
    """The id of an event sent when the reader has had `seen[source]` lines of each source."""
    return f"{ts}/" + "".join(f"{s[0]}{seen[s]:011d}" for s in SOURCES)


def parse_position(event_id: str) -> dict[str, int] | None:
    """position_id's counters, or None for another id (a bare time, an older event id)."""
    match = _POSITION.fullmatch(event_id.strip())
    return {s: int(n) for s, n in zip(SOURCES, match.groups(), strict=True)} if match else None


def resume(events: list[Event], position: dict[str, int]) -> list[Event]:
    """The events a reader at `position` has not had: each source after its own count."""
    return [e for e in events if e.n > position.get(e.source, 0)]


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
