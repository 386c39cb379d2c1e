"""Numbers and times from the user (flags, environment, .env, invoke.yaml): one checked path
that refuses nan, inf, negative and absurd values with the flag or variable named and a remedy
it accepts itself; a spend guard that cannot be kept is refused before a pod exists, and one
that reaches a pod anyway stops the pod instead of crash-looping; --since is an age or a time,
validated, sent as RFC 3339 and compared by the server as a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invoke import Config, Context
from invoke.exceptions import Exit

from podcycle.config import SPECS, resolve
from podcycle.errors import ConfigError, PodCycleError

NUMERIC = {name: spec for name, spec in SPECS.items() if spec.kind in (int, float)}


def suggestion(remedy: str) -> str:
    found = re.search(r"e\.g\. (?:--[\w-]+ )?(\S+)", remedy)
    assert found, f"the remedy suggests no value: {remedy!r}"
    return found.group(1)


# -- settings: environment, .env, invoke.yaml, flags ---------------------------------------

@pytest.mark.parametrize("variable, value", [
    ("RUNPOD_MAX_MINUTES", "nan"), ("RUNPOD_MAX_MINUTES", "inf"),
    ("RUNPOD_MAX_MINUTES", "1e-9"), ("RUNPOD_MAX_MINUTES", "1e9"),
    ("RUNPOD_MAX_COST", "nan"), ("RUNPOD_MAX_COST", "-inf"), ("RUNPOD_MAX_COST", "-5"),
    ("RUNPOD_MAX_PRICE", "inf"), ("RUNPOD_SSH_PORT", "99999"), ("RUNPOD_SSH_PORT", "0"),
    ("RUNPOD_READY_TIMEOUT", "0"), ("RUNPOD_READY_TIMEOUT", "-5"),
    ("RUNPOD_READY_TIMEOUT", "nan"), ("TRAIN_EPOCHS", "-1"), ("TRAIN_BATCH_SIZE", "0"),
    ("RUNPOD_GPU_COUNT", "1000"),
    # Python reads these as 3, 10 and 2.5: a number is written with the digits 0-9.
    ("RUNPOD_GPU_COUNT", "\u0663"), ("TRAIN_EPOCHS", "1_0"), ("RUNPOD_MAX_COST", "\uff12.5"),
])
def test_numeric_settings_from_the_environment_are_checked_like_flags(
        variable: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        resolve({}, {}, environ={variable: value}, dotenv_path=tmp_path / "none",
                 use_keyring=False)
    assert refused.value.message.startswith(f"{variable} must be "), refused.value.message
    assert len(refused.value.render().splitlines()) <= 2
    if variable == "RUNPOD_SSH_PORT":  # "e.g. 1" was never a right SSH port
        assert "e.g. 22 " in refused.value.remedy, refused.value.remedy


def test_dotenv_and_invoke_yaml_numbers_are_checked_and_named(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("RUNPOD_MAX_MINUTES=nan\n")
    with pytest.raises(ConfigError, match=r"RUNPOD_MAX_MINUTES in \.env must be a finite"):
        resolve({}, {}, environ={}, dotenv_path=dotenv, use_keyring=False)
    with pytest.raises(ConfigError, match=r"podcycle\.ssh_port in invoke\.yaml must be at "
                                          r"most 65535"):
        resolve({}, {"ssh_port": 70000}, environ={}, dotenv_path=tmp_path / "none",
                use_keyring=False)


@pytest.mark.parametrize("name", sorted(NUMERIC))
@pytest.mark.parametrize("bad", ["nan", "-inf", "-1", "1e12", "abc"])
def test_every_remedy_suggests_a_value_that_is_then_accepted(name: str, bad: str,
                                                             tmp_path: Path) -> None:
    spec = NUMERIC[name]
    if spec.kind is int and bad == "1e12":
        bad = "1000000000000"
    for flags, environ in (({name: bad}, {}), ({}, {spec.env: bad})):
        with pytest.raises(ConfigError) as refused:
            resolve(flags, {}, environ=environ, dotenv_path=tmp_path / "none",
                    use_keyring=False)
        value = suggestion(refused.value.remedy)
        accepted = resolve({name: value} if flags else {}, {},
                           environ={spec.env: value} if environ else {},
                           dotenv_path=tmp_path / "none", use_keyring=False)
        assert getattr(accepted, name) == spec.kind(value)


# -- the spend guard, host side -------------------------------------------------------------

@pytest.mark.parametrize("minutes, cost, price, flag", [
    (1e-9, None, 3.0, "--max-minutes"),          # would round to 0: stops at boot
    (float("nan"), None, 3.0, "--max-minutes"),
    (float("inf"), None, 3.0, "--max-minutes"),
    (1e9, None, 3.0, "--max-minutes"),
    (None, float("nan"), 3.0, "--max-cost"),
    (None, float("inf"), 3.0, "--max-cost"),
    (None, 0.01, 3.59, "--max-cost"),            # buys 10 seconds at the H200's price
])
def test_a_spend_guard_the_pod_cannot_keep_is_refused(minutes, cost, price, flag) -> None:
    from podcycle.provision import spend_guard

    with pytest.raises(ConfigError) as refused:
        spend_guard(minutes, cost, price)
    assert refused.value.message.startswith(flag), refused.value.message
    remedy = refused.value.remedy
    value = float(re.search(rf"{flag} (\S+)", remedy).group(1))
    guard = spend_guard(value if flag == "--max-minutes" else None,
                        value if flag == "--max-cost" else None, price)
    assert guard.minutes >= 0.5


def test_a_long_budget_is_capped_not_refused() -> None:
    from podcycle.provision import spend_guard

    guard = spend_guard(None, 10_000, 0.2)  # $10,000 at $0.20/h: 5.7 years
    assert guard.minutes == 30 * 24 * 60 and "capped at 30 days" in guard.reason


# -- task flags, in process (refused before any backend is reached) ------------------------

@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    """A context whose backend is RunPod without a key: a flag that passes its check ends in
    'no RunPod API key', so nothing is ever started or created."""
    return Context(Config(overrides={"podcycle": {
        "backend": "runpod", "artifacts_dir": str(tmp_path / "runs"),
        "local_dir": str(tmp_path / "local")}}))


def run_task(ctx: Context, dotted: str, *args: Any, **kwargs: Any) -> Exit:
    import importlib

    module, name = dotted.split(".")
    task = getattr(importlib.import_module(f"tasks.{module}"), name)
    with pytest.raises(Exit) as failed:
        task(ctx, *args, **kwargs)
    return failed.value


FLAG_CASES = [
    ("gpu.search", (), "gpu_count", "1000", "--gpu-count must be at most 16"),
    ("gpu.search", (), "max_price", "nan", "--max-price must be a finite number"),
    ("gpu.search", (), "min_memory", "99999999", "--min-memory must be at most 4096"),
    ("gpu.search", (), "limit", "99999999", "--limit must be at most 10000"),
    ("pod.move", ("abc123",), "top_k", "100000", "--top-k must be at most 218"),
    ("pod.provision", (), "max_minutes", "nan", "--max-minutes must be a finite number"),
    ("pod.provision", (), "max_minutes", "inf", "--max-minutes must be a finite number"),
    ("pod.provision", (), "max_minutes", "1e-9", "--max-minutes must be at least 0.5"),
    ("pod.provision", (), "max_cost", "nan", "--max-cost must be a finite number"),
    ("pod.provision", (), "gpu_count", "64", "--gpu-count must be at most 16"),
    ("cycle.start", (), "max_minutes", "inf", "--max-minutes must be a finite number"),
    ("cycle.full_smoke", (), "max_minutes", "1e-9", "--max-minutes must be at least 0.5"),
    ("cycle.full_smoke", (), "epochs", "-3", "--epochs must be at least 1"),
    ("data.import_pgn", ("missing.pgn",), "workers", "100000",
     "--workers must be at most 1024"),
    ("volume.create", ("vol",), "size", "abc", "--size must be an integer"),
    ("data.import_pgn", ("{pgn}",), "val_fraction", "abc", "--val-fraction must be a number"),
]


@pytest.mark.parametrize("task, args, flag, bad, message", FLAG_CASES)
def test_numeric_flags_are_refused_by_name_with_a_remedy_that_works(
        ctx, tmp_path, task, args, flag, bad, message) -> None:
    extra = {}
    if task.startswith("data."):
        pgn = tmp_path / "games.pgn"
        pgn.write_text("".join(f'[Event "g"]\n\n1. {white} {black} *\n\n'
                               for white in ("e4", "d4", "c4", "Nf3", "g3", "b3", "f4", "Nc3",
                                             "e3", "d3")
                               for black in ("e5", "d5", "c5", "Nf6", "g6", "e6")))
        args = tuple(arg.format(pgn=pgn) for arg in args)
        extra = {"out": str(tmp_path / "out"), "overwrite": True}
    refused = run_task(ctx, task, *args, **{flag: bad}, **extra)
    assert refused.code == 2 and message in str(refused.message), refused.message
    assert "Traceback" not in str(refused.message)
    assert len(str(refused.message).splitlines()) <= 2
    dashed = "--" + flag.replace("_", "-")
    if task.startswith("cycle."):
        return  # a cycle that passes its checks would go on to provision
    try:
        retried = run_task(ctx, task, *args, **{flag: suggestion(str(refused.message))},
                           **extra)
    except pytest.fail.Exception:
        return  # the task ran to the end with the suggested value
    assert dashed not in str(retried.message).splitlines()[0], retried.message


@pytest.mark.parametrize("since, message", [
    ("2999-01-01", "is in the future"),
    ("0001-01-01", "is more than 366 days ago"),
    ("99999999999d", "reaches back more than 366 days"),
    ("9" * 400 + "d", "reaches back more than 366 days"),
])
def test_pod_cost_since_is_bounded(ctx, since, message) -> None:
    refused = run_task(ctx, "pod.cost", since=since)
    assert refused.code == 2 and message in str(refused.message), refused.message
    assert "--since" in str(refused.message) and "Traceback" not in str(refused.message)
    shown = re.search(r"a time such as (\S+) or", str(refused.message)).group(1)
    retried = run_task(ctx, "pod.cost", since=shown)
    assert "--since" not in str(retried.message), retried.message


@pytest.mark.parametrize("since", ["garbage", "2999-01-01T00:00:00Z", "99999999999d"])
def test_pod_logs_since_is_validated_before_any_request(ctx, since) -> None:
    refused = run_task(ctx, "pod.logs", "abc123", since=since)
    assert refused.code == 2 and "--since" in str(refused.message), refused.message


def test_since_ages_and_times_become_rfc3339_utc() -> None:
    from podcycle.pods import parse_since, rfc3339

    now = 1_796_000_000.0  # 2026-11-29T...Z
    assert rfc3339(parse_since("90m", now=now)) == rfc3339(now - 5400)
    assert parse_since("2026-11-29T10:00:00+01:00", now=now) == \
        parse_since("2026-11-29T09:00:00Z", now=now)
    assert rfc3339(parse_since("2026-11-29", now=now)) == "2026-11-29T00:00:00Z"
    with pytest.raises(PodCycleError, match="in the future"):
        parse_since(rfc3339(now + 3600), now=now)


# -- end to end: the local RunPod ------------------------------------------------------------

def posts_to_pods(runpod, before: int) -> list[dict[str, Any]]:
    return [r for r in runpod.requests()[before:]
            if r.get("method") == "POST" and r.get("path") == "/v2/pods"]


@pytest.mark.slow
@pytest.mark.parametrize("args, env, named", [
    (["pod.provision", "--max-minutes", "nan"], {}, "--max-minutes"),
    (["pod.provision", "--max-cost", "inf"], {}, "--max-cost"),
    (["pod.provision", "--gpu-type-id", "NVIDIA H200", "--max-cost", "0.01"], {},
     "--max-cost"),
    (["cycle.start", "--max-minutes", "1e-9"], {}, "--max-minutes"),
    (["cycle.full-smoke", "--max-minutes", "inf"], {}, "--max-minutes"),
    (["cycle.start"], {"RUNPOD_MAX_MINUTES": "nan"}, "RUNPOD_MAX_MINUTES"),
])
def test_no_pod_is_created_for_a_guard_it_could_not_keep(inv, runpod, tmp_path, args, env,
                                                         named) -> None:
    before = len(runpod.requests())
    result = inv(*args, env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path), **env})
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "nan minute" not in result.stderr
    assert posts_to_pods(runpod, before) == []


@pytest.fixture(scope="module")
def log_pod(local_runpod) -> Iterator[Any]:
    with local_runpod.running_pod("since-target", {"START_INFERENCE_API": "0",
                                                   "START_JUPYTER": "0"}) as pod:
        yield pod


@pytest.mark.slow
def test_the_server_compares_since_as_a_time(runpod, log_pod) -> None:
    from datetime import datetime, timedelta

    from podcycle.pods import read_logs

    client = runpod.client()
    history = list(read_logs(client, log_pod.id, tail=5000))
    assert history
    first = datetime.fromisoformat(history[0].ts.replace("Z", "+00:00"))
    # The same moment written with another offset: as text it sorts after every line.
    as_cet = (first + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+01:00")
    shown = _until_quiet(client, log_pod.id, as_cet)
    assert [e.id for e in shown][:len(history)] == [e.id for e in history]
    with pytest.raises(PodCycleError, match="not an RFC 3339 time"):
        _until_quiet(client, log_pod.id, "90m")


@pytest.mark.slow
def test_a_resumed_stream_keeps_a_line_written_later_in_the_same_second(runpod, log_pod
                                                                         ) -> None:
    """A reconnect resumes each source after its own last line: a container line written
    after the last system line the reader had, in the same second, is still sent (ordered by
    time and source, it sorts before that system line)."""
    import time

    from podcycle.local import logs

    client = runpod.client()
    pod_dir = Path(next(p["dir"] for p in runpod.pods() if p["id"] == log_pod.id))
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    logs.system_event(pod_dir, ts, "resume-test system line")
    had = _until_quiet(client, log_pod.id, tail=5000)
    last = next(e for e in had if e.line == "resume-test system line")
    with open(pod_dir / "pod.log", "a") as log:  # the container's output, same second
        log.write(f"{ts} [test] resume-test container line\n")
    resumed = _until_quiet(client, log_pod.id, last_event_id=last.id)
    lines = [e.line for e in resumed]
    assert f"{ts} [test] resume-test container line" in lines, lines
    assert "resume-test system line" not in lines and not set(lines) & {e.line for e in had}


@pytest.mark.slow
def test_a_history_read_waits_for_a_slow_apis_answer_then_ends_when_quiet(runpod, log_pod
                                                                          ) -> None:
    """The read timeout that ends a history (quiet for `quiet_end` seconds) applies between
    lines, not to the answer's head: an API 2 s slower than that to answer showed no line,
    and a spend guard that had fired went unseen in the pod's log."""
    from podcycle.pods import read_logs

    client = runpod.client()
    runpod.fault(method="GET", path=f"/v2/pods/{log_pod.id}/logs", delay=2.0, times=1)
    lines = [e.line for e in read_logs(client, log_pod.id, tail=5000, quiet_end=0.5)]
    assert any("entrypoint" in line for line in lines), lines


def _until_quiet(client, pod_id: str, since: str | None = None, **query: Any) -> list[Any]:
    """The backfill the server sends for `since` (the stream stays open while the pod runs:
    read until it is quiet, as read_logs does)."""
    import requests

    events = []
    try:
        for event in client.pod_logs(pod_id, since=since, idle_timeout=2.0, **query):
            events.append(event)
    except requests.exceptions.RequestException:
        pass  # quiet: the backfill is out
    return events


@pytest.mark.slow
def test_pod_logs_since_takes_an_age_and_refuses_garbage(inv, runpod, log_pod) -> None:
    before = len(runpod.requests())
    garbage = inv("pod.logs", log_pod.id, "--since", "garbage")
    assert garbage.returncode == 2 and "--since 'garbage' is neither" in garbage.stderr
    assert not [r for r in runpod.requests()[before:] if r.get("path", "").endswith("/logs")]
    recent = inv("pod.logs", log_pod.id, "--since", "90m")
    assert recent.returncode == 0, recent.stderr
    assert "[entrypoint]" in recent.stdout
    # The spec: `tail` is ignored when `since` is given (10 lines came for --tail 2).
    both = inv("pod.logs", log_pod.id, "--since", "90m", "--tail", "2")
    assert both.returncode == 2 and "--tail and --since cannot be combined" in both.stderr


# -- the spend guard, pod side ---------------------------------------------------------------

def _new_pod(client, name: str, env: dict[str, str]) -> Any:
    return client.create_pod({"name": name, "templateId": "tpl-local-chessbot",
                              "gpu": {"id": "NVIDIA RTX A5000", "count": 1},
                              "env": {"START_INFERENCE_API": "0", "START_JUPYTER": "0",
                                      **env}})


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("minutes", ["nan", "inf", "-1", "ten"])
def test_a_guard_it_cannot_keep_stops_the_pod_instead_of_crash_looping(runpod,
                                                                       minutes) -> None:
    from podcycle.pods import read_logs

    client = runpod.client()
    pod = _new_pod(client, f"guard-{minutes}", {"SPEND_GUARD_MINUTES": minutes})
    try:
        lines = []
        # The pod's whole log from its first line: the guard gives up at boot, which on a busy
        # machine can come before this stream connects (tail=0 missed the line once).
        for event in read_logs(client, pod.id, follow=True, tail=5000):  # ends when it stops
            lines.append(event.line)
            assert "service spend_guard: exited" not in event.line, lines
        assert any("cannot enforce the spend guard" in line and "stopping pod" in line
                   for line in lines), "\n".join(
            [*lines[-30:], f"(pod {pod.id} now {client.get_pod(pod.id).status.value})"])
        assert client.get_pod(pod.id).status.value == "EXITED"
    finally:
        client.delete_pod(pod.id)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_pod_its_guard_stopped_at_boot_is_not_blamed_on_the_template(runpod) -> None:
    from podcycle.provision import wait_for_ssh

    client = runpod.client()
    # No sshd: the pod cannot answer SSH before its (tiny) guard stops it.
    pod = _new_pod(client, "guard-at-boot", {"SPEND_GUARD_MINUTES": "0.0001",
                                             "SPEND_GUARD_REASON": "--max-minutes 0.0001",
                                             "START_SSHD": "0"})
    try:
        with pytest.raises(PodCycleError) as stopped:
            wait_for_ssh(client, pod.id, timeout=120, progress=lambda _: None)
        assert "stopped by its own spend guard" in stopped.value.message
        assert "fix the template" not in stopped.value.render()
        assert "--max-minutes" in stopped.value.remedy
    finally:
        client.delete_pod(pod.id)


def test_minus_zero_is_zero() -> None:
    """`gpu.search --max-price -0` said "at most $-0/h" (hunt, stop 51): -0 is taken as 0."""
    import math

    from podcycle.config import parse_number

    for given in ("-0", "-0.0", -0.0):
        taken = parse_number("--max-price", given, float, minimum=0, maximum=1000)
        assert taken == 0 and math.copysign(1, taken) == 1 and f"{taken:g}" == "0"
