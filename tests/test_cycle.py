"""The cycle end to end against the local RunPod: real sshd, rsync, Fabric, real training.

Each test drives `inv` as an operator would. The module shares one local RunPod server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import chess
import pytest

from podcycle.local import procs
from podcycle.runs import RunFolder
from tests.conftest import INV, ROOT, SMALL_MODEL, child_environ, eventually, interrupt

pytestmark = pytest.mark.slow
FAKE_KEY = "rpa_FAKE_CYCLE_KEY_never_print_me_4242"


@pytest.fixture
def cycle_env(local_runpod, tmp_path: Path, tiny_dataset: Path) -> dict[str, str]:
    return {"POD_CYCLE_LOCAL_DIR": str(local_runpod.dir),
            "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            "RUNPOD_DATASET_DIR": str(tiny_dataset), **SMALL_MODEL}


def inv(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    full = child_environ()
    full.update(env)
    return subprocess.run([INV, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def cmdline(pid: int) -> str:
    """A process's command line; "" for one that ended while we looked."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def pod_status(runpod, pod_id: str) -> str:
    return next(p["status"] for p in runpod.pods() if p["id"] == pod_id)


def run_folder(env: dict[str, str], run_id: str) -> RunFolder:
    return RunFolder(Path(env["POD_CYCLE_ARTIFACTS_DIR"]), run_id)


def assert_complete_run(folder: RunFolder) -> None:
    assert folder.provision_json.is_file()
    assert "## Phases" in folder.observations.read_text()
    for name in ("model.pt", "metrics.json", "train.log", "remote_infer_move.json"):
        assert (folder.run_artifacts / name).is_file(), name
    assert (folder.collected / "timings" / "runpod_phase_times.jsonl").is_file()
    answer = json.loads(folder.infer_output.read_text())
    assert chess.Move.from_uci(answer["move"]) in chess.Board(answer["fen"]).legal_moves
    assert folder.loss_curve.read_bytes().startswith(b"\x89PNG")
    assert (folder.local_validation / "val_metrics.json").is_file()


def test_full_smoke_runs_the_whole_cycle(cycle_env, local_runpod, tmp_path) -> None:
    # As `make smoke` runs it (default epochs), on the tiny dataset: bench/cycle_bench.py
    # and `make smoke` run the default one. Its folders are named as a user's may be: a
    # space (ssh once split the run's known_hosts path there and reported a changed host
    # key), an apostrophe, shell syntax, parentheses.
    env = {k: v for k, v in cycle_env.items() if k not in SMALL_MODEL}  # the preset's model
    env["RUNPOD_CYCLE_RUN_ID"] = "e2e-full"
    env["POD_CYCLE_ARTIFACTS_DIR"] = str(tmp_path / "Jane's runs" / "My Projects $HOME `id`")
    dataset = tmp_path / "my data (v2)"
    shutil.copytree(cycle_env["RUNPOD_DATASET_DIR"], dataset)
    env["RUNPOD_DATASET_DIR"] = str(dataset)
    result = inv(env, "cycle.full-smoke")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = run_folder(env, "e2e-full")
    assert f"run folder {folder.path}" in result.stdout
    assert "[train] epoch 3/3" in result.stdout  # the log streamed live
    assert_complete_run(folder)
    report = folder.observations.read_text()
    for needle in ("pod id: lp", "estimated cost", "On-pod training phase", "val top-1",
                   "| train | done |", "loss_curve.png", "billed by RunPod: $"):
        assert needle in report, needle
    state = json.loads(folder.state_path.read_text())
    # The billed amount (GET /v2/billing/pods) sits beside the estimate, and agrees with it.
    billed, price = state["billing"]["amount"], state["pod"]["price_per_hour"]
    assert state["billing"]["available"] and 0 < billed
    assert billed <= price * (state["pod"]["billed_seconds"] + 60) / 3600
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    assert not procs.marked_processes_for(state["pod"]["id"]), "stopped pod left processes"
    # The model is home before local-validate, which runs here: the pod stops first (a
    # strength match of minutes billed the GPU pod through it before).
    steps = state["steps"]
    assert steps["stop"]["finished_at"] <= steps["local-validate"]["started_at"]
    assert result.stderr.count("==> stop") == 1


def plant_hostile_artifacts(env: dict[str, str], tmp_path: Path) -> Path:
    """What a hostile pod (a compromised image, a process on it) could leave among the run's
    artifacts for collect to bring home: a symlink to a host file, a setuid executable
    (owned by root when the host runs as root) and a FIFO. Local pods live on this machine,
    so the pod's run folder is a path here. Returns the host file the link points at."""
    state = json.loads(run_folder(env, env["RUNPOD_CYCLE_RUN_ID"]).state_path.read_text())
    artifacts = Path(state["remote"]["out"]) / "run_artifacts"
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("host secret\n")
    (artifacts / "leak.txt").symlink_to(host_file)
    (artifacts / "tool").write_bytes(b"#!/bin/sh\n")
    (artifacts / "tool").chmod(0o6755)
    os.mkfifo(artifacts / "fifo")
    return host_file


def test_stepwise_flow_with_a_runpod_style_key(cycle_env, local_runpod, tmp_path) -> None:
    """Six separate inv calls sharing RUNPOD_CYCLE_RUN_ID, through the runpod backend with a
    key that must never show up anywhere (output, files, process command lines)."""
    local_runpod.add_key(FAKE_KEY, ["templates", "catalog", "pods", "ssh-keys"])
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "id_ed25519")], check=True)
    env = {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "e2e-steps", "RUNPOD_BACKEND": "runpod",
           "RUNPOD_API_BASE_URL": local_runpod.url, "RUNPOD_API_KEY": FAKE_KEY,
           "RUNPOD_SSH_KEY": str(tmp_path / "id_ed25519"), "TRAIN_EPOCHS": "2"}
    registered = inv(env, "api.doctor", "--register-ssh-key")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    outputs = [registered.stdout + registered.stderr]
    seen_cmdlines: list[str] = []
    for step in ("start", "push-dataset", "train", "collect", "local-validate", "stop"):
        if step == "collect":
            planted = plant_hostile_artifacts(env, tmp_path)
        if step == "push-dataset":  # an rsync too old for the cycle, named before it runs
            old = tmp_path / "old-rsync"
            old.mkdir()
            (old / "rsync").write_text("#!/bin/sh\necho 'rsync  version 2.6.9  protocol 29'\n")
            (old / "rsync").chmod(0o755)
            refused = inv({**env, "PATH": f"{old}:{os.environ['PATH']}"}, "cycle.push-dataset")
            assert refused.returncode != 0 and "Traceback" not in refused.stderr
            assert "is version 2.6.9; the cycle needs rsync 3.2.3" in refused.stderr
            assert "is still running and billing" in refused.stderr, refused.stderr
        result = inv(env, f"cycle.{step}")
        outputs.append(result.stdout + result.stderr)
        seen_cmdlines += [cmdline(p) for p in procs.all_pids()]
        assert result.returncode == 0, f"{step}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        if step == "start":  # stdout is for results: RUN_DIR=$(inv cycle.start)
            started = result.stdout
        if step == "collect":  # the pod's script lines (bytes=...) stay off stdout
            assert "bytes=" not in result.stdout, result.stdout
    folder = run_folder(env, "e2e-steps")
    assert started.splitlines() == [str(folder.path)], started
    assert_complete_run(folder)
    state = json.loads(folder.state_path.read_text())
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    assert all(state["steps"][s]["status"] == "done" for s in
               ("start", "push-dataset", "train", "collect", "local-validate", "stop"))
    # Each step task's time counts in the run's total (a run driven by hand had none), at
    # least the time its steps took.
    assert state["total_seconds"] >= sum(state["steps"][s]["seconds"] for s in state["steps"])
    files = [p for p in folder.path.rglob("*") if p.is_file()]
    assert all(FAKE_KEY.encode() not in p.read_bytes() for p in files)
    assert FAKE_KEY not in "\n".join(outputs)
    assert FAKE_KEY not in "\n".join(seen_cmdlines)
    # What a hostile pod planted arrived as plain data, or not at all.
    landed = folder.run_artifacts
    assert not os.path.lexists(landed / "leak.txt") and not os.path.lexists(landed / "fifo")
    assert (landed / "tool").read_bytes() == b"#!/bin/sh\n"
    assert not (landed / "tool").stat().st_mode & (stat.S_ISUID | stat.S_ISGID), planted
    assert planted.read_text() == "host secret\n"  # the link's target, untouched
    # local-validate's --dataset-dir is what it validates on (it was ignored once the run
    # had pushed a dataset, and a folder that does not exist passed), checked first.
    missing = inv(env, "cycle.local-validate", "--dataset-dir", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "dataset folder not found" in missing.stderr
    other = tmp_path / "other data"
    shutil.copytree(env["RUNPOD_DATASET_DIR"], other)
    again = inv(env, "cycle.local-validate", "--dataset-dir", str(other))
    assert again.returncode == 0, again.stderr[-2000:]
    shown = json.loads((folder.local_validation / "val_metrics.json").read_text())
    assert shown["dataset"] == str(other)
    # A tampered collected file fails the manifest check before it is trusted.
    metrics = folder.run_artifacts / "metrics.json"
    metrics.write_text(metrics.read_text().replace("val_top1", "val_top2"))
    tampered = inv(env, "cycle.local-validate")
    assert tampered.returncode != 0
    assert "run_artifacts/metrics.json does not match its sha256" in tampered.stderr


def test_malformed_dataset_is_refused_before_any_pod_exists(cycle_env, local_runpod,
                                                            tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    good = json.dumps({"fen": chess.STARTING_FEN, "move": "e2e4"})
    (bad / "train.jsonl").write_text(good + "\n" + good + "\n" + '{"fen": "x", "move": 1}\n')
    (bad / "val.jsonl").write_text(good + "\n")
    before = len(local_runpod.pods())
    result = inv({**cycle_env, "RUNPOD_CYCLE_RUN_ID": "bad-data"}, "cycle.full-smoke",
                 "--dataset-dir", str(bad))
    assert result.returncode != 0
    assert f"{bad / 'train.jsonl'}:3:" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(local_runpod.pods()) == before, "no pod may be created for a bad dataset"


def test_a_failed_training_is_collected_stopped_and_non_zero(cycle_env, local_runpod) -> None:
    env = {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "train-fails", "TRAIN_EPOCHS": "1"}
    # Arguments the host cannot refuse (it checks the flags, not the pod's files): the
    # trainer fails on the pod.
    result = inv(env, "cycle.full-smoke", "--train-extra-args",
                 "--resume /no/such/checkpoint.pt")
    assert result.returncode != 0
    assert "training failed on the pod" in result.stderr
    folder = run_folder(env, "train-fails")
    log = (folder.run_artifacts / "train.log").read_text()
    assert "error: --resume /no/such/checkpoint.pt: no such checkpoint" in log
    state = json.loads(folder.state_path.read_text())
    assert state["steps"]["train"]["status"] == "failed"
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    assert "Resume with" in folder.observations.read_text()


def full_smoke_until(cycle_env: dict[str, str], run_id: str, marker: str,
                     lines: list[str]) -> subprocess.Popen:
    """cycle.full-smoke of a 500-epoch run (output piped, stderr with it), read into `lines`
    until a line holds `marker`; the test fails if it ends first."""
    env = child_environ()
    env.update(cycle_env, RUNPOD_CYCLE_RUN_ID=run_id, TRAIN_EPOCHS="500")
    proc = subprocess.Popen([INV, "cycle.full-smoke"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return proc
    proc.wait()
    pytest.fail(f"no line with {marker!r}:\n" + "".join(lines[-40:]))


def test_sigint_during_training_stops_the_pod(cycle_env, local_runpod) -> None:
    lines: list[str] = []
    proc = full_smoke_until(cycle_env, "interrupted", "[train] epoch 1/500", lines)
    try:
        state = json.loads((Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / "interrupted" /
                            "state.json").read_text())
        assert pod_status(local_runpod, state["pod"]["id"]) == "RUNNING"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        # A bound on the guarantee with a margin for a loaded machine (typically < 3 s).
        eventually(lambda: pod_status(local_runpod, state["pod"]["id"]) == "EXITED",
                   timeout=max(1.0, 30 - (time.monotonic() - sent)),
                   what="the pod to stop after SIGINT")
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines[-20:]) + rest
    assert "continue with --resume" in rest
    assert not procs.marked_processes_for(state["pod"]["id"])


def test_ctrl_c_after_the_output_reader_died_still_stops_the_pod(cycle_env, local_runpod
                                                                 ) -> None:
    """`inv cycle.full-smoke 2>&1 | tee run.log`, then Ctrl-C: the same Ctrl-C ends `tee`, so
    every line the cycle says on its way out meets a broken pipe. Stopping the pod must not
    depend on them: the first one ("==> stop") raised BrokenPipeError, the stop never ran,
    and the pod billed on."""
    proc = full_smoke_until(cycle_env, "piped", "==> train", [])
    try:
        proc.stdout.close()  # the reader is gone, as tee is after the Ctrl-C
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = json.loads((Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / "piped" /
                        "state.json").read_text())
    assert state["steps"]["stop"]["status"] == "done", state["steps"]
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    assert state["outcome"] == "interrupted" and proc.returncode != 0
    assert not procs.marked_processes_for(state["pod"]["id"])


def test_sigterm_on_a_step_task_ends_its_step_and_names_the_billing_pod(
        cycle_env, local_runpod) -> None:
    """A step task (here cycle.start waiting for SSH) killed with SIGTERM, as a CI job
    cancelled or a supervisor would: the step ends as interrupted in the run state, and the
    last lines name the pod that goes on and how to stop it (exit 130, no traceback)."""
    env = child_environ()
    env.update(cycle_env, RUNPOD_CYCLE_RUN_ID="step-sigterm")
    state_path = Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / "step-sigterm" / "state.json"

    def recorded_pod() -> str | None:
        try:
            return (json.loads(state_path.read_text()).get("pod") or {}).get("id")
        except (OSError, ValueError):
            return None

    local_runpod.admin("POST", "/_local/settings", {"ready_delay": 120})  # stays STARTING
    try:
        proc, out, err = interrupt(
            [INV, "cycle.start"], lambda _: eventually(
                recorded_pod, timeout=120, what="cycle.start to record its pod"),
            sig=signal.SIGTERM, timeout=60, env=env)
    finally:
        local_runpod.admin("POST", "/_local/settings", {"ready_delay": 0})
    pod_id = recorded_pod()
    assert proc.returncode == 130, out + err
    assert err.splitlines()[-2:] == [
        f"interrupted: start ended early; pod {pod_id} was created and goes on starting (it "
        "bills while it boots)",
        "  → run inv cycle.start -r step-sigterm again to wait for it (it reuses the pod), or "
        "inv cycle.stop -r step-sigterm stops it"]
    assert "Traceback" not in err
    state = json.loads(state_path.read_text())
    assert state["steps"]["start"]["status"] == "interrupted"
    # Billing from its create, as RunPod bills a booting pod (it never answered SSH).
    assert state["pod"]["billing_since"] == state["pod"]["created_at"]
    assert state["pod"]["running_since"] is None
    stopped = inv(cycle_env, "cycle.stop", "-r", "step-sigterm")
    assert stopped.returncode == 0, stopped.stderr
    assert pod_status(local_runpod, pod_id) == "EXITED"
    # Its boot was billed: the record said $0 for a pod that never answered SSH.
    assert json.loads(state_path.read_text())["pod"]["billed_seconds"] > 0


def test_a_failed_step_task_names_the_pod_it_leaves_billing(cycle_env, local_runpod) -> None:
    """cycle.start past its readiness timeout: a step task leaves the pod up (the next
    cycle.start reuses it), and its error now says so, with the two ways on. It said only
    what failed, and the pod billed on unmentioned."""
    env = {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "start-failed", "RUNPOD_READY_TIMEOUT": "2"}
    local_runpod.admin("POST", "/_local/settings", {"ready_delay": 120})  # stays STARTING
    try:
        failed = inv(env, "cycle.start")
    finally:
        local_runpod.admin("POST", "/_local/settings", {"ready_delay": 0})
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    pod_id = json.loads((Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / "start-failed" /
                         "state.json").read_text())["pod"]["id"]
    assert "did not offer SSH within 2s" in failed.stderr
    assert failed.stderr.splitlines()[-1] == (
        f"  → pod {pod_id} of run start-failed goes on starting (it bills while it boots): run "
        "inv cycle.start -r start-failed again, or inv cycle.stop -r start-failed stops it")
    stopped = inv(cycle_env, "cycle.stop", "-r", "start-failed")
    assert stopped.returncode == 0, stopped.stderr
    assert pod_status(local_runpod, pod_id) == "EXITED"


def sigterm_while_runpod_answers(runpod, env: dict[str, str], method: str, path: str,
                                 what: str, sig: signal.Signals = signal.SIGTERM
                                 ) -> tuple[subprocess.Popen, str, str]:
    """cycle.full-smoke sent SIGTERM (or `sig`) while the local RunPod holds its METHOD PATH
    request (delayed 4 s, once): the event is the fault taken in the server's state."""
    def arrived() -> bool:
        faults = runpod.admin("GET", "/_local/faults")["faults"]
        return all(f.get("times") == 0 for f in faults if f.get("path") == path)

    runpod.fault(method=method, path=path, delay=4, times=1)
    try:
        return interrupt([INV, "cycle.full-smoke"], lambda _: eventually(
            arrived, timeout=120, what=f"{what} to reach RunPod"), sig=sig,
            env={**child_environ(), **env})
    finally:
        runpod.clear_faults()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_while_the_create_is_in_flight_records_and_stops_the_pod(
        cycle_env, local_runpod, sig: signal.Signals) -> None:
    """The signal lands while RunPod is still answering the create: the pod it makes is
    recorded first (the signal is held until then), so the run's finally stops it. Before,
    the run recorded no pod, said "the pod was stopped", and the pod billed on. SIGHUP (the
    terminal or SSH session that ran it gone) ended the process on the spot: no finally ran,
    and the pod billed on."""
    run_id = f"create-in-flight-{sig.name.lower()}"
    proc, out, err = sigterm_while_runpod_answers(
        local_runpod, {**cycle_env, "RUNPOD_CYCLE_RUN_ID": run_id}, "POST", "/v2/pods",
        "the create request", sig)
    assert proc.returncode == 130, out + err
    assert f"{sig.name}: stopping once RunPod has answered the create" in err
    state = json.loads((Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / run_id /
                        "state.json").read_text())
    made = [p for p in local_runpod.client().list_pods() if p.name == f"pod-cycle-{run_id}"]
    assert [p.id for p in made] == [state["pod"]["id"]]  # the one pod, recorded
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    # Billed from its create to that stop (it booted meanwhile): the bill opened only after
    # the create step returned, which the held signal cut short, so it read 0.
    assert state["pod"]["billed_seconds"] > 0 and state["pod"]["billing_since"] is None


def test_interrupted_before_anything_was_made_says_so_and_leaves_no_run(
        cycle_env, local_runpod) -> None:
    proc, out, err = sigterm_while_runpod_answers(
        local_runpod, {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "nothing-yet"}, "GET",
        "/v2/templates", "the template lookup")
    assert proc.returncode == 130, out + err
    assert err.splitlines()[-2:] == [
        "interrupted before anything was created: nothing bills, and the new run's folder "
        "is removed", "  → run the command again"]
    assert not (Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / "nothing-yet").exists()
    assert not [p for p in local_runpod.client().list_pods() if p.name.endswith("nothing-yet")]


def test_resume_after_a_failed_collect_does_not_retrain(cycle_env, local_runpod) -> None:
    env = {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "resume-me", "TRAIN_EPOCHS": "1"}
    for step in ("start", "push-dataset", "train"):
        result = inv(env, f"cycle.{step}")
        assert result.returncode == 0, result.stderr[-2000:]
    folder = run_folder(env, "resume-me")
    folder.collected.parent.mkdir(parents=True, exist_ok=True)
    folder.collected.write_text("a file where the collected folder should be")
    failed = inv(env, "cycle.full-smoke", "--resume")
    assert failed.returncode != 0
    assert "[train]" not in failed.stdout
    state = json.loads(folder.state_path.read_text())
    assert state["steps"]["collect"]["status"] == "failed"
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    folder.collected.unlink()
    resumed = inv(env, "cycle.full-smoke", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "[train]" not in resumed.stdout, "resume must not train again"
    assert "train: done earlier in this run, skipped" in resumed.stderr
    assert_complete_run(folder)
    state = json.loads(folder.state_path.read_text())
    assert pod_status(local_runpod, state["pod"]["id"]) == "EXITED"
    named = [p for p in local_runpod.client().list_pods() if p.name == "pod-cycle-resume-me"]
    assert len(named) == 1, "the run's pod was restarted, never doubled"


def test_a_live_pod_is_never_provisioned_twice_and_host_keys_are_pinned(
        cycle_env, local_runpod) -> None:
    env = {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "one-pod"}
    first = inv(env, "cycle.start")
    assert first.returncode == 0, first.stderr
    second = inv(env, "cycle.start")
    assert second.returncode == 0 and "already has pod" in second.stderr
    named = [p for p in local_runpod.client().list_pods() if p.name == "pod-cycle-one-pod"]
    assert len(named) == 1
    # Swap the pod's host key and restart its sshd: the next step must refuse to connect.
    pod = named[0]
    pod_dir = next(p["dir"] for p in local_runpod.pods() if p["id"] == pod.id)
    key = Path(pod_dir) / "root" / "etc" / "ssh" / "ssh_host_ed25519_key"
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # The entrypoint's supervisor restarts sshd with the new key; the step's connect retry
    # waits for it.
    local_runpod.admin("POST", f"/_local/pods/{pod.id}/kill-sshd")
    refused = inv(env, "cycle.push-dataset")
    assert refused.returncode != 0
    assert "host key" in refused.stderr and "changed" in refused.stderr
    stopped = inv(env, "cycle.stop")
    assert stopped.returncode == 0
    assert pod_status(local_runpod, pod.id) == "EXITED"


def test_proxy_only_pods_are_explained() -> None:
    from podcycle.config import resolve
    from podcycle.remote import RemoteError, endpoint_for
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "status": "RUNNING",
                        "ssh": {"direct": None,
                                "proxy": {"host": "ssh.runpod.io", "port": 22,
                                          "username": "p1-64411eb2", "command": "ssh x"}}})
    settings = resolve({}, {}, environ={}, use_keyring=False)
    with pytest.raises(RemoteError) as err:
        endpoint_for(pod, settings, Path("/k"))
    assert "proxy" in err.value.message and "no rsync" in err.value.remedy
    gateway = resolve({}, {}, environ={"RUNPOD_SSH_HOST": "gw.example", "RUNPOD_SSH_USER": "u",
                                       "RUNPOD_SSH_PORT": "2222"}, use_keyring=False)
    endpoint = endpoint_for(pod, gateway, Path("/k"))
    assert (endpoint.host, endpoint.port, endpoint.user) == ("gw.example", 2222, "u")


def test_the_cycle_survives_sshd_dying_between_steps(cycle_env, local_runpod) -> None:
    env = {**cycle_env, "RUNPOD_CYCLE_RUN_ID": "sshd-dies"}
    assert inv(env, "cycle.start").returncode == 0
    pod_id = json.loads((Path(cycle_env["POD_CYCLE_ARTIFACTS_DIR"]) / "sshd-dies" /
                         "state.json").read_text())["pod"]["id"]
    # The pod's sshd is killed; its supervisor brings it back after a backoff. The next
    # step's rsync meets a refused connection first and must retry, not fail.
    local_runpod.admin("POST", f"/_local/pods/{pod_id}/kill-sshd")
    pushed = inv(env, "cycle.push-dataset")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert inv(env, "cycle.stop").returncode == 0
    assert pod_status(local_runpod, pod_id) == "EXITED"


def test_steps_after_start_need_the_run_id(cycle_env) -> None:
    result = inv(cycle_env, "cycle.train")
    assert result.returncode != 0
    assert "no run id" in result.stderr and "RUNPOD_CYCLE_RUN_ID" in result.stderr
    assert "Traceback" not in result.stderr
