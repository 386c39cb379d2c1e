"""Private images (issue 18): registry credentials (/v2/registries) on the local RunPod per
RunPod's spec, `registry = "NAME"` in a template file, a private image's pod starting with the
credential and refused (with the reason in its log) without one, and the secret nowhere."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import invoke
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from podcycle import registries
from podcycle.errors import ConfigError, PodCycleError
from podcycle.runpod.errors import ApiError
from podcycle.templates import DEFAULT_FILE
from tests.conftest import ROOT
from tests.test_openapi_contract import SPEC, Recorder

SECRET = "ghp_RegistryT0kenNeverPrinted0123456789"
PRIVATE_IMAGE = "private.local/acme/chess-bot-runpod:latest"
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
    return OpenAPI.from_file_path(str(SPEC), config=config)


def context(runpod) -> invoke.Context:
    from tasks import DEFAULTS

    return invoke.Context(invoke.Config(overrides={"podcycle": {
        **DEFAULTS, "backend": "local", "local_dir": str(runpod.dir)}}))


def call(capsys, task: Any, runpod, *args: Any, **kwargs: Any) -> str:
    capsys.readouterr()
    task(context(runpod), *args, **kwargs)
    out = capsys.readouterr()
    return out.out + out.err


def template_file(tmp_path: Path, name: str, image: str, registry: str | None) -> Path:
    text = (ROOT / DEFAULT_FILE).read_text().replace(
        'name = "chess-bot-training"', f'name = "{name}"').replace(
        'image = "ghcr.io/example/chess-bot-runpod:latest"', f'image = "{image}"')
    if registry is not None:
        text = text.replace('# registry = "ghcr"', f'registry = "{registry}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def template_writes(runpod) -> list[dict]:
    return [r for r in runpod.requests() if r["method"] in WRITES
            and r["path"].startswith("/v2/templates")]


# -- the endpoints, per the spec -------------------------------------------------------------

def test_registry_endpoints_follow_the_spec(runpod, openapi: OpenAPI) -> None:
    recorder = Recorder(runpod.url)
    client = recorder.attach(runpod.client())
    made = client.create_registry("contract-reg", "octocat", SECRET)
    assert made.name == "contract-reg" and made.id
    assert made in client.list_registries()
    assert client.get_registry(made.id) == made
    with pytest.raises(ApiError):
        client.create_registry("contract-reg", "octocat", SECRET)  # 400: name taken
    with pytest.raises(ApiError):
        client.get_registry("missing")  # 404
    recorder.raw("POST", "/v2/registries", runpod.key,
                 json={"name": "no-password", "username": "u"})  # 422
    recorder.raw("POST", "/v2/registries", runpod.key,
                 json={"name": "x", "username": "u", "password": "p", "bogus": 1})  # 422
    recorder.raw("GET", "/v2/registries", None)  # 401
    runpod.add_key("registry-less-key", ["templates", "pods"])
    recorder.raw("GET", "/v2/registries", "registry-less-key")  # 403
    recorder.raw("POST", "/v2/registries", "registry-less-key",
                 json={"name": "n", "username": "u", "password": "p"})  # 403
    recorder.raw("DELETE", f"/v2/registries/{made.id}", "registry-less-key")  # 403
    client.delete_registry(made.id)  # 204
    with pytest.raises(ApiError):
        client.delete_registry(made.id)  # 404
    statuses = {response.status_code for _, response in recorder.exchanges}
    assert statuses >= {200, 201, 204, 400, 401, 403, 404, 422}
    failures = []
    for request, response in recorder.exchanges:
        label = f"{request.method} {request.path_url} → {response.status_code}"
        oa_request = RequestsOpenAPIRequest(request)
        try:
            openapi.validate_response(oa_request, RequestsOpenAPIResponse(response))
        except Exception as exc:  # noqa: BLE001 - collect every violation
            failures.append(f"response of {label}: {exc!r}"[:600])
        if response.status_code < 400:
            try:
                openapi.validate_request(oa_request)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"request {label}: {exc!r}"[:600])
        assert SECRET not in response.text
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_a_credential_in_use_by_a_pod_cannot_be_deleted_and_templates_lose_it(runpod) -> None:
    client = runpod.client()
    made = client.create_registry("in-use", "octocat", SECRET)
    template = client.create_template({"name": "uses-in-use", "image": "example/i:1",
                                       "registry": made.id})
    pod = client.create_pod({"name": "pulls-with-it", "templateId": template["id"],
                             "gpu": {"id": "NVIDIA RTX A5000", "count": 1}})
    try:
        with pytest.raises(ApiError) as caught:
            client.delete_registry(made.id)
        assert caught.value.status == 400 and pod.id in caught.value.detail
    finally:
        client.delete_pod(pod.id)
    client.delete_registry(made.id)
    assert client.get_template(template["id"])["registry"] is None
    client.delete_template(template["id"])


# -- the secret: stdin or a prompt, never a flag ---------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_comes_from_stdin_or_a_prompt_and_is_masked_at_once() -> None:
    from podcycle.redact import redact

    assert registries.read_password(io.StringIO(SECRET + "\n")) == SECRET
    assert redact(f"x {SECRET} y") == "x **** y"
    asked = []
    typed = registries.read_password(Terminal(), prompt=lambda q: asked.append(q) or SECRET)
    assert typed == SECRET and asked and SECRET not in asked[0]
    for bad in ("", "\n", "short\n", "two\nlines of token\n"):
        with pytest.raises(ConfigError) as caught:
            registries.read_password(io.StringIO(bad))
        assert "stdin" in caught.value.message


def test_a_token_that_is_not_utf8_is_refused_and_never_crashes_the_mask() -> None:
    """Hunt: `printf 'ghp_ABC\\xff\\xfe...' | inv registry.create` (a binary file piped in)
    failed with a traceback in the key's mask (UnicodeEncodeError), and once past it, as
    RunPod's 500. One line now, naming where the token came from."""
    with pytest.raises(ConfigError) as refused:
        registries.read_password(io.StringIO("ghp_ABC\udcff\udcfeDEF12345"))
    assert refused.value.message.startswith("the password or token from stdin holds bytes "
                                            "that are not UTF-8 text")


def test_create_and_delete_tasks_refuse_what_they_must(runpod, tmp_path, capsys,
                                                      monkeypatch) -> None:
    import tasks.registry as r
    import tasks.template as t

    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET))
    with pytest.raises(invoke.exceptions.Exit):
        call(capsys, r.create, runpod, "bad name!", username="octocat")
    for user in ("octo\ncat", "octo cat"):  # stored as typed before, a login no pull takes
        with pytest.raises(invoke.exceptions.Exit) as odd:
            call(capsys, r.create, runpod, "odd-user", username=user)
        assert "holds a space or a control character" in str(odd.value.message)
    assert "odd-user" not in [x.name for x in runpod.client().list_registries()]
    # The key the task uses (here --api-key) piped in as the token: refused before anything.
    key = "rpa_TaskLevelKey0123456789ABCDEFGH"
    monkeypatch.setattr("sys.stdin", io.StringIO(key))
    with pytest.raises(invoke.exceptions.Exit) as pasted:
        call(capsys, r.create, runpod, "pasted-key", username="octocat", api_key=key)
    assert "is, or holds, the RunPod API key" in str(pasted.value.message)
    assert key not in str(pasted.value.message) and pasted.value.code == 2
    assert "pasted-key" not in [x.name for x in runpod.client().list_registries()]
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET))
    created = call(capsys, r.create, runpod, "tasks-reg", username="octocat")
    assert "registry = \"tasks-reg\"" in created
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET))
    with pytest.raises(invoke.exceptions.Exit) as taken:
        call(capsys, r.create, runpod, "tasks-reg", username="octocat")
    assert "exists already" in str(taken.value.message)
    assert taken.value.code == 2  # bad input, as volume.create's duplicate name (it was 1)
    path = template_file(tmp_path, "tasks-reg-user", "example/i:1", "tasks-reg")
    call(capsys, t.sync, runpod, file=str(path))
    with pytest.raises(invoke.exceptions.Exit) as used:
        call(capsys, r.delete, runpod, "tasks-reg", yes=True)
    assert "tasks-reg-user" in str(used.value.message)
    unset = template_file(tmp_path, "tasks-reg-user", "example/i:1", "")
    assert "registry:" in call(capsys, t.sync, runpod, file=str(unset))
    with pytest.raises(invoke.exceptions.Exit) as unconfirmed:
        call(capsys, r.delete, runpod, "tasks-reg")
    assert "--yes" in str(unconfirmed.value.message)
    assert "deleted" in call(capsys, r.delete, runpod, "tasks-reg", yes=True)
    assert "tasks-reg" not in call(capsys, r.list_, runpod, json=True)


def test_sync_refuses_an_unknown_registry_name_before_any_change(runpod, tmp_path) -> None:
    from podcycle import templates

    path = template_file(tmp_path, "unknown-registry", PRIVATE_IMAGE, "nobody-made-this")
    runpod.admin("DELETE", "/_local/requests")
    with pytest.raises(ConfigError) as caught:
        templates.sync(runpod.client(), templates.load(path), dry_run=False)
    assert "nobody-made-this" in caught.value.message
    assert "inv registry.list" in caught.value.remedy
    assert template_writes(runpod) == []


def test_sync_resolves_the_registry_name_to_its_id(runpod, tmp_path) -> None:
    from podcycle import templates

    client = runpod.client()
    made = client.create_registry("resolve-me", "octocat", SECRET)
    path = template_file(tmp_path, "resolved-registry", PRIVATE_IMAGE, "resolve-me")
    plan, live = templates.sync(client, templates.load(path), dry_run=False)
    assert plan.action == "create" and live["registry"] == made.id
    plan, _ = templates.sync(client, templates.load(path), dry_run=False)
    assert plan.action == "none"
    client.delete_template(live["id"])
    client.delete_registry(made.id)


def test_registry_delete_names_the_templates_that_use_it() -> None:
    from podcycle.runpod.models import Registry

    class Account:
        def list_registries(self) -> list[Registry]:
            return [Registry("reg1", "ghcr")]

        def list_templates(self) -> list[dict[str, Any]]:
            return [{"id": "tpl1", "name": "trainer", "registry": "reg1"},
                    {"id": "tpl2", "name": "other", "registry": None}]

        def delete_registry(self, registry_id: str) -> None:
            raise AssertionError("must not be called")

    with pytest.raises(PodCycleError) as caught:
        registries.delete(Account(), "ghcr", yes=True)
    assert "trainer (tpl1)" in caught.value.message and "other" not in caught.value.message


# -- end to end: create → sync → a private image's pod starts; without it, refused -----------

def pod_logs_text(inv, pod_id: str) -> str:
    result = inv("pod.logs", pod_id, "--source", "system")
    return result.stdout + result.stderr


@pytest.mark.slow
def test_private_image_pod_starts_with_the_credential_and_the_secret_is_nowhere(
        inv, runpod, tmp_path) -> None:
    outputs = []

    def run(*args: str, **kwargs: Any):
        result = inv(*args, env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "runs")}, **kwargs)
        outputs.append(result.stdout + result.stderr)
        return result

    created = run("registry.create", "e2e-ghcr", "--username", "octocat", input=SECRET + "\n")
    assert created.returncode == 0, created.stderr
    listed = run("registry.list", "--json")
    assert [r["name"] for r in json.loads(listed.stdout)].count("e2e-ghcr") == 1
    with_login = template_file(tmp_path, "private-with", PRIVATE_IMAGE, "e2e-ghcr")
    without = template_file(tmp_path, "private-without", PRIVATE_IMAGE, None)
    for path in (with_login, without):
        synced = run("template.sync", "--file", str(path), "--json")
        assert synced.returncode == 0, synced.stderr
    assert run("template.show", "private-with").returncode == 0

    started = run("cycle.start", "--run-id", "private-image", "--template-name", "private-with")
    assert started.returncode == 0, started.stderr[-2000:]
    run_folder = Path(started.stdout.strip().splitlines()[-1])
    assert (run_folder / "provision.json").is_file()
    state = json.loads((run_folder / "provision.json").read_text())
    assert runpod.client().get_pod(state["pod"]["id"]).status.value == "RUNNING"

    refused = run("pod.provision", "--template-name", "private-without", "--name",
                  "no-login", "--wait")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    pod = next(p for p in runpod.client().list_pods() if p.name == "no-login")
    assert pod.status.value == "ERROR" and pod.cost_per_hour == 0
    reason = pod_logs_text(inv, pod.id)
    outputs.append(reason)
    assert "image pull failed" in reason and "private" in reason
    assert "registry.create" in reason

    # The secret: in no output, no file of the local RunPod's state (the credential store
    # keeps a salted hash), no run folder, no process's command line.
    store = runpod.dir / "registry-credentials.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    leaks = [str(f) for folder in (runpod.dir, tmp_path / "runs") for f in folder.rglob("*")
             if f.is_file() and SECRET.encode() in f.read_bytes()]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if SECRET.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    leaks.append(f"/proc/{pid}/cmdline")
            except OSError:
                pass
    leaks += [f"output {i}" for i, text in enumerate(outputs) if SECRET in text]
    assert not leaks, leaks

    assert run("cycle.stop", "--run-id", "private-image").returncode == 0
    run("pod.terminate", pod.id, "--yes")
    deleted = run("registry.delete", "e2e-ghcr", "--yes")
    assert deleted.returncode != 0 and "private-with" in deleted.stderr
    assert runpod.client().get_pod(state["pod"]["id"]).status.value == "EXITED"


def test_the_runpod_key_is_no_registry_token_and_a_token_has_a_length() -> None:
    """`echo $RUNPOD_API_KEY | inv registry.create ...` stored the RunPod key as a registry's
    password, which RunPod hands to that registry (ghcr.io, Docker Hub) at every pull: the
    key leaves for a third party. A 5 MB file piped in was taken too, and `yes |` never
    ended (hunt, stop 51)."""
    key = "rpa_" + "K3Y" * 12
    # As pasted: whole, lowercased, inside more text, without its prefix, cut short.
    for piped in (key, key.lower(), f"{key}-and-more", key[4:], key[:-1]):
        with pytest.raises(ConfigError) as refused:
            registries.read_password(io.StringIO(piped + "\n"), runpod_key=key)
        assert refused.value.message == (
            "the password or token from stdin is, or holds, the RunPod API key: RunPod would "
            "hand it to the registry at every pull of the image, so it is not stored (pasted "
            "in the wrong place?)")
        assert key not in refused.value.render()
    assert registries.read_password(io.StringIO("ghp_" + "t" * 36), runpod_key=key) == \
        "ghp_" + "t" * 36

    class Endless(io.StringIO):
        def read(self, size: int = -1) -> str:
            assert size > 0, "an unbounded read of an endless stdin"
            return "y\n" * (size // 2 + 1)

    with pytest.raises(ConfigError) as refused:
        registries.read_password(Endless())
    assert "longer than 16,384 characters" in refused.value.message
