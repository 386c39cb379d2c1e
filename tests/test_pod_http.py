"""pod.health, pod.move and pod.jupyter reach a local pod's HTTP ports (the mapped ports on
127.0.0.1, as RunPod's proxy URL would be); pod.ssh opens a real SSH session to its sshd.
A real inference API (chessbot.api) serves a real model trained here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import chess
import pytest

from podcycle.local import procs
from tests.conftest import INV, ROOT, child_environ, cmdline_of, environ_of, eventually


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    out = tmp_path_factory.mktemp("model")
    result = subprocess.run(
        [sys.executable, "-m", "chessbot.train", "--dataset-dir", str(tiny_dataset),
         "--output-dir", str(out), "--cache-dir", str(out / "cache"), "--epochs", "1",
         "--blocks", "1", "--channels", "8", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out / "model.pt"


def pod_dir(runpod, pod_id: str) -> Path:
    return Path(next(p["dir"] for p in runpod.pods() if p["id"] == pod_id))


@pytest.mark.slow
def test_health_and_move_answer_from_a_local_pod(inv, runpod, tiny_model: Path) -> None:
    with runpod.running_pod("http", {"START_INFERENCE_API": "1"}) as pod:
        # The API starts with the pod.
        health = eventually(lambda: (h := inv("pod.health", pod.id, "--json")).returncode == 0
                            and h, interval=0.5, what="pod.health to answer")
        answer = json.loads(health.stdout)
        assert answer["http_status"] == 200 and answer["model_loaded"] is False
        assert answer["url"].startswith("http://127.0.0.1:")
        no_model = inv("pod.move", pod.id)
        assert no_model.returncode == 1 and "has no model" in no_model.stderr
        target = pod_dir(runpod, pod.id) / "root/workspace/chess-bot/artifacts/run1/model.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_model, target)
        loaded = inv("pod.health", pod.id)
        assert loaded.returncode == 0 and "model" in loaded.stdout and "run1" in loaded.stdout
        fen = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
        moved = inv("pod.move", pod.id, "--fen", fen, "--json")
        assert moved.returncode == 0, moved.stderr
        best = json.loads(moved.stdout)["move"]
        assert chess.Move.from_uci(best) in chess.Board(fen).legal_moves
        plain = inv("pod.move", pod.id)
        assert plain.returncode == 0 and "(top:" in plain.stdout
        bad = inv("pod.move", pod.id, "--fen", "not a fen")
        assert bad.returncode == 2 and "invalid FEN" in bad.stderr
        jupyter = inv("pod.jupyter", pod.id, "--json")
        assert json.loads(jupyter.stdout)["url"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_a_down_api_is_one_clear_line(inv, runpod) -> None:
    with runpod.running_pod("no-api", {"START_INFERENCE_API": "0"}) as pod:
        down = inv("pod.health", pod.id)
        assert down.returncode == 1 and "Traceback" not in down.stderr
        error = [line for line in down.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "does not answer" in error[0]
        assert f"inv pod.logs {pod.id}" in down.stderr
        moved = inv("pod.move", pod.id)
        assert moved.returncode == 1 and "does not answer" in moved.stderr
    stopped = inv("pod.health", pod.id)
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr


@pytest.mark.slow
def test_ssh_runs_a_command_over_real_ssh_and_print_keeps_the_command(inv, runpod) -> None:
    from podcycle import sshkeys

    key = sshkeys.local_backend_key(runpod.dir)  # the key pod.ssh uses on the local backend
    line = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    sshkeys.register(runpod.client(), line)  # RunPod puts registered keys into new pods
    with runpod.running_pod("ssh", {"START_INFERENCE_API": "0"}) as pod:
        printed = inv("pod.ssh", pod.id, "--print")
        assert printed.returncode == 0 and printed.stdout.startswith("ssh ")
        ran = inv("pod.ssh", pod.id, "--command", "echo hello-from-$((6*7))")
        assert ran.returncode == 0, ran.stderr
        assert "hello-from-42" in ran.stdout
        again = inv("pod.ssh", pod.id, "--command", "exit 3")
        assert again.returncode == 3
        # A kill of `inv pod.ssh` reaches ssh itself: no session runs on, holding the terminal.
        started = runpod.dir / f"started-{pod.id}"
        env = child_environ()
        env.update(RUNPOD_BACKEND="local", POD_CYCLE_LOCAL_DIR=str(runpod.dir))
        long = subprocess.Popen([INV, "pod.ssh", pod.id, "--command",
                                 f"touch {started}; sleep 300"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def clients() -> list[int]:
            return [pid for pid in procs.all_pids() if (cmd := cmdline_of(pid)).startswith("ssh ")
                    and str(started) in cmd and procs.alive(pid)]

        try:
            eventually(started.exists, what="the command to start on the pod")
            long.send_signal(signal.SIGTERM)
            long.wait(timeout=30)
            left = clients()
        finally:
            if long.poll() is None:
                long.kill()
                long.wait()
            for pid in clients():  # what a failure would leave
                os.kill(pid, signal.SIGKILL)
        assert long.returncode != 0 and not left, left
        # The pod's own home, as a container has, for its sessions and its services: not the
        # host user's, whose .bashrc (conda, pyenv, a banner) sshd's bash would otherwise run.
        home = str(runpod.dir / "pods" / pod.id / "root" / "root")
        session = inv("pod.ssh", pod.id, "--command", "echo home=$HOME")
        assert f"home={home}\n" in session.stdout, session.stdout + session.stderr
        homes = {environ_of(pid).get("HOME") for pid in procs.pod_processes(pod.id)}
        assert homes - {None} == {home}  # None: a process that ended since the scan
