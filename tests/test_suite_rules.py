"""The suite's own rules, checked on its source so a new test cannot quietly break them:
every test that starts `inv` or a local pod is marked slow (`make test-fast` skips them), and
no test sleeps for a fixed time (they wait on an event through `conftest.eventually`)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Calls that start an `inv` process or a local pod (directly or through a test's helper);
# a subprocess call counts when it names the INV executable.
STARTERS = {"run_inv", "inv", "spawn", "running_pod", "create_pod"}
SUBPROCESS = {"Popen", "run", "call", "check_output"}
# Tests that call a starter without starting anything: a create sent to a closed port; a
# boot that fails on its first save, before any of the pod's processes start.
STARTS_NOTHING = {"test_create_on_a_dead_port_is_unreachable_fast",
                  "test_a_local_pod_whose_boot_fails_unexpectedly_turns_error_not_provisioning"}


def _called(node: ast.AST) -> set[str]:
    names = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Call):
            func = item.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in SUBPROCESS and "INV" in ast.unparse(item):
                names.add("run_inv")
            elif name:
                names.add(name)
    return names


def _is_slow_mark(node: ast.AST) -> bool:
    return "mark.slow" in ast.unparse(node)


def unmarked_starters(source: str) -> list[str]:
    """The tests in `source` that start `inv` or a pod and are not marked slow."""
    tree = ast.parse(source)
    module_slow = any(
        isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark"
                                             for t in node.targets)
        and "slow" in ast.unparse(node.value) for node in tree.body)
    if module_slow:
        return []
    helpers = {node.name: node for node in tree.body
               if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_")}
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        arguments = {a.arg for a in node.args.args}
        calls = _called(node)
        for name in (calls | arguments) & set(helpers):  # one level of local helpers/fixtures
            calls |= _called(helpers[name])
        starts = bool(calls & STARTERS) or "inv" in arguments
        if (starts and node.name not in STARTS_NOTHING
                and not any(_is_slow_mark(d) for d in node.decorator_list)):
            found.append(f"{node.name} (line {node.lineno})")
    return found


def test_every_test_that_starts_inv_or_a_pod_is_marked_slow() -> None:
    offenders = {path.name: names for path in sorted(TESTS.glob("test_*.py"))
                 if (names := unmarked_starters(path.read_text()))}
    assert not offenders, f"mark these @pytest.mark.slow: {offenders}"


def test_the_checker_sees_an_unmarked_starter() -> None:
    source = ("import pytest\n"
              "def helper(x):\n    return run_inv('pod.list')\n"
              "def test_a(inv):\n    inv('gpu.search')\n"
              "def test_b():\n    helper(1)\n"
              "@pytest.mark.slow\ndef test_c(inv):\n    inv('x')\n"
              "def test_d():\n    assert 1 + 1 == 2\n"
              "def test_e():\n    subprocess.Popen([INV, 'pod.logs'])\n"
              "def test_f():\n    subprocess.run(['bash', 'x.sh'])\n")
    assert unmarked_starters(source) == ["test_a (line 4)", "test_b (line 6)",
                                         "test_e (line 13)"]


def test_no_test_sleeps_for_a_fixed_time() -> None:
    sleeps = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "sleep"):
                sleeps.append(f"{path.name}:{node.lineno}")
    # The one pause: conftest.eventually's poll interval, inside a bounded wait for an event.
    assert sleeps == [f"conftest.py:{_eventually_sleep_line()}"], sleeps


def _eventually_sleep_line() -> int:
    tree = ast.parse((TESTS / "conftest.py").read_text())
    function = next(n for n in tree.body
                    if isinstance(n, ast.FunctionDef) and n.name == "eventually")
    return next(n.lineno for n in ast.walk(function)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "sleep")


def test_no_test_script_waits_for_a_signal_with_signal_pause() -> None:
    """A signal that lands just before pause() starts is handled only once pause() returns,
    which nothing makes it do: the scripts wait with signal_wait.until_a_signal."""
    pauses = [f"{path.name}:{number}" for path in sorted(TESTS.glob("*.py"))
              if path.name not in ("signal_wait.py", "test_suite_rules.py")
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if "signal.pause(" in line]
    assert not pauses, pauses


PAUSED = """
import signal, threading
from tests.signal_wait import until_a_signal

started = threading.Event()

def signal_from_a_thread():
    started.wait()
    # On this thread: its C handler only marks the signal, for the main thread to handle at
    # its next check, and that thread runs Python only once its wait lets go of the GIL.
    signal.raise_signal(signal.SIGINT)

threading.Thread(target=signal_from_a_thread, daemon=True).start()
try:
    started.set()
    until_a_signal()  # signal.pause() here waits for ever
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_signal_handled_outside_the_wait_still_ends_it() -> None:
    """The race of signal.pause() made reproducible: the signal is taken where the waiting
    thread cannot see it (as one that lands just before the wait starts). pause() waits for
    ever there; until_a_signal reads the mark and ends."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-c", PAUSED], cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "interrupted\n"), done.stderr


def test_the_module_order_names_modules_that_exist() -> None:
    """conftest.LONGEST_FIRST orders the workers' modules by name: a name renamed or misspelt
    there would silently send its module to the back of the queue."""
    from tests.conftest import LONGEST_FIRST

    missing = [name for name in LONGEST_FIRST if not (Path(__file__).parent / name).is_file()]
    assert not missing and len(set(LONGEST_FIRST)) == len(LONGEST_FIRST), missing
