"""Hostile and foreign template files and env (issue 18): every bad input is refused by
templates.load (or, for a pod's own env, by the client) with the file and key named and no
request sent; secrets are masked the same way in text and --json output; the local RunPod
fails a pod it cannot start with the reason in its log instead of leaving it STARTING."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import invoke
import pytest
import requests

from podcycle.errors import ConfigError, PodCycleError
from podcycle.templates import DEFAULT_FILE, find, load
from tests.conftest import ROOT, eventually

SECRET = "hf_Sup3rSecretTokenValue"
WRITES = ("POST", "PATCH", "PUT", "DELETE")


def template_file(tmp_path: Path, name: str, extra_env: str = "", **changes: str) -> Path:
    text = (ROOT / DEFAULT_FILE).read_text().replace('name = "chess-bot-training"',
                                                     f'name = "{name}"')
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text + extra_env)
    return path


def context(runpod) -> invoke.Context:
    """An Invoke context on the test's local RunPod, to call task bodies in-process."""
    from tasks import DEFAULTS

    return invoke.Context(invoke.Config(overrides={"podcycle": {
        **DEFAULTS, "backend": "local", "local_dir": str(runpod.dir)}}))


def call(capsys, task: Any, runpod, *args: Any, **kwargs: Any) -> str:
    """A task's stdout + stderr (the `inv` a user runs, without the subprocess)."""
    capsys.readouterr()
    task(context(runpod), *args, **kwargs)
    out = capsys.readouterr()
    return out.out + out.err


def writes(runpod, prefix: str) -> list[dict]:
    return [r for r in runpod.requests() if r["method"] in WRITES
            and r["path"].startswith(prefix)]


# -- one masking path ----------------------------------------------------------------------

def sync_json(output: str) -> dict[str, Any]:
    return json.loads(output[output.index("{"):output.rindex("}") + 1])


def test_sync_json_changes_mask_secret_env_like_text(runpod, tmp_path, capsys) -> None:
    import tasks.template as t

    path = template_file(tmp_path, "masked-json", f'HF_TOKEN = "{SECRET}"\n')
    dry = call(capsys, t.sync, runpod, file=str(path), dry_run=True, json=True)
    env_change = next(c for c in sync_json(dry)["changes"] if c["field"] == "env")
    assert env_change["after"]["HF_TOKEN"] == "****"
    assert env_change["after"]["START_SSHD"] == "1"  # only secret-looking values are masked
    text = call(capsys, t.sync, runpod, file=str(path), dry_run=True)
    assert "'HF_TOKEN': '****'" in text
    assert SECRET not in dry + text


@pytest.mark.slow
def test_every_command_that_prints_env_masks_it(runpod, tmp_path, capsys) -> None:
    """template.sync (dry and real, text and json), template.show, template.list --json,
    pod.status/list --json and the provision record: one masking path, one result."""
    import tasks.pod as p
    import tasks.template as t
    from podcycle.redact import scrub_pod as scrub

    path = template_file(tmp_path, "masked-secrets",
                         f'HF_TOKEN = "{SECRET}"\nDB_PASSWORD = "{SECRET}-db"\n')
    outputs = [call(capsys, t.sync, runpod, file=str(path), dry_run=True, json=True),
               call(capsys, t.sync, runpod, file=str(path), dry_run=True),
               call(capsys, t.sync, runpod, file=str(path))]  # real create, text
    rotated = template_file(tmp_path, "masked-secrets",
                            f'HF_TOKEN = "{SECRET}-2"\nDB_PASSWORD = "{SECRET}-db"\n')
    update = call(capsys, t.sync, runpod, file=str(rotated), json=True)  # real update, json
    assert sync_json(update)["changes"] == [
        {"field": "env.HF_TOKEN", "before": "****", "after": "****"}]
    outputs += [update, call(capsys, t.show, runpod, "masked-secrets"),
                call(capsys, t.show, runpod, "masked-secrets", json=True),
                call(capsys, t.list_, runpod, json=True)]
    assert "HF_TOKEN = ****" in outputs[-3]
    with runpod.running_pod("masked-pod", {"HF_TOKEN": SECRET,
                                           "START_INFERENCE_API": "0"}) as pod:
        status = call(capsys, p.status, runpod, pod.id, json=True)
        assert '"HF_TOKEN": "****"' in status
        outputs += [status, call(capsys, p.list_, runpod, json=True),
                    json.dumps(scrub({"request": {"env": {"HF_TOKEN": SECRET}},
                                      "pod": runpod.client().get_pod(pod.id).to_json()}))]
    for output in outputs:
        assert SECRET not in output, output


# -- bad files: refused by load, file and key named ---------------------------------------

BIG = "x" * 1_000_000
IMAGE = 'image = "ghcr.io/example/chess-bot-runpod:latest"'


@pytest.mark.parametrize(("extra", "changes", "named"), [
    ('"A=B" = "1"\n', {}, "'A=B'"),
    ('"" = "1"\n', {}, "env name ''"),
    ('"WITH SPACE" = "1"\n', {}, "'WITH SPACE'"),
    ('"1ST" = "1"\n', {}, "'1ST'"),
    ('NUL = "a\\u0000b"\n', {}, "env NUL"),
    (f'HUGE = "{BIG}"\n', {}, "env HUGE is 1000005 bytes"),
    ("".join(f'V{i} = "{"y" * 100_000}"\n' for i in range(6)), {}, "env totals"),
    ("", {'"22/tcp"]': '"22/tcp", "99999/tcp"]'}, "'99999/tcp'"),
    ("", {'"22/tcp"]': '"22/tcp", "22/http"]'}, "port 22 is listed twice"),
    ("", {'category = "NVIDIA"': 'category = "NVIDIA"\nallowedCudaVersions = ["twelve"]'},
     "allowedCudaVersions"),
    ("", {'path = "/workspace"': 'path = "/workspace"\nextra = 1'}, "mounts.persistent"),
    ("", {'name = "hostile"': 'name = "two\\nlines"'}, "name 'two\\nlines' holds a control"),
    ("", {'name = "hostile"': 'name = " padded"'}, "name ' padded' begins or ends with"),
    # Created as it was, then every pod made from it failed its pull (or took a line that
    # reads as a flag), billed meanwhile.
    ("", {IMAGE: 'image = "not an image"'},
     "image 'not an image' is not an image reference"),
    ("", {IMAGE: 'image = "ghcr.io/x/y:1\\n--privileged"'},
     "is not an image reference"),
    ("", {IMAGE: f'image = "ghcr.io/{"a" * 300}"'},
     "over Docker's 255"),
    ("", {"\ndisk = 50\n": "\ndisk = 99999999999999999999\n"},
     "disk must be from 1 to 4096 GB"),
])
def test_load_refuses_env_and_ports_no_pod_could_start_with(tmp_path, extra, changes, named
                                                            ) -> None:
    path = template_file(tmp_path, "hostile", extra, **changes)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = caught.value.render()
    assert str(path) in message and named in message, message
    assert "\n" not in caught.value.message
    assert BIG not in message and "y" * 1000 not in message


def test_a_template_file_nested_past_pythons_stack_is_not_valid_toml(tmp_path) -> None:
    """tomllib raises RecursionError past Python's stack, which nothing caught: template.*
    and the cluster commands ended in a traceback."""
    path = tmp_path / "template.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert refused.value.message == (f"{path}: not valid TOML (nested deeper than Python "
                                     "can read)")


def test_load_refuses_a_network_mount_with_the_run_flag_as_remedy(tmp_path) -> None:
    path = template_file(tmp_path, "netmount", "", **{
        '[mounts.persistent]\nsize = 20\npath = "/workspace"':
        '[[mounts.network]]\nvolumeId = "vol123"\npath = "/runpod-volume"'})
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "[mounts.network]" in caught.value.message and str(path) in caught.value.message
    assert "--network-volume" in caught.value.remedy


def test_a_template_and_a_sweep_file_saved_with_a_bom_are_read(tmp_path) -> None:
    """Windows Notepad's byte-order mark: "not valid TOML (Invalid statement (at line 1,
    column 1))", where .env and invoke.yaml read such a file as it is meant."""
    from podcycle import sweep_config

    template = tmp_path / "bom.toml"
    template.write_bytes(b"\xef\xbb\xbf" + (ROOT / DEFAULT_FILE).read_bytes())
    assert load(template) == load(ROOT / DEFAULT_FILE)
    sweep = tmp_path / "sweep.toml"
    sweep.write_bytes(b"\xef\xbb\xbf" + (ROOT / "config" / "sweep.toml").read_bytes())
    assert sweep_config.load(sweep).params == sweep_config.load(
        ROOT / "config" / "sweep.toml").params


def test_load_refuses_a_file_that_is_not_utf8(tmp_path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes((ROOT / DEFAULT_FILE).read_text().replace(
        "# The pod template", "# Caf\u00e9: the pod template").encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "not UTF-8" in caught.value.message and str(path) in caught.value.message
    assert "UTF-8" in caught.value.remedy


@pytest.mark.slow
def test_sync_of_a_bad_file_sends_nothing_and_exits_2(inv, runpod, tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "x"\nimage = "y"\n# \xff\xfe\n')
    runpod.admin("DELETE", "/_local/requests")
    result = inv("template.sync", "--file", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not UTF-8" in result.stderr and len(result.stderr.strip().splitlines()) <= 3
    assert writes(runpod, "/v2/templates") == []


# -- the twin: a pod's own env (pod.provision --env, the cycle's env) -----------------------

@pytest.mark.slow  # calls create_pod (refused before it is sent: nothing starts)
@pytest.mark.parametrize(("env", "named"), [
    ({"A B": "1"}, "'A B'"), ({"": "1"}, "env name ''"), ({"BIG": BIG}, "env BIG"),
])
def test_client_refuses_a_pod_env_no_pod_could_start_with(runpod, env, named) -> None:
    runpod.admin("DELETE", "/_local/requests")
    with pytest.raises(ConfigError) as caught:
        runpod.client().create_pod({"name": "bad-env", "templateId": "tpl-local-chessbot",
                                    "gpu": {"id": "NVIDIA RTX A5000", "count": 1},
                                    "env": env})
    assert named in caught.value.message and "--env" in caught.value.remedy
    assert writes(runpod, "/v2/pods") == []


def test_client_refuses_a_template_body_with_a_bad_port(runpod) -> None:
    runpod.admin("DELETE", "/_local/requests")
    with pytest.raises(ConfigError):
        runpod.client().create_template({"name": "bad-port", "image": "i",
                                         "ports": ["99999/tcp"]})
    assert writes(runpod, "/v2/templates") == []


# -- the local RunPod fails such a pod and says why -----------------------------------------

def wait_status(client, pod_id: str, wanted: set[str]) -> str:
    return eventually(lambda: (status := client.get_pod(pod_id).status.value) in wanted
                      and status, what=f"pod {pod_id} to reach one of {sorted(wanted)}")


def system_log(runpod, pod_id: str) -> str:
    answer = requests.get(f"{runpod.url}/v2/pods/{pod_id}/logs?source=system",
                          headers={"Authorization": f"Bearer {runpod.key}"}, timeout=30)
    return answer.text


@pytest.mark.slow
@pytest.mark.parametrize(("env", "reason"), [
    ({"A=B": "1"}, "invalid variable name 'A=B'"),
    ({"": "1"}, "invalid variable name ''"),
])
def test_local_runpod_fails_a_pod_it_cannot_start_and_logs_why(runpod, env, reason) -> None:
    # Sent raw, past the client's own check: what another tool could send.
    answer = requests.post(f"{runpod.url}/v2/pods", timeout=30,
                           headers={"Authorization": f"Bearer {runpod.key}"},
                           json={"name": "unstartable", "templateId": "tpl-local-chessbot",
                                 "gpu": {"id": "NVIDIA RTX A5000", "count": 1}, "env": env})
    assert answer.status_code == 201, answer.text
    pod_id = answer.json()["id"]
    client = runpod.client()
    try:
        assert wait_status(client, pod_id, {"ERROR", "RUNNING"}) == "ERROR"
        assert client.get_pod(pod_id).cost_per_hour == 0  # not billing
        assert reason in system_log(runpod, pod_id)
    finally:
        client.delete_pod(pod_id)


# -- template.show with a duplicated name ---------------------------------------------------

class Templates:
    """RunPod's own behaviour the local RunPod does not copy: two templates of one name."""

    def __init__(self, templates: list[dict[str, Any]]) -> None:
        self.templates = templates

    def list_templates(self) -> list[dict[str, Any]]:
        return self.templates


def test_show_refuses_a_duplicated_name_and_lists_the_ids() -> None:
    client = Templates([{"id": "tpl1", "name": "twin"}, {"id": "tpl2", "name": "twin"},
                        {"id": "tpl3", "name": "single"}])
    with pytest.raises(PodCycleError) as caught:
        find(client, "twin")
    assert "tpl1" in caught.value.message and "tpl2" in caught.value.message
    assert find(client, "tpl2")["id"] == "tpl2"
    assert find(client, "single")["id"] == "tpl3"


def test_a_template_file_that_is_a_folder_is_named_as_such(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert caught.value.message == f"the template file {tmp_path} is a folder"


def test_a_template_file_that_is_a_broken_link_or_a_loop_is_named_as_such(tmp_path) -> None:
    """A link to a file that is gone said "No such file or directory", and sent the user to
    the file's permissions (hunt, stop 51)."""
    broken, loop = tmp_path / "broken.toml", tmp_path / "loop.toml"
    broken.symlink_to(tmp_path / "gone.toml")
    loop.symlink_to(loop)
    for link, target in ((broken, tmp_path / "gone.toml"), (loop, loop)):
        with pytest.raises(ConfigError) as caught:
            load(link)
        assert caught.value.message == (f"the template file {link} is a link that leads to no "
                                        f"file (it points at {target}: missing, or a loop of "
                                        "links)")
        assert caught.value.remedy == ("point the link at the file, or pass the file itself "
                                       "with --file")


KEY = "rpa_TEMPLATEKEY0123456789ABCDEFGH"


class Untouched:
    """A backend whose client must not be asked anything: a refusal comes first."""

    name = "fake"

    @property
    def client(self) -> Any:
        raise AssertionError("a request was about to be sent")


@pytest.mark.parametrize("value", [KEY, KEY[4:], KEY.lower(), KEY[:20], f"x={KEY};y"])
def test_the_runpod_key_in_a_pods_env_is_refused_before_anything_is_sent(value: str) -> None:
    """Hunt: `template.sync` of a file whose [env] held the RunPod key (`public = true` even)
    uploaded it, the diff showing only `****`; `pod.provision --env X=KEY` sent it too. Every
    pod made from it, and whoever may read the template, could spend with the account."""
    from podcycle.config import resolve
    from podcycle.provision import provision_pod
    from podcycle.templates import refuse_the_key

    with pytest.raises(ConfigError) as refused:
        refuse_the_key({"OK": "1", "MY_VAR": value}, KEY, "config/template.toml [env]")
    assert refused.value.message.startswith("config/template.toml [env]: MY_VAR is, or holds, "
                                            "the RunPod API key")
    refuse_the_key({"MY_VAR": "an ordinary value", "N": KEY[:10]}, KEY, "x")  # not the key

    settings = resolve({}, {}, environ={"RUNPOD_API_KEY": KEY}, use_keyring=False)
    with pytest.raises(ConfigError, match=r"^--env: MY_VAR is, or holds, the RunPod API key"):
        provision_pod(Untouched(), settings, name="p", env={"MY_VAR": value})


def test_a_clusters_nodes_get_no_runpod_key_from_the_template_file(monkeypatch) -> None:
    """Second read: a cluster's every node gets config/template.toml's [env] (create_body),
    and that path never asked whether the key was in it: `cycle.full-smoke --nodes 2` sent
    it to each node while template.sync refused the same file."""
    from podcycle import clusters
    from podcycle.config import resolve

    spec = load(ROOT / DEFAULT_FILE)
    spec["env"] = {**spec["env"], "MY_VAR": KEY}
    monkeypatch.setattr(clusters, "cluster_spec", lambda path=None: spec)

    settings = resolve({"nodes": 2}, {}, environ={"RUNPOD_API_KEY": KEY}, use_keyring=False)
    with pytest.raises(ConfigError, match=r"^config/template.toml \[env\]: MY_VAR is, or "
                                          r"holds, the RunPod API key"):
        clusters.provision_cluster(Untouched(), settings, name="c")


def test_template_sync_refuses_the_runpod_key_in_its_file(runpod, tmp_path, capsys,
                                                         monkeypatch) -> None:
    """The task itself (not only the check): `public = true` and the key in [env] made a
    template anyone could read holding it. Nothing is sent, not even a dry run's read."""
    import tasks.template as t

    monkeypatch.setenv("RUNPOD_API_KEY", KEY)  # the key this machine is configured with
    path = template_file(tmp_path, "leaky", f'MY_VAR = "{KEY}"\n')
    before = len(runpod.requests())
    for dry_run in (True, False):
        with pytest.raises(invoke.exceptions.Exit) as refused:
            call(capsys, t.sync, runpod, file=str(path), dry_run=dry_run)
        assert "MY_VAR is, or holds, the RunPod API key" in str(refused.value.message)
    assert runpod.requests()[before:] == []
