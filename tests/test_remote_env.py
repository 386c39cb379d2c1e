"""The env of a pod-side script survives Fabric's inline `export K=V && command`, which does
not quote (fabric.runners.Remote.start): podcycle.remote.shell_env quotes each value. Checked
through a real bash, with the same prefix Fabric builds."""

import subprocess

import pytest

from podcycle.remote import shell_env

VALUES = [
    "--blocks 1 --channels 8",  # TRAIN_EXTRA_ARGS: several words
    "/data/my dataset/",  # a path with a space
    "it's $HOME; `id` && rm -rf / #",  # shell syntax must stay text
    "",
    "tab\there\nnewline",
]


@pytest.mark.parametrize("value", VALUES)
def test_values_arrive_as_themselves(value: str) -> None:
    env = shell_env({"TRAIN_EXTRA_ARGS": value, "RUN_OUT": "/w/run 1"})
    prefix = " ".join(f"{k}={v}" for k, v in sorted(env.items()))  # Fabric's own format
    out = subprocess.run(["bash", "-c", f'export {prefix} && printf %s "$TRAIN_EXTRA_ARGS"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == value


@pytest.mark.parametrize("name", ["A B", "X=1", "$(id)", "1ABC", ""])
def test_a_name_that_is_not_a_variable_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a shell variable name"):
        shell_env({name: "x"})
