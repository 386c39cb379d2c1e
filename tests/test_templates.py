"""Template as code against the local RunPod: template.sync creates, then reports "no change"
without a write (the server's request log), then shows and applies a changed field;
--dry-run writes nothing; template.show prints one; a bad file is refused before any request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podcycle.errors import ConfigError
from podcycle.templates import DEFAULT_FILE, load
from tests.conftest import ROOT

WRITES = ("POST", "PATCH", "PUT", "DELETE")


def template_file(tmp_path: Path, name: str, **changes: str) -> Path:
    text = (ROOT / DEFAULT_FILE).read_text().replace('name = "chess-bot-training"',
                                                     f'name = "{name}"')
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def writes(runpod) -> list[dict]:
    return [r for r in runpod.requests() if r["method"] in WRITES
            and r["path"].startswith("/v2/templates")]


@pytest.mark.slow
def test_sync_creates_then_no_change_then_applies_a_change(inv, runpod, tmp_path: Path
                                                           ) -> None:
    path = template_file(tmp_path, "sync-test")
    runpod.admin("DELETE", "/_local/requests")
    dry = inv("template.sync", "--file", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would create" in dry.stdout and "ports: (absent) → ['8888/http'" in dry.stdout
    assert writes(runpod) == []

    created = inv("template.sync", "--file", str(path), "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["action"] == "create" and made["template"]["id"].startswith("tpl-")
    assert [w["method"] for w in writes(runpod)] == ["POST"]

    runpod.admin("DELETE", "/_local/requests")
    again = inv("template.sync", "--file", str(path))
    assert again.returncode == 0 and "no change" in again.stdout
    assert writes(runpod) == []  # read, compared, nothing written

    changed = template_file(tmp_path, "sync-test", **{"disk = 50": "disk = 80",
                                                      'START_JUPYTER = "0"': 'START_JUPYTER = "1"'})
    preview = inv("template.sync", "--file", str(changed), "--dry-run")
    assert "disk: 50 → 80" in preview.stdout and "env.START_JUPYTER: '0' → '1'" in preview.stdout
    assert writes(runpod) == []
    applied = inv("template.sync", "--file", str(changed))
    assert applied.returncode == 0 and "updated" in applied.stdout
    assert [w["method"] for w in writes(runpod)] == ["PATCH"]
    shown = inv("template.show", "sync-test", "--json")
    template = json.loads(shown.stdout)
    assert template["disk"] == 80 and template["env"]["START_JUPYTER"] == "1"
    assert inv("template.sync", "--file", str(changed)).stdout.strip().endswith("no change")


@pytest.mark.slow
def test_show_masks_secrets_and_names_the_templates_when_not_found(inv, tmp_path: Path
                                                                   ) -> None:
    path = template_file(tmp_path, "secret-test", **{
        'START_SSHD = "1"': 'START_SSHD = "1"\nHF_TOKEN = "hf_secretvalue123"'})
    assert inv("template.sync", "--file", str(path)).returncode == 0
    shown = inv("template.show", "secret-test")
    assert "hf_secretvalue123" not in shown.stdout and "HF_TOKEN = ****" in shown.stdout
    assert "None" not in shown.stdout, shown.stdout  # no registry: "-", not Python's None
    missing = inv("template.show", "nope")
    assert missing.returncode != 0 and "chess-bot-training" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(("text", "words"), [
    ('name = "x"\nimage = "i"\ndisk = "big"\n', "disk must be an integer, not 'big'"),
    ('name = "x"\nimage = "i"\nports = ["22"]\n', "port '22'"),
    ('name = "x"\nimage = "i"\nvolume = 3\n', "unknown field 'volume'"),
    ('image = "i"\n', "name is required"),
    ('name = "x"\nimage = "i"\n[env]\nA = 1\n', "env A must be a string"),
    ('name = "x\n', "not valid TOML"),
    # Hunt: a mount over the whole container, or over its /etc, was synced as given.
    *((f'name = "x"\nimage = "i"\n[mounts.persistent]\nsize = 20\npath = "{path}"\n',
       f"mounts.persistent.path '{path}' must be a folder under / with no '.' or '..' in it")
      for path in ("/", "//", "/workspace/../etc", "/./workspace")),
])
def test_a_bad_template_file_is_refused(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert words in str(err.value)


def test_a_bad_image_flag_is_blamed_on_the_flag_not_the_file() -> None:
    """Hunt: template.sync --image UPPER/Case said "config/template.toml: image 'UPPER/Case' is
    not an image reference → fix the file": the value came from --image."""
    for image in ("UPPER/Case", " "):
        with pytest.raises(ConfigError) as refused:
            load(ROOT / DEFAULT_FILE, image)
        assert refused.value.message.startswith("--image: "), refused.value.message
        assert "template.toml" not in refused.value.message
        assert refused.value.remedy.startswith("fix --image")
    assert load(ROOT / DEFAULT_FILE, "ghcr.io/me/chess-bot-runpod:abc123")["image"] == \
        "ghcr.io/me/chess-bot-runpod:abc123"


def test_the_committed_template_file_loads() -> None:
    spec = load(ROOT / DEFAULT_FILE)
    assert "22/tcp" in spec["ports"] and spec["startSsh"] is True


def test_a_new_local_runpods_template_is_the_committed_file() -> None:
    """Hunt: on a fresh local RunPod, `inv template.sync --dry-run` (the README's first look
    at templates as code) said `would update ... env.AUTHORIZED_KEYS: '' → (absent)`: the
    server seeded a key the file leaves out. A newcomer saw drift nobody made."""
    from podcycle.local.server import LocalRunPod
    from podcycle.templates import plan

    seeded = LocalRunPod._default_template()
    assert plan(load(ROOT / DEFAULT_FILE), [seeded]).action == "none"


def test_an_empty_mounts_table_is_no_change_to_sync() -> None:
    """The spec: `mounts: {}` in a PATCH leaves the mount. Compared with the live mount, an
    empty [mounts] in the file was an update at every sync, a PATCH that changed nothing."""
    from podcycle.templates import plan

    live = {"id": "t1", "name": "x", "image": "i",
            "mounts": {"persistent": {"size": 20, "path": "/workspace"}}}
    assert plan({"name": "x", "image": "i", "mounts": {}}, [live]).action == "none"
    changed = plan({"name": "x", "image": "i",
                    "mounts": {"persistent": {"size": 30, "path": "/workspace"}}}, [live])
    assert changed.action == "update" and "mounts" in changed.body
