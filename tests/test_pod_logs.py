"""pod.logs against the local RunPod (its pods' entrypoint output and the server's own events,
served per the spec's GET /v2/pods/{id}/logs), and the readiness timeout that shows them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from podcycle.local import procs
from podcycle.pods import read_logs
from podcycle.runpod.models import LogEvent
from tests.conftest import INV, ROOT, child_environ, eventually


@pytest.fixture
def pod(runpod):
    with runpod.running_pod("logs", {"SUPERVISE_MAX_BACKOFF": "1"}) as made:
        yield made


def pod_dir(runpod, pod_id: str) -> Path:
    return Path(next(p["dir"] for p in runpod.pods() if p["id"] == pod_id))


@pytest.mark.slow
def test_logs_show_the_entrypoint_start_and_the_pods_events(inv, pod) -> None:
    shown = inv("pod.logs", pod.id)
    assert shown.returncode == 0, shown.stderr
    assert f"[entrypoint] pod {pod.id} starting" in shown.stdout
    assert "[entrypoint] services started; supervising" in shown.stdout
    assert "system    sshd answers: RUNNING" in shown.stdout
    only_two = inv("pod.logs", pod.id, "--tail", "2", "--source", "container", "--json")
    rows = [json.loads(line) for line in only_two.stdout.splitlines()]
    assert len(rows) == 2 and {r["source"] for r in rows} == {"container"}
    assert all(r["id"] and r["ts"] for r in rows)


@pytest.mark.slow
def test_a_pods_log_is_shown_never_obeyed_by_the_terminal(inv, runpod, pod) -> None:
    """A hostile pod writes escape sequences into its own log (an OSC 52 writes the
    operator's clipboard, a CSI 2J clears the screen): pod.logs shows them escaped; --json
    gives the exact text, escaped the JSON way."""
    with open(pod_dir(runpod, pod.id) / "pod.log", "a", encoding="utf-8") as log:
        log.write("evil \x1b]52;c;ZWNobw==\x07\x1b[2Jdone\n")
        # A line beyond ASCII is shown as written (a raw UTF-8 stream, as RunPod's may be:
        # test_runpod_client).
        log.write("epoch 1 → Zürich\n")
    shown = eventually(lambda: (lambda r: r if "evil" in r.stdout else None)(
        inv("pod.logs", pod.id, "--source", "container", "--tail", "5")),
        what="the planted line in pod.logs")
    assert "evil \\x1b]52;c;ZWNobw==\\x07\\x1b[2Jdone" in shown.stdout
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    rows = [json.loads(line) for line in inv("pod.logs", pod.id, "--source", "container",
                                             "--tail", "5", "--json").stdout.splitlines()]
    assert any(r["line"] == "evil \x1b]52;c;ZWNobw==\x07\x1b[2Jdone" for r in rows), rows
    assert any(r["line"] == "epoch 1 → Zürich" for r in rows), rows
    assert "epoch 1 → Zürich" in shown.stdout


@pytest.mark.slow
def test_a_crash_looping_inference_api_is_named_in_the_logs(inv, runpod, pod) -> None:
    # The seed's incident: the API dies on a missing module, again and again.
    api = pod_dir(runpod, pod.id) / "root" / "workspace" / "chess-bot" / "chessbot" / "api.py"
    api.write_text("import torch_is_missing_here  # noqa\n")
    for pid in procs.marked_processes_for(pod.id):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # ended while we looked
        if "chessbot.api" in command:
            os.kill(pid, signal.SIGKILL)
    log = pod_dir(runpod, pod.id) / "pod.log"
    eventually(lambda: log.read_text().count("inference_api: exited with code 1") >= 2,
               what=lambda: "two API crashes in the pod log:\n" + log.read_text()[-2000:])
    shown = inv("pod.logs", pod.id, "--source", "container")
    assert "No module named 'torch_is_missing_here'" in shown.stdout, shown.stdout[-2000:]
    assert runpod.client().get_pod(pod.id).status.value == "RUNNING"  # the pod stays up


@pytest.mark.slow
def test_follow_picks_up_new_lines_and_ends_when_the_pod_stops(runpod, pod) -> None:
    env = child_environ()
    env.update(RUNPOD_BACKEND="local", POD_CYCLE_LOCAL_DIR=str(runpod.dir))
    follower = subprocess.Popen([INV, "pod.logs", pod.id, "--follow", "--tail", "0"],
                                cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        # The stream is open once the server has logged the follower's request; nothing old
        # is shown (--tail 0).
        eventually(lambda: any(r["method"] == "GET" and r["path"] == f"/v2/pods/{pod.id}/logs"
                               for r in runpod.requests()),
                   what="pod.logs --follow to open its stream")
        runpod.client().pod_action(pod.id, "stop")
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    # Why it ended, past the log (stop 51): a pod stopped before the follow said nothing.
    assert f"pod {pod.id} is EXITED: its log ends here (inv pod.status {pod.id})" in err, err
    assert "services started; supervising" not in out  # no history (--tail 0)
    assert "system    action stop (was RUNNING)" in out
    assert "[entrypoint] stopping: ending services" in out
    # The stop ends each service through its supervisor, as `docker stop` does (SIGTERM to
    # the entrypoint): none is logged as a crash being restarted.
    assert "restarting in" not in out, out


class DroppingClient:
    """pod_logs answers two events, then the connection drops; on the reconnect it must be
    asked to resume after the last event it gave."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def pod_logs(self, pod_id: str, **kwargs):
        self.calls.append(kwargs)
        if len(self.calls) == 1:
            yield LogEvent("t1/c1", "t1", "container", "one")
            yield LogEvent("t2/c2", "t2", "container", "two")
            raise requests.exceptions.ChunkedEncodingError("connection broken")
        assert kwargs["last_event_id"] == "t2/c2" and kwargs["tail"] is None
        yield LogEvent("t3/c3", "t3", "container", "three")


def test_follow_resumes_a_dropped_stream_without_repeating_lines() -> None:
    client = DroppingClient()
    notes: list[str] = []
    lines = [e.line for e in read_logs(client, "p1", follow=True, tail=50,
                                       on_reconnect=notes.append, sleep=lambda _: None)]
    assert lines == ["one", "two", "three"]
    assert client.calls[0]["tail"] == 50 and client.calls[0]["last_event_id"] is None
    assert "resuming after t2/c2" in notes[0]


@pytest.mark.slow
def test_cycle_start_past_its_readiness_timeout_shows_the_pods_last_lines(
        runpod, tmp_path) -> None:
    env = child_environ()
    env.update(RUNPOD_BACKEND="local", POD_CYCLE_LOCAL_DIR=str(runpod.dir),
               POD_CYCLE_ARTIFACTS_DIR=str(tmp_path), RUNPOD_CYCLE_RUN_ID="too-slow",
               RUNPOD_READY_TIMEOUT="1")
    runpod.admin("POST", "/_local/settings", {"ready_delay": 5})
    try:
        result = subprocess.run([INV, "cycle.full-smoke"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        runpod.admin("POST", "/_local/settings", {"ready_delay": 0})
    assert result.returncode != 0
    assert "did not offer SSH within 1s" in result.stderr
    assert "'s log (inv pod.logs" in result.stderr
    assert "[entrypoint]" in result.stderr and "system    " in result.stderr
    assert "still billing" not in result.stderr  # the cycle stops it, and says so
    assert ": stopped" in result.stderr
