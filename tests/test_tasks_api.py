"""The API tasks through the real `inv` CLI against the local RunPod: table and --json forms,
the seed's catalog-403 behaviour, and no API key in any output."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import INV, ROOT, child_environ, eventually, run_inv, task_arguments

TASKS = ["api.doctor", "template.list", "gpu.search", "pod.provision", "pod.status",
         "pod.list", "pod.stop", "pod.terminate", "pod.ssh", "local.up", "local.down",
         "local.status"]


@pytest.mark.slow
def test_inv_list_shows_every_task_with_one_line_help() -> None:
    result = run_inv("--list")
    assert result.returncode == 0, result.stderr
    for name in TASKS:
        assert f"  {name} " in result.stdout, name


@pytest.mark.slow
@pytest.mark.parametrize("args", [("--list",), ("--help", "runs.list"), ("runs.list", "--json")])
def test_a_reader_that_closed_the_pipe_gets_no_traceback(args: tuple[str, ...],
                                                         tmp_path) -> None:
    """`inv --list | head` once ended in Python's BrokenPipeError traceback, from Invoke's
    own listing and help as from a task's output. The reader here has gone before `inv`
    writes a byte, so every write fails: exit 1 in silence."""
    read, write = os.pipe()
    os.close(read)
    env = {**child_environ(), "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)}
    try:
        result = subprocess.run([INV, *args], cwd=ROOT, env=env, stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (1, "")


@pytest.mark.slow
@pytest.mark.parametrize("given", ["--echo=1", "-e=1", "--dry=yes"])
def test_a_switch_of_inv_itself_given_a_value_is_refused(given: str, tmp_path) -> None:
    """inv's own switches are parsed before the tasks load (so in a real `inv`, not in
    Program(namespace=...)): `inv --echo=1 runs.list` said `no task named '1'`."""
    switch = given.split("=")[0]
    result = run_inv(given, "runs.list", env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [
        f"error: {switch} is a switch and takes no value (got {given})",
        f"  → write {switch} alone, or leave it out"]
    assert result.stdout == ""


CLOSED_STREAMS_SCRIPT = """
import subprocess, sys
from types import SimpleNamespace
import tasks  # what inv loads first
from podcycle.remote import run

class Pod:  # a pod command streaming its log (Fabric's runner writes to the streams given)
    def run(self, command, **kwargs):
        kwargs["out_stream"].write("epoch 1\\n")
        kwargs["err_stream"].write("warning\\n")
        return SimpleNamespace(exited=0, stdout="epoch 1\\n", stderr="warning\\n")

result = run(Pod(), "train")
print("a line for a closed stdout")
print("a line for a closed stderr", file=sys.stderr)
with open(sys.argv[1], "w") as state:  # took the closed descriptor's number before
    subprocess.run(["sh", "-c", "echo leaked; echo leaked >&2"])
with open(sys.argv[2], "w") as done:
    done.write(f"exited {result.exited}")
"""


@pytest.mark.parametrize("closed", [(1,), (2,), (0, 1, 2)], ids=["stdout", "stderr", "all"])
def test_a_closed_standard_stream_is_given_dev_null(closed: tuple[int, ...], tmp_path) -> None:
    """`inv cycle.full-smoke >&-`: Python starts with sys.stdout None. The pod's streamed log
    failed on it (reported as a lost SSH connection, Invoke's thread traceback inside), and
    the next file opened took descriptor 1, where a child's output then went: into a run's
    state file. Loading the tasks gives each closed descriptor /dev/null."""
    state, done = tmp_path / "state.json", tmp_path / "done"

    def close() -> None:
        for fd in closed:
            os.close(fd)

    subprocess.run([sys.executable, "-c", CLOSED_STREAMS_SCRIPT, str(state), str(done)],
                   cwd=ROOT, env=child_environ(), preexec_fn=close, timeout=60)
    assert done.read_text() == "exited 0"
    assert state.read_text() == ""


def test_any_other_broken_pipe_keeps_its_traceback(monkeypatch) -> None:
    """Only a closed stdout or stderr is the reader's choice: a BrokenPipeError from a socket
    or a child's pipe, with both streams fine, still reaches the hook before it."""
    from podcycle.cli import quiet_broken_pipe

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: seen.append(info[0]))
    read, write = os.pipe()
    # The hook points stdout and stderr at /dev/null when it stays quiet: give it copies,
    # never the descriptors pytest captures through.
    out, err = os.fdopen(os.dup(write), "w"), open(os.devnull, "w")
    try:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        quiet_broken_pipe()
        sys.excepthook(BrokenPipeError, BrokenPipeError(32, "Broken pipe"), None)
        assert seen == [BrokenPipeError]
        os.close(read)  # now the reader has gone: that one is quiet
        read = None
        sys.excepthook(BrokenPipeError, BrokenPipeError(32, "Broken pipe"), None)
        assert seen == [BrokenPipeError]
    finally:
        monkeypatch.undo()
        out.close()
        err.close()
        for fd in (read, write):
            if fd is not None:
                os.close(fd)


@pytest.mark.parametrize(("argv", "said"), [
    (["runs.show"], ["error: inv runs.show needs RUN_ID, the run's id (inv runs.list shows "
                     "them)", "  → e.g. inv runs.show RUN_ID (or --run-id RUN_ID); inv --help "
                     "runs.show for the rest"]),
    (["runs.compare", "a"], ["error: inv runs.compare needs RUN2, the second run's id",
                             "  → e.g. inv runs.compare RUN1 RUN2 (or --run1 RUN1 --run2 RUN2); "
                             "inv --help runs.compare for the rest"]),
    (["pod.status", "--pod-id"], ["error: --pod-id of inv pod.status needs a value, none was "
                                  "given", "  → e.g. --pod-id POD_ID; inv --help pod.status "
                                  "for the rest"]),
    (["runs.show", "r1", "--jsn"], ["error: inv runs.show has no flag --jsn (did you mean "
                                    "--json?)", "  → inv --help runs.show lists its flags"]),
    (["runs.lst"], ["error: no task named 'runs.lst' (did you mean runs.list or runs.show?)",
                    "  → inv --list shows the tasks"]),
    (["runs.show", "a", "b"], ["error: 'b' is no task, and inv runs.show takes no more "
                               "arguments", "  → inv --list shows the tasks; inv --help "
                               "runs.show its arguments"]),
    (["runs.list", "b"], ["error: 'b' is no task, and inv runs.list takes no positional "
                          "argument", "  → inv --list shows the tasks; inv --help runs.list "
                          "its arguments"]),
    # A list flag alone: Invoke let it through empty, and `pod.provision --env` made a pod.
    (["pod.provision", "--env"], ["error: --env of inv pod.provision needs a value, none was "
                                  "given", "  → e.g. --env ENV; inv --help pod.provision for "
                                  "the rest"]),
    (["pod.provision", "--env", "A=1", "--env", "--wait"],
     ["error: --env of inv pod.provision needs a value, none was given",
      "  → e.g. --env ENV; inv --help pod.provision for the rest"]),
    (["runs.list", "--hlep"], ["error: inv runs.list has no flag --hlep (did you mean "
                               "--help?)", "  → inv --help runs.list lists its flags"]),
    # Invoke: `No idea what 'runs.lst' is!`
    (["--help", "runs.lst"], ["error: no task named 'runs.lst' (did you mean runs.list or "
                              "runs.show?)", "  → inv --list shows the tasks"]),
    (["--help", "pod"], ["error: 'pod' is a group of tasks, not a task",
                         "  → inv --list pod shows them"]),
    # Invoke split it into --json and 1, then refused `'1' is no task`.
    (["runs.list", "--json=1"], ["error: --json of inv runs.list is a switch and takes no "
                                 "value (got --json=1)", "  → write --json alone, or leave "
                                 "it out"]),
    # ... or took `false` for the volume, with --yes on: a destructive task confirmed.
    (["volume.delete", "--yes=false"], ["error: --yes of inv volume.delete is a switch and "
                                        "takes no value (got --yes=false)", "  → write --yes "
                                        "alone, or leave it out"]),
    (["check.regression", "--no-local-smoke=1"], [
        "error: --no-local-smoke of inv check.regression is a switch and takes no value (got "
        "--no-local-smoke=1)", "  → write --no-local-smoke alone, or leave it out"]),
    # A flag given twice: Invoke took the second value for a task, `'2' is no task`.
    (["data.import-pgn", "x.pgn", "--workers", "1", "--workers", "2"], [
        "error: --workers is given twice to inv data.import-pgn", "  → give it once"]),
    (["data.import-pgn", "x.pgn", "--workers=1", "--workers=2"], [
        "error: --workers is given twice to inv data.import-pgn", "  → give it once"]),
    # ... with a switch between: the switch was taken for a flag whose value was the `-r`.
    (["cycle.full-smoke", "-r", "a", "--keep-pod", "-r", "b"], [
        "error: -r is given twice to inv cycle.full-smoke", "  → give it once"]),
    # --env is meant to repeat: the stray word is what is wrong.
    (["pod.provision", "--env", "A=1", "--env", "B=2", "B=2"], [
        "error: 'B=2' is no task, and inv pod.provision takes no positional argument",
        "  → inv --list shows the tasks; inv --help pod.provision its arguments"]),
])
def test_what_invoke_cannot_parse_says_what_and_how(argv: list[str], said: list[str],
                                                    capsys) -> None:
    """Invoke's parser said `'runs.show' did not receive required positional arguments:
    'run_id'`, `Flag <_Argument: pod_id *> needed value and was not given one!` or `No idea
    what 'runs.lst' is!`: what it is, the nearest names, and how to give it, exit 1."""
    import copy

    from invoke import Program

    import tasks

    # A copy: Invoke pops each flag's help from its task as it builds the parser.
    with pytest.raises(SystemExit) as exited:
        Program(namespace=copy.deepcopy(tasks.ns)).run(["inv", *argv])
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == said


@pytest.mark.parametrize("argv", [["runs.compare", "--help"], ["runs.compare", "a", "-h"],
                                  ["pod.status", "--help"], ["pod.cost", "--help"]])
def test_help_in_place_of_a_positional_shows_the_tasks_help(argv: list[str], capsys) -> None:
    """`inv runs.compare --help` took --help as RUN1 and was refused for a missing RUN2."""
    import copy

    from invoke import Program

    import tasks

    with pytest.raises(SystemExit) as exited:
        Program(namespace=copy.deepcopy(tasks.ns)).run(["inv", *argv])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert out.startswith("Usage: inv") and f" {argv[0]} [--options]" in out.splitlines()[0]
    assert "Docstring:" in out


@pytest.mark.slow
def test_every_flag_of_every_task_is_documented() -> None:
    import tasks

    missing = []
    for name in tasks.ns.task_names:
        task = tasks.ns[name]
        params = [p for p in inspect.signature(task.body).parameters if p != "c"]
        missing += [f"{name} --{p}" for p in params if not task.help.get(p)]
        assert (task.body.__doc__ or "").strip(), f"{name} has no docstring"
    assert not missing, missing
    result = run_inv("--help", "gpu.search")
    assert "--max-price" in result.stdout and "default" in result.stdout


def test_no_flag_is_converted_by_invoke_itself() -> None:
    """A flag with an int (or float) default is converted by Invoke before the task runs:
    `--games nan` was a ValueError traceback. Numbers arrive as text (None defaults) and go
    through podcycle.cli.number, which names the flag and gives an example that works."""
    typed = [f"{name} --{argument.names[0]} ({argument.kind.__name__})"
             for name, arguments in task_arguments().items() for argument in arguments
             if argument.kind not in (str, bool, list)]
    assert not typed, typed


def test_every_task_that_picks_a_backend_takes_the_api_key() -> None:
    """`-b auto` means RunPod when a key is found: a task with --backend and no --api-key
    could not be given the key the way every other task is (sweep.run and check.regression
    had none, so a key given by flag never reached their trials and probes)."""
    lacking = [name for name, arguments in sorted(task_arguments().items())
               if {"backend"} <= {a.names[0] for a in arguments}
               and "api-key" not in {a.names[0] for a in arguments}]
    assert not lacking, lacking


# Flags every task shares, documented once (Settings, Short flags) rather than per task.
SHARED_FLAGS = {"api-key", "backend", "json"}


def readme_examples() -> dict[str, list[str]]:
    """Each `inv TASK ...` command line in README.md's shell blocks: task -> its arguments
    (up to a pipe, `;`, `&&` or a comment; a backslash continues the line)."""
    text = (ROOT / "README.md").read_text()
    found: dict[str, list[str]] = {}
    for block in re.findall(r"^```(?:sh|bash|console|shell)\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for match in re.finditer(r"(?:^|[\s;&|(])(?:\S*/)?inv\s+([a-z][\w.-]*)([^|;&#]*)",
                                     line):
                found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_the_readme_shows_every_task_and_every_flag_in_an_example() -> None:
    """The README is the user's door: each task has a command line in a shell block, and
    each of its own flags (long or short form) appears in one of that task's examples; a
    positional argument counts when an example passes it plainly."""
    examples = readme_examples()
    missing = []
    for name, arguments in sorted(task_arguments().items()):
        lines = examples.get(name)
        if not lines:
            missing.append(f"{name}: no example")
            continue
        words = {word.split("=")[0] for line in lines for word in line.split()}
        for argument in arguments:
            flag = argument.names[0]
            forms = {f"--{flag}", f"--no-{flag}"} | {f"-{short}" for short in argument.names[1:]}
            shown = bool(words & forms) or (argument.positional and any(
                line.strip() and not line.strip().startswith("-") for line in lines))
            if flag not in SHARED_FLAGS and not shown:
                missing.append(f"{name} --{flag}")
    assert not missing, f"README.md has no example for: {missing}"
    text = (ROOT / "README.md").read_text()
    assert all(f"`--{flag}`" in text for flag in SHARED_FLAGS)


@pytest.mark.slow
def test_templates_and_gpus_in_table_and_json(inv) -> None:
    table = inv("template.list")
    assert table.returncode == 0 and "chess-bot-training" in table.stdout
    as_json = json.loads(inv("template.list", "--json").stdout)
    assert as_json[0]["name"] == "chess-bot-training"
    gpus = inv("gpu.search", "--cloud", "secure", "--min-memory", "80", "--json", "--limit", "0")
    offers = json.loads(gpus.stdout)
    assert offers and all(o["memory_gb"] >= 80 and o["cloud"] == "SECURE" for o in offers)
    prices = [o["price_per_hour"] for o in offers]
    assert prices == sorted(prices)
    cheap = json.loads(inv("gpu.search", "--max-price", "0.5", "--available-only", "--json",
                           "--gpu-count", "2").stdout)
    assert cheap and all(o["price_per_hour"] <= 0.5 and o["availability"] != "NONE"
                         for o in cheap)
    assert "GPU TYPE ID" in inv("gpu.search", "--limit", "3").stdout


@pytest.mark.slow
def test_pod_lifecycle_tasks(inv, runpod) -> None:
    created = inv("pod.provision", "--gpu-type-id", "RTX A5000", "--name", "cli-pod", "--env",
                  "START_INFERENCE_API=0", "--env", "EXTRA=1", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    pod = json.loads(created.stdout)
    assert pod["gpu"]["id"] == "NVIDIA RTX A5000" and pod["status"] == "RUNNING"
    assert pod["env"]["EXTRA"] == "1" and pod["env"]["START_INFERENCE_API"] == "0"
    assert "START_IDLE_WATCHDOG" in pod["env"] and pod["env"]["START_IDLE_WATCHDOG"] == "0", \
        "the preset env is opt-in: the template's value stays"
    status = json.loads(inv("pod.status", pod["id"], "--json").stdout)
    assert status["ssh"]["direct"]["host"] == "127.0.0.1"
    assert "cli-pod" in inv("pod.list").stdout
    assert any(p["id"] == pod["id"] for p in json.loads(inv("pod.list", "--json").stdout))
    ssh = inv("pod.ssh", pod["id"], "--print")
    assert ssh.stdout.startswith("ssh ") and f"-p {status['ssh']['direct']['port']}" in ssh.stdout
    assert json.loads(inv("pod.ssh", pod["id"], "--json").stdout)["kind"] == "direct"
    stopped = inv("pod.stop", pod["id"], "--json")
    assert json.loads(stopped.stdout)["status"] == "EXITED"
    # Stopped pods stay listed; --billing leaves them out, --name picks by name, any case.
    assert pod["id"] in inv("pod.list").stdout
    assert pod["id"] not in inv("pod.list", "--billing").stdout
    assert [p["id"] for p in json.loads(inv("pod.list", "-n", "CLI-P", "--json").stdout)] == \
        [pod["id"]]
    assert json.loads(inv("pod.list", "--name", "no-such-pod", "--json").stdout) == []
    again = inv("pod.stop", pod["id"])
    assert again.returncode == 0 and "already stopped" in again.stderr
    no_ssh = inv("pod.ssh", pod["id"])
    assert no_ssh.returncode != 0 and "no SSH endpoint" in no_ssh.stderr
    assert "Traceback" not in no_ssh.stderr
    refused = inv("pod.terminate", pod["id"])
    assert refused.returncode == 2 and "refused without --yes" in refused.stderr
    gone = inv("pod.terminate", pod["id"], "--yes", "--json")
    assert json.loads(gone.stdout)["status"] == "TERMINATED"
    missing = inv("pod.status", pod["id"])
    assert missing.returncode != 0 and "not found" in missing.stderr


@pytest.mark.slow
def test_a_pod_provisioned_with_a_given_key_takes_that_key_for_pod_ssh(inv, tmp_path) -> None:
    """RUNPOD_SSH_KEY=KEY inv pod.provision registered the local RunPod's own key instead, and
    `RUNPOD_SSH_KEY=KEY inv pod.ssh` then got "Permission denied (publickey)"."""
    import subprocess

    key = tmp_path / "mine"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {"RUNPOD_SSH_KEY": str(key)}
    created = inv("pod.provision", "--name", "own-key", "--env", "START_INFERENCE_API=0",
                  "--wait", "--json", env=env)
    assert created.returncode == 0, created.stderr
    pod = json.loads(created.stdout)
    try:
        said = inv("pod.ssh", pod["id"], "--command", "echo reached", env=env)
        assert said.returncode == 0 and said.stdout.strip() == "reached", said.stderr
    finally:
        assert inv("pod.terminate", pod["id"], "--yes").returncode == 0


@pytest.mark.slow
def test_preset_env_is_layered_under_explicit_env(inv) -> None:
    created = inv("pod.provision", "--name", "preset", "--use-runpod-training-preset-env",
                  "--env", "START_IDLE_WATCHDOG=0", "--env", "START_INFERENCE_API=0", "--json")
    pod = json.loads(created.stdout)
    assert pod["env"]["START_IDLE_WATCHDOG"] == "0" and pod["env"]["IDLE_MINUTES"] == "60"
    inv("pod.terminate", pod["id"], "--yes")


@pytest.mark.slow
def test_provision_errors_are_one_line_and_actionable(inv) -> None:
    bad_gpu = inv("pod.provision", "--gpu-type-id", "NVIDIA H2000")
    assert bad_gpu.returncode != 0 and "unknown GPU type" in bad_gpu.stderr
    assert "did you mean" in bad_gpu.stderr
    bad_template = inv("pod.provision", "--template-name", "nope")
    assert bad_template.returncode != 0 and "no template named 'nope'" in bad_template.stderr
    # A name that names nothing is refused input, as an unknown --cloud is (hunt: 1 and 2).
    assert bad_gpu.returncode == bad_template.returncode == 2
    bad_env = inv("pod.provision", "--env", "NOEQUALS")
    assert bad_env.returncode != 0 and "KEY=VALUE" in bad_env.stderr
    for result in (bad_gpu, bad_template, bad_env):
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_cuda_floor_no_host_meets_makes_no_pod_and_names_the_setting(inv, local_runpod
                                                                      ) -> None:
    """RUNPOD_MIN_CUDA_VERSION reaches the create as gpu.minCudaVersion: the local RunPod's
    hosts report CUDA 12.8, so a 13.0 floor is refused (as RunPod refuses for capacity) for
    every candidate GPU, no pod is made, and the remedy names the setting; a bad value is
    refused before any request."""
    before = len(local_runpod.requests())
    refused = inv("pod.provision", "--name", "cuda-floor",
                  env={"RUNPOD_MIN_CUDA_VERSION": "13.0"})
    assert refused.returncode != 0, refused.stdout
    assert "no machine offers CUDA 13.0 or later" in refused.stderr
    assert "the pod asks for a host of CUDA 13.0 or later (RUNPOD_MIN_CUDA_VERSION, the " \
        "image's), which may be what no GPU had" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "cuda-floor" not in [pod.name for pod in local_runpod.client().list_pods()]
    creates = [r for r in local_runpod.requests()[before:]
               if (r["method"], r["path"]) == ("POST", "/v2/pods")]
    assert creates and all(r["status"] == 400 for r in creates)
    before = len(local_runpod.requests())
    bad = inv("pod.provision", "--name", "cuda-floor", env={"RUNPOD_MIN_CUDA_VERSION": "12"})
    assert bad.returncode != 0
    assert bad.stderr.startswith("error: RUNPOD_MIN_CUDA_VERSION (from RUNPOD_MIN_CUDA_VERSION) "
                                 "is not a CUDA version major.minor: '12'")
    assert not [r for r in local_runpod.requests()[before:] if r["method"] == "POST"]


def account_has_an_ssh_key(runpod) -> None:
    """The account has an SSH key, as a RunPod account that provisions does (on its own, not
    through an earlier test: tests run in any order, on any worker)."""
    account = runpod.client()
    if not account.get_ssh_keys():
        account.put_ssh_keys(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKk3mR1x0Ewy0l8ZL2uJvEoXrL9hQz"
                              "Q4t6bWcVYq3n1A limited@test"])


@pytest.fixture
def limited(runpod):
    """A RunPod key that reads templates, pods and SSH keys but is denied the catalog: the
    seed's 2026-02-26 incident. Used through the runpod backend pointed at the local server."""
    key = "rpa_LIMITED_templates_pods_only_0001"
    runpod.add_key(key, ["templates", "pods", "ssh-keys"])
    account_has_an_ssh_key(runpod)
    return {"RUNPOD_BACKEND": "runpod", "RUNPOD_API_BASE_URL": runpod.url,
            "RUNPOD_API_KEY": key}


@pytest.mark.slow
def test_catalog_denied_gpu_search_offers_three_ways_out(inv, limited) -> None:
    result = inv("gpu.search", env=limited)
    assert result.returncode != 0
    assert "denied" in result.stderr
    for way in ("catalog access", "RunPod UI", "--gpu-type-id"):
        assert way in result.stderr
    # Named where a run can use it: a pod from pod.provision or the UI gives no run a pod.
    assert "on inv cycle.start, cycle.full-smoke or pod.provision" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_catalog_denied_provision_with_explicit_gpu_warns_and_proceeds(inv, limited, runpod
                                                                       ) -> None:
    result = inv("pod.provision", "--gpu-type-id", "NVIDIA H200", "--name", "denied-h200",
                 "--env", "START_INFERENCE_API=0", "--json", env=limited)
    assert result.returncode == 0, result.stderr
    pod = json.loads(result.stdout)
    assert pod["gpu"]["id"] == "NVIDIA H200"
    warnings = [json.loads(line) for line in result.stderr.splitlines()
                if line.startswith("{")]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "gpu_validation_skipped"
    assert warnings[0]["gpu_type_id"] == "NVIDIA H200"
    inv("pod.terminate", pod["id"], "--yes", env=limited)
    no_gpu = inv("pod.provision", "--name", "x", env=limited)
    assert no_gpu.returncode != 0 and "--gpu-type-id" in no_gpu.stderr


@pytest.mark.slow
def test_doctor_shows_templates_ok_catalog_denied_and_the_remedy(inv, limited) -> None:
    table = inv("api.doctor", env=limited)
    assert table.returncode != 0
    assert "RUNPOD_API_KEY" in table.stdout
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.startswith("  ")
             and len(line.split()) > 1}
    assert "ok" in lines["templates"] and "denied" in lines["catalog"]
    assert "works for templates" in table.stdout and "--gpu-type-id" in table.stdout
    report = json.loads(inv("api.doctor", "--json", env=limited).stdout)
    assert report["scopes"]["templates"]["status"] == "ok"
    assert report["scopes"]["catalog"]["status"] == "denied"
    assert report["remedies"]


@pytest.mark.slow
def test_doctor_all_green_on_the_local_runpod(inv) -> None:
    result = inv("api.doctor", "--register-ssh-key")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


FAKE_KEY = "rpa_FAKEKEY_MUST_NEVER_BE_PRINTED_7f3a9c"


@pytest.mark.slow
def test_a_fake_key_appears_nowhere(inv, runpod, tmp_path) -> None:
    outputs = []
    env = {"RUNPOD_BACKEND": "runpod", "RUNPOD_API_BASE_URL": runpod.url,
           "RUNPOD_API_KEY": FAKE_KEY, "POD_CYCLE_DEBUG": "1"}
    # Unknown key: every call fails with 401.
    for args in (["api.doctor"], ["template.list"], ["gpu.search", "--json"], ["pod.list"],
                 ["pod.provision", "--gpu-type-id", "NVIDIA L4"], ["pod.status", "x"]):
        result = inv(*args, env=env)
        assert result.returncode != 0
        outputs.append(result.stdout + result.stderr)
    flag_env = {k: v for k, v in env.items() if k != "RUNPOD_API_KEY"}
    result = inv("template.list", "--api-key", FAKE_KEY, env=flag_env)
    outputs.append(result.stdout + result.stderr)
    # The same key made valid: the success paths, with debug logging on.
    runpod.add_key(FAKE_KEY, ["templates", "catalog", "pods", "ssh-keys"])
    account_has_an_ssh_key(runpod)
    for args in (["api.doctor", "--json"], ["gpu.search"], ["pod.list", "--json"]):
        outputs.append((lambda r: r.stdout + r.stderr)(inv(*args, env=env)))
    created = inv("pod.provision", "--name", "leak-check", "--env", "START_INFERENCE_API=0",
                  "--json", env=env)
    outputs.append(created.stdout + created.stderr)
    assert created.returncode == 0, created.stderr
    inv("pod.terminate", json.loads(created.stdout)["id"], "--yes", env=env)
    # Unreachable API and a 500 answer.
    from podcycle.local.pods import free_port

    dead = {**env, "RUNPOD_API_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    outputs.append((lambda r: r.stdout + r.stderr)(inv("template.list", env=dead)))
    runpod.fault(method="GET", path="/v2/templates", status=500, detail=f"echo {FAKE_KEY}")
    outputs.append((lambda r: r.stdout + r.stderr)(inv("template.list", env=env)))
    joined = "\n".join(outputs)
    assert "GET /v2/templates" in joined and "401" in joined  # the runs really happened
    assert FAKE_KEY not in joined
    assert FAKE_KEY[-12:] not in joined


@pytest.mark.slow
def test_invoke_debug_lines_mask_the_key_and_secret_env_values(inv) -> None:
    """`inv --debug` logs each flag's value as Invoke parses it, before any task runs: the
    --api-key value and a secret-looking --env value showed in full, 8 and 6 times."""
    from podcycle.local.pods import free_port

    env = {"RUNPOD_BACKEND": "runpod", "RUNPOD_API_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    result = inv("--debug", "pod.provision", "--gpu-type-id", "NVIDIA L4", "--env",
                 "HF_TOKEN=hf_secret_token_value_42", "--env", "PLAIN=visible_value",
                 "--api-key", FAKE_KEY, env=env)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "Setting flag" in said, said[-2000:]  # Invoke's lines
    assert FAKE_KEY not in said and "hf_secret_token_value_42" not in said
    assert "'--api-key', '****'" in said and "HF_TOKEN=****" in said
    assert "PLAIN=visible_value" in said  # only what looks secret is masked


@pytest.mark.slow
def test_a_key_the_parser_takes_for_a_stray_word_is_masked(inv) -> None:
    """Invoke prints its parse errors itself: `--api-key KEY` on a task without the flag,
    the flag given twice, or `--api-key= KEY` (a stray space) printed the key in full."""
    for args, refusal in (
            (["runs.show", "--api-key", FAKE_KEY], "'****' is no task"),
            (["pod.list", "--api-key", FAKE_KEY, "--api-key", FAKE_KEY],
             "--api-key is given twice"),
            (["pod.list", "--api-key=", FAKE_KEY], "'****' is no task")):
        result = inv(*args)
        said = result.stdout + result.stderr
        assert result.returncode != 0 and refusal in said, (args, said)
        assert FAKE_KEY not in said and FAKE_KEY[-12:] not in said, args


@pytest.mark.slow
def test_the_configured_key_pasted_on_the_command_line_is_masked(tmp_path) -> None:
    """A refusal printed before any task resolves its settings: the key from the environment
    or a .env, pasted where a pod id belongs, as a task's name, the value of inv's own -f
    or a switch's, was printed in full (only an --api-key value was known then)."""
    env_key, dotenv_key = "rpa_ENVKEY_0123456789", "rpa_DOTENV_0123456789"
    (tmp_path / ".env").write_text(f"RUNPOD_API_KEY={dotenv_key}\n")
    for key, env in ((env_key, {"RUNPOD_API_KEY": env_key}), (dotenv_key, {})):
        for args, refusal in (
                (["pod.list", key], "'****' is no task"),
                (["pod.status", "x", key], "'****' is no task"),
                ([key], "no task named '****'"),
                (["--help", key], "no task named '****'"),
                (["--list", key], "'****' not found"),
                (["--echo=" + key, "pod.list"], "(got --echo=****)"),
                (["pod.list", "--json=" + key], "(got --json=****)"),
                (["-f", key, "pod.list"], "****: no such config file"),
                # A task's argument that holds the key: refused before the task runs (it
                # was its own refusal, a lookup of a folder, a DNS lookup of a host).
                (["pod.logs", "x", "--tail", key], "error: the value of --tail is, or holds, "
                                                  "a secret this machine is configured with"),
                (["data.stats", key], "is, or holds, a secret this machine is configured"),
                (["runs.board", "--host", key], "error: the value of --host is, or holds")):
            result = run_inv("-r", str(ROOT / "tasks"), *args, env=env, cwd=tmp_path)
            said = result.stdout + result.stderr
            assert result.returncode != 0 and refusal in said, (args, said)
            assert key not in said and key[4:] not in said, (args, said)


@pytest.mark.slow
def test_a_refusal_reads_the_keyring_only_off_the_local_backend(tmp_path) -> None:
    """Masking the configured key in a refusal read the OS keyring, --backend local too: a
    typo could bring up an unlock prompt, or wait on a locked keyring (README: a local run
    never reads it)."""
    (tmp_path / "spykeyring.py").write_text(
        "import os\nfrom keyring.backend import KeyringBackend\n\n\n"
        "class Spy(KeyringBackend):\n    priority = 1\n\n"
        "    def get_password(self, service, username):\n"
        "        open(os.environ['SPY_LOG'], 'a').write(service + '\\n')\n\n"
        "    def set_password(self, *args):\n        pass\n\n"
        "    def delete_password(self, *args):\n        pass\n")
    log = tmp_path / "reads"
    spy = {"PYTHON_KEYRING_BACKEND": "spykeyring.Spy", "PYTHONPATH": str(tmp_path),
           "SPY_LOG": str(log)}
    for args, env in ((["pod.list", "junk"], {"RUNPOD_BACKEND": "local"}),
                      (["pod.list", "--backend", "local", "junk"], {}),
                      (["pod.list", "-b", "local", "--tail", "x"], {})):
        result = run_inv(*args, env={**spy, **env})
        assert result.returncode != 0 and not log.exists(), (args, result.stderr)
    # A key from the environment is the key: the keyring, its last source, is not read
    # (every command that says anything masks through here, so it asked on each of them).
    result = run_inv("pod.list", "junk", env={**spy, "RUNPOD_API_KEY": "rpa_0123456789abc"})
    assert result.returncode != 0 and not log.exists(), result.stderr
    result = run_inv("pod.list", "junk", env=spy)  # auto: the keyring may hold the key
    assert result.returncode != 0 and log.read_text() == "runpod\n", result.stderr


def test_the_command_lines_secrets_are_registered() -> None:
    from podcycle.redact import redact, register_command_line

    register_command_line(["inv", "pod.provision", "--api-key=rpa_ONE_0123456789", "--env",
                           "MY_PASSWORD=pw-0123456789", "--env=GIT_TOKEN=tok-0123456789",
                           "--env", "PLAIN=plain-0123456789", "--name", "pod-0123456789"])
    text = "rpa_ONE_0123456789 pw-0123456789 tok-0123456789 plain-0123456789 pod-0123456789"
    assert redact(text) == "**** **** **** plain-0123456789 pod-0123456789"


def test_client_exceptions_never_hold_the_key(runpod) -> None:
    from podcycle.runpod.client import RunPodClient
    from podcycle.runpod.errors import ApiError

    runpod.fault(method="GET", path="/v2/pods", status=500, detail=f"bad {FAKE_KEY}")
    client = RunPodClient(runpod.url, FAKE_KEY, max_retries=0)
    unknown = RunPodClient(runpod.url, FAKE_KEY + "x", max_retries=0)
    for call in (unknown.list_templates, client.list_pods):
        with pytest.raises(ApiError) as err:
            call()
        assert FAKE_KEY not in str(err.value) and FAKE_KEY not in repr(err.value.args)


@pytest.mark.slow
def test_local_status_json(inv, runpod) -> None:
    status = json.loads(inv("local.status", "--json").stdout)
    assert status == {"running": True, "url": runpod.url, "pid": runpod.info["pid"],
                      "api_key": runpod.key}


def test_collection_load_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys; import tasks; "
            "print([m for m in ('fabric', 'paramiko', 'requests', 'torch', 'chess', 'numpy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_slow_readiness_is_bounded_and_an_erroring_pod_fails_fast(inv, runpod) -> None:
    runpod.admin("POST", "/_local/settings", {"ready_delay": 4})
    try:
        slow = inv("pod.provision", "--name", "slow", "--env", "START_INFERENCE_API=0",
                   "--wait", env={"RUNPOD_READY_TIMEOUT": "1"})
        assert slow.returncode != 0
        assert "did not offer SSH within 1s" in slow.stderr and "pod.stop" in slow.stderr
    finally:
        runpod.admin("POST", "/_local/settings", {"ready_delay": 0, "ready_timeout": 2})
    try:
        broken = inv("pod.provision", "--name", "no-sshd", "--env", "START_SSHD=0", "--env",
                     "START_INFERENCE_API=0", "--wait")
        assert broken.returncode != 0 and "is ERROR instead of starting" in broken.stderr
        # It failed on the pod's status, fast: not on the ready timeout (60 s here). No clock
        # is read: a loaded machine may take any time to get there.
        assert "did not offer SSH" not in broken.stderr
        assert "see why with inv pod.logs" in broken.stderr
    finally:
        runpod.admin("POST", "/_local/settings", {"ready_timeout": 60})
    for pod in runpod.client().list_pods():
        if pod.name in ("slow", "no-sshd"):
            runpod.client().delete_pod(pod.id)


def test_pod_ssh_prefers_direct_and_explains_the_proxy() -> None:
    from pathlib import Path

    from podcycle.errors import PodCycleError
    from podcycle.pods import ssh_command
    from podcycle.runpod.models import Pod

    proxy = {"host": "ssh.runpod.io", "port": 22, "username": "p1-64411eb2",
             "command": "ssh p1-64411eb2@ssh.runpod.io"}
    direct = {"host": "127.0.0.1", "port": 2222, "username": "root", "command": "ssh ..."}
    kind, command, note = ssh_command(Pod.from_api({"id": "p1", "status": "RUNNING",
                                                   "ssh": {"proxy": proxy, "direct": direct}}),
                                      Path("/k"))
    assert kind == "direct" and command == "ssh root@127.0.0.1 -p 2222 -i /k" and note is None
    kind, command, note = ssh_command(Pod.from_api({"id": "p1", "status": "RUNNING",
                                                   "ssh": {"proxy": proxy, "direct": None}}),
                                      None)
    assert kind == "proxy" and command == "ssh p1-64411eb2@ssh.runpod.io"
    assert "no rsync" in note
    with pytest.raises(PodCycleError, match="no SSH endpoint"):
        ssh_command(Pod.from_api({"id": "p1", "status": "EXITED",
                                  "ssh": {"proxy": None, "direct": None}}), None)
    # Running, with neither (no 22/tcp, no proxy: the local RunPod's pod.provision
    # --allow-proxy-ssh): "a stopped pod has none until it starts again" misled.
    # RunPod also says RUNNING a little before it publishes the address: no advice to stop.
    with pytest.raises(PodCycleError, match="is RUNNING but offers no SSH endpoint yet"
                       ) as running:
        ssh_command(Pod.from_api({"id": "p1", "status": "RUNNING",
                                  "ssh": {"proxy": None, "direct": None}}), None)
    assert "stopped pod" not in running.value.remedy and "22/tcp" in running.value.remedy
    assert "try again in a moment" in running.value.remedy
    assert "pod.stop" not in running.value.remedy


@pytest.mark.slow
def test_idle_watchdog_stops_its_own_pod_through_the_api(runpod) -> None:
    """The real watchdog in a local pod, with the pod's own id and key, against the local
    RunPod's v2 API: no SSH session, no training, no API traffic → the pod stops itself."""
    client = runpod.client()
    pod = client.create_pod({
        "name": "idle", "templateId": "tpl-local-chessbot",
        "gpu": {"id": "NVIDIA RTX A5000", "count": 1},
        "env": {"START_IDLE_WATCHDOG": "1", "IDLE_MINUTES": "0.05", "IDLE_CHECK_SECONDS": "1",
                "START_INFERENCE_API": "0"}})
    seen = []

    def ran_then_exited() -> bool:
        seen.append(client.get_pod(pod.id).status)
        return "RUNNING" in seen and seen[-1] == "EXITED"

    eventually(ran_then_exited, interval=0.5, what=lambda: f"RUNNING then EXITED, saw {seen}")
    stops = [r for r in runpod.requests()
             if r["path"] == f"/v2/pods/{pod.id}/action" and r["method"] == "POST"]
    assert stops, "the watchdog must stop the pod through POST /v2/pods/{id}/action"
    client.delete_pod(pod.id)


@pytest.mark.slow
def test_a_quoted_key_is_masked_unquoted_before_the_settings_are_read(tmp_path) -> None:
    """A key given in quotes (RUNPOD_API_KEY='"rpa_..."') works since the quotes are taken
    off; its unquoted form, pasted as a task's name, was printed in full (only the quoted
    form was registered for masking)."""
    key = "rpa_QUOTEDKEY_0123456789"
    for env in ({"RUNPOD_API_KEY": f'"{key}"'}, {"RUNPOD_API_KEY": f"'{key}'\n"}):
        result = run_inv("-r", str(ROOT / "tasks"), key, env=env, cwd=tmp_path)
        said = result.stdout + result.stderr
        assert result.returncode != 0 and "no task named " in said and "****" in said, said
        assert key not in said and key[4:] not in said, said
    from podcycle.config import resolve
    from podcycle.errors import ConfigError

    with pytest.raises(ConfigError, match="--api-key is empty"):  # not another key, unsaid
        resolve({"api_key": '""'}, {}, environ={"RUNPOD_API_KEY": key}, use_keyring=False)


@pytest.mark.slow
def test_secret_looking_env_values_are_masked_in_pod_json(inv, runpod) -> None:
    created = inv("pod.provision", "--name", "secrets", "--env", "HF_TOKEN=hf_abcdefsecret",
                  "--env", "START_INFERENCE_API=0", "--env", "VISIBLE=yes", "--json")
    pod = json.loads(created.stdout)
    assert pod["env"]["HF_TOKEN"] == "****" and pod["env"]["VISIBLE"] == "yes"
    assert "hf_abcdefsecret" not in created.stdout + created.stderr
    listed = inv("pod.list", "--json").stdout
    assert "hf_abcdefsecret" not in listed
    inv("pod.terminate", pod["id"], "--yes")


@pytest.mark.slow
def test_pod_provision_interrupted_names_the_pod_it_made(runpod) -> None:
    """SIGTERM (or Ctrl-C) while pod.provision --wait waits: exit 130 and a line naming the
    pod that bills and how to stop it; before, it exited 1 in silence."""
    import signal

    from tests.conftest import INV, child_environ, interrupt

    def created(proc) -> None:  # the event: the pod exists
        for line in proc.stderr:
            if line.startswith("created pod "):
                return

    env = {**child_environ(), "RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir)}
    runpod.admin("POST", "/_local/settings", {"ready_delay": 120})
    try:
        proc, out, err = interrupt([INV, "pod.provision", "--name", "interrupted-wait", "--wait",
                                    "--env", "START_INFERENCE_API=0"], created,
                                   sig=signal.SIGTERM, timeout=60, env=env)
    finally:
        runpod.admin("POST", "/_local/settings", {"ready_delay": 0})
    [made] = [p for p in runpod.client().list_pods() if p.name == "interrupted-wait"]
    try:
        assert proc.returncode == 130, err
        assert err.splitlines()[-2:] == [
            f"interrupted: pod {made.id} (interrupted-wait) was created and bills",
            f"  → inv pod.stop {made.id} stops it (inv pod.terminate {made.id} --yes deletes it)"]
    finally:
        runpod.client().delete_pod(made.id)


@pytest.mark.slow
def test_pod_provision_that_fails_after_the_create_names_the_pod_it_made(inv, runpod) -> None:
    """Any failure after the create (here an API whose pod answers turn unreadable while
    --wait waits; a template without a name was a KeyError traceback) ends with the pod
    that bills named, and how to stop it: its id was shown nowhere."""
    runpod.fault(method="GET", path="/v2/pods/.*", status=200, text='["not a pod"]')
    try:
        failed = inv("pod.provision", "--name", "failed-after-create", "--wait",
                     "--env", "START_INFERENCE_API=0")
    finally:
        runpod.clear_faults()
    [made] = [p for p in runpod.client().list_pods() if p.name == "failed-after-create"]
    try:
        assert failed.returncode != 0 and "Traceback" not in failed.stderr
        assert (f"pod {made.id} (failed-after-create) was created and bills: inv pod.stop "
                f"{made.id} stops it") in failed.stderr, failed.stderr
    finally:
        runpod.client().delete_pod(made.id)
