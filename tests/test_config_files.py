"""Invoke's own config files (invoke.yaml, ~/.invoke.yaml, -f FILE): a broken one is a line
naming the file and the place, never a traceback, and never the text of a settings section."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke.config import AmbiguousMergeError, merge_dicts
from invoke.vendor import yaml

from podcycle.config_files import candidates, describe, first_clash
from tasks import DEFAULTS
from tests.conftest import run_inv

SECRET = "rpa_SECRETMARKER_IN_USER_INVOKE_YAML_51c2"


def raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_a_section_given_as_a_value_names_the_file_and_key_not_the_values(tmp_path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text(f"podcycle:\n  api_key: {SECRET}\n")
    project = tmp_path / "invoke.yaml"
    project.write_text("podcycle: 5\n")
    # The error Invoke itself raises on these two files: its text holds the whole section.
    exc = raised(lambda: merge_dicts(yaml.safe_load(user.read_text()),
                                     yaml.safe_load(project.read_text())))
    assert isinstance(exc, AmbiguousMergeError) and SECRET in str(exc)

    message = describe(exc, [tmp_path / "absent.yaml", user, project], DEFAULTS)
    assert message == (f"{project}: `podcycle` must be a section (indented `name: value` "
                       "lines), not a single value")
    assert SECRET not in message


def test_the_clash_is_found_at_any_depth_and_either_way_round(tmp_path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("run:\n  echo: true\npodcycle:\n  backend: local\n")
    second = tmp_path / "b.json"
    second.write_text('{"podcycle": {"backend": {"name": "local"}}}')
    assert first_clash([first, second], DEFAULTS) == (
        second, "podcycle.backend", "a single value, not a section")
    third = tmp_path / "c.yaml"
    third.write_text("run: 3\n")  # Invoke's own section
    assert first_clash([first, third], DEFAULTS)[:2] == (third, "run")
    assert first_clash([first], DEFAULTS) is None


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path) -> None:
    path = tmp_path / "invoke.yaml"
    path.write_text("podcycle:\n  backend: [local\n")
    exc = raised(lambda: yaml.safe_load(path.open()))
    assert describe(exc, [path], DEFAULTS) == (
        f"{path} is not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(line 3, column 1)")


def test_a_file_that_is_not_utf8_is_named(tmp_path) -> None:
    path = tmp_path / "invoke.yaml"
    path.write_bytes(b"podcycle:\n  backend: \xff\n")
    exc = raised(lambda: path.read_text(encoding="utf-8"))
    assert describe(exc, [tmp_path / "absent.yaml", path], DEFAULTS) == (
        f"{path} is not UTF-8 text (a byte at offset 21 cannot be read)")
    assert describe(exc, [tmp_path / "absent.yaml"], DEFAULTS) is None  # not ours to explain


def test_other_errors_are_not_config_file_errors(tmp_path) -> None:
    assert describe(ValueError("x"), [], DEFAULTS) is None
    assert describe(KeyError("podcycle"), [], DEFAULTS) is None


def test_the_files_are_invokes_in_its_merge_order(tmp_path) -> None:
    files = candidates(tmp_path, ["-f", "/x/run.yaml", "runs.list"], {})
    assert files[:3] == [Path("/etc/invoke.yaml"), Path("/etc/invoke.yml"),
                         Path("/etc/invoke.json")]
    assert files[-4:] == [tmp_path / "invoke.yaml", tmp_path / "invoke.yml",
                          tmp_path / "invoke.json", Path("/x/run.yaml")]
    assert candidates(tmp_path, ["--config=/y.json"], {})[-1] == Path("/y.json")
    assert candidates(tmp_path, [], {"INVOKE_RUNTIME_CONFIG": "/z.yaml"})[-1] == Path("/z.yaml")
    assert candidates(tmp_path, [], {})[-1] == tmp_path / "invoke.json"
    # A task's own --config (sweep.run's) is not Invoke's runtime file.
    assert candidates(tmp_path, ["sweep.run", "--config", "s.toml"], {})[-1] == \
        tmp_path / "invoke.json"


def test_a_file_that_is_one_value_is_named(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("hello\n")
    assert describe(AttributeError("'str' object has no attribute 'items'"), [path],
                    DEFAULTS) == (f"{path} must hold sections (`podcycle:` and its indented "
                                  "settings), not a single value")


def test_only_errors_from_invokes_config_loader_are_taken(monkeypatch, tmp_path) -> None:
    """A JSON or YAML error raised anywhere else (a task's own bug) keeps its traceback: the
    hook hands it to the hook that was there before, untouched."""
    import json
    import sys

    from podcycle import config_files

    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, exc, tb: seen.append(exc))
    config_files.install(tmp_path, DEFAULTS)
    try:
        json.loads("x}")
    except json.JSONDecodeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert len(seen) == 1 and isinstance(seen[0], json.JSONDecodeError)
    try:
        merge_dicts({"podcycle": {}}, {"podcycle": 5})
    except AmbiguousMergeError as exc:
        assert config_files.from_invoke_config(exc.__traceback__)


@pytest.mark.slow
def test_inv_with_a_broken_config_file_prints_one_line_and_no_key(tmp_path) -> None:
    """The case that printed a key: a `podcycle:` section in ~/.invoke.yaml (holding a key,
    which pod-cycle never reads from there) and `podcycle: 5` in a later file."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".invoke.yaml").write_text(f"podcycle:\n  api_key: {SECRET}\n")
    runtime = tmp_path / "run.yaml"
    runtime.write_text("podcycle: 5\n")
    result = run_inv("runs.list", env={"HOME": str(home), "INVOKE_RUNTIME_CONFIG": str(runtime)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"error: {runtime}: `podcycle` must be a section (indented `name: value` lines), "
        "not a single value",
        "  → fix that file, or move it away to use the defaults (README: Settings)"]
    assert SECRET not in result.stdout + result.stderr

    runtime.write_text("podcycle:\n  backend: [local\n")
    result = run_inv("runs.list", env={"HOME": str(home), "INVOKE_RUNTIME_CONFIG": str(runtime)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {runtime} is not valid YAML: ")


@pytest.mark.slow
@pytest.mark.parametrize(("text", "said"), [
    # Invoke's env crawl of the files: a TypeError ("expected str instance, int found") and a
    # RecursionError, each a traceback of dozens of lines.
    ("podcycle:\n  1: 2\n", "`podcycle.1` is not a setting's name"),
    ("podcycle: &a\n  x: *a\n", "`podcycle.x` refers to a section it lies in"),
])
def test_a_config_file_invoke_cannot_walk_is_one_line(tmp_path, text, said) -> None:
    runtime = tmp_path / "run.yaml"
    runtime.write_text(text)
    result = run_inv("runs.list", env={"INVOKE_RUNTIME_CONFIG": str(runtime)})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {runtime}: {said}"), lines


@pytest.mark.slow
def test_a_runtime_config_that_is_missing_a_folder_or_no_config_is_one_line(tmp_path) -> None:
    """`inv -f typo.yaml` ran without it, silently; a folder or a `.conf` was a traceback."""
    folder = tmp_path / "adir"
    folder.mkdir()
    conf = tmp_path / "x.conf"
    conf.write_text("podcycle: {}\n")
    for given, said in ((tmp_path / "typo.yaml", "no such config file"),
                        (folder, "is a folder, not a config file"),
                        (conf, "Invoke reads config files ending in .yaml")):
        # Invoke takes its -f after a task's name too: a .toml there was its traceback, a
        # typo ran without the file.
        for argv in (["-f", str(given), "runs.list"], ["runs.list", "-f", str(given)]):
            result = run_inv(*argv)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr.startswith(f"error: {given}") and said in result.stderr


@pytest.mark.slow
def test_inv_s_f_after_a_task_is_checked_as_invoke_parses_it(tmp_path) -> None:
    """Checked where Invoke loads it (Program.update_config), so as Invoke parsed the line:
    the last -f wins, nothing after `--` is a flag, completion is left alone."""
    good = tmp_path / "good.yaml"
    good.write_text("podcycle: {}\n")
    typo = tmp_path / "typo.yaml"
    result = run_inv("-f", str(good), "runs.list", "-f", str(typo))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {typo}: no such "
                                                               "config file"), result.stderr
    empty = run_inv("-f=", "runs.list")
    assert empty.returncode == 2 and empty.stderr.startswith(
        "error: -f/--config was given an empty path"), empty.stderr
    rest = run_inv("runs.list", "--", "-f", str(typo),
                   env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")})
    assert rest.returncode == 0, rest.stderr
    completed = run_inv("--complete", "--", "inv", "runs.list", "-f", "ty")
    assert completed.returncode == 0 and "error" not in completed.stderr, completed.stderr
    # `inv sweep.run -f sweep.toml`: the sweep's file is its --config; -f is inv's own.
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("[sweep]\n")
    result = run_inv("sweep.run", "-f", str(sweep))
    assert result.stderr.splitlines() == [
        f"error: {sweep}: Invoke reads config files ending in .yaml, .yml, .json or .py",
        "  → -f is inv's own settings file; sweep.run takes its file as --config FILE"]
    assert result.returncode == 2


def test_the_runtime_config_is_found_past_inv_s_own_flags_with_values(tmp_path) -> None:
    """`inv -r tasks -f typo.yaml`: the -r's value was taken for the task's name, the -f
    after it went unseen, and Invoke ended in a traceback on the file."""
    from podcycle.config_files import runtime_problem

    typo = str(tmp_path / "typo.yaml")
    for argv in (["-r", "tasks", "-f", typo, "runs.list"],
                 ["--search-root", "tasks", "-D", "2", "--config", typo],
                 ["--list", "pod", "-f", typo], ["-e", "-c", "tasks", f"--config={typo}"]):
        assert runtime_problem(argv, {}) == (f"{typo}: no such config file (given with "
                                             "-f/--config or INVOKE_RUNTIME_CONFIG)"), argv
    # A task's own --config (sweep.run's) is the task's, not inv's.
    assert runtime_problem(["-r", "tasks", "sweep.run", "--config", typo], {}) is None
    # Second read: INVOKE_RUNTIME_CONFIG= (empty, to "unset" it) was called an empty -f;
    # an escape in the name reached the terminal raw.
    assert runtime_problem(["runs.list"], {"INVOKE_RUNTIME_CONFIG": ""}) == \
        "INVOKE_RUNTIME_CONFIG is set, and empty"
    assert runtime_problem(["-f", "a\x1b[31mred.yaml"], {}).startswith("a\\x1b[31mred.yaml: ")
    # Checked for inv's command line alone: pytest's own -f (--looponfail), with the tasks
    # imported by a test, made the test process exit 2.
    from podcycle.config_files import _run_by_invoke

    assert _run_by_invoke("/p/.venv/bin/inv") and _run_by_invoke("/p/invoke/__main__.py")
    assert not _run_by_invoke("/p/.venv/bin/pytest")
    assert not _run_by_invoke("/p/pytest/__main__.py")


def test_a_project_config_that_is_a_folder_is_named(tmp_path) -> None:
    folder = tmp_path / "invoke.yaml"
    folder.mkdir()
    assert describe(raised(lambda: folder.read_text()), [folder], DEFAULTS) == \
        f"{folder} is a folder, not a config file"


def test_a_refused_value_from_the_f_file_names_that_file(tmp_path) -> None:
    """`inv -f t1.yaml pod.list`, with `min_cuda_version: 12.10` unquoted in t1.yaml: the
    refusal named "podcycle.min_cuda_version in invoke.yaml", a file the user never gave.
    (Invoke's own Config, loaded as `inv -f` loads it.)"""
    from invoke import Config, Context

    from podcycle.cli import settings
    from podcycle.errors import ConfigError

    given = tmp_path / "t1.yaml"
    given.write_text("podcycle:\n  min_cuda_version: 12.10\n  cloud: community\n")
    config = Config(runtime_path=str(given))
    config.load_runtime()
    with pytest.raises(ConfigError) as refused:
        settings(Context(config=config))
    assert f"podcycle.min_cuda_version in {given} (-f)" in refused.value.message
    assert f"in {given} (-f)" in refused.value.remedy
    given.write_text("podcycle:\n  cloud: community\n")
    config = Config(runtime_path=str(given))
    config.load_runtime()
    assert settings(Context(config=config)).source("cloud") == \
        f"podcycle.cloud in {given} (-f)"
    assert settings(Context(config=Config())).source("cloud") == "default"


def test_local_status_of_a_folder_given_names_it_in_its_remedy(tmp_path: Path) -> None:
    """Hunt: `inv local.status --local-dir X` of a server not running said "start it with inv
    local.up", which starts one in another folder (the default). The folder is given on."""
    import invoke

    import tasks.local

    folder = tmp_path / "my local"
    with pytest.raises(invoke.exceptions.Exit) as down:
        tasks.local.status(invoke.Context(), local_dir=str(folder))
    assert down.value.code == 1
    assert str(down.value.message) == ("the local RunPod is not running (start it with inv "
                                       f"local.up --local-dir '{folder}')")
