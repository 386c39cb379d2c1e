"""Model strength in the cycle: a trained model beats the random mover, the strength check of
local-validate / full-smoke lands in the run state, report and summary, and eval.match --run
measures any finished run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from podcycle.match import (
    MatchConfig,
    Rules,
    load_openings,
    model_spec,
    parse_opponent,
    parse_tc,
    previous_run,
    run_match,
)
from podcycle.runs import DatasetRecord, RunFolder, RunState
from tests.conftest import INV, ROOT, SMALL_MODEL, child_environ

SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod"


@pytest.fixture
def trained_model(smoke_training: dict) -> Path:
    """The smoke set's model (conftest.smoke_training: 3 epochs of 3x32 on the CPU, seeded),
    trained once per test run and shared with tests/test_chessbot.py's quality check."""
    return smoke_training["model"]


@pytest.mark.slow
def test_trained_model_beats_random_over_40_games(trained_model: Path, tmp_path: Path) -> None:
    config = MatchConfig(games=40, concurrency=2, tc=parse_tc("nodes=1"),
                         openings=load_openings(ROOT / "config" / "openings.epd"),
                         rules=Rules(max_moves=150), pgn=tmp_path / "vs-random.pgn", seed=1)
    summary = run_match(model_spec(trained_model), parse_opponent("random"), config).summary()
    assert summary["games"] == 40 and sum(summary["pentanomial"]) == 20
    assert summary["elo_low"] > 0, summary
    assert summary["wins"] > summary["losses"]


def _state(run_id: str, sha: str, outcome: str = "ok", created: float = 1.0) -> RunState:
    state = RunState(run_id=run_id, created_at=created, outcome=outcome)
    state.dataset = DatasetRecord(pod_id="p", local="/d", remote="/r", bytes=1, sha256=sha,
                                  train=1, val=1)
    return state


def test_previous_run_on_the_same_dataset(tmp_path: Path) -> None:
    def make(run_id: str, sha: str, outcome: str = "ok", created: float = 1.0,
             model: bool = True) -> None:
        folder = RunFolder(tmp_path, run_id)
        folder._state = _state(run_id, sha, outcome, created)
        folder.save()
        if model:
            folder.run_artifacts.mkdir(parents=True)
            (folder.run_artifacts / "model.pt").write_bytes(b"x")

    make("old", "aaa", created=1)
    make("newer", "aaa", created=5)
    make("failed", "aaa", outcome="failed", created=9)
    make("other-data", "bbb", created=9)
    make("no-model", "aaa", created=9, model=False)
    make("me", "aaa", created=10)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    assert previous_run(tmp_path, "me", "aaa") == "newer"
    assert previous_run(tmp_path, "me", "ccc") is None
    assert previous_run(tmp_path, "me", None) is None
    # Validated again later, an older run was matched against a newer one, where "the
    # previous finished run" was said: only runs created before it count.
    assert previous_run(tmp_path, "me", "aaa", before=10) == "newer"
    assert previous_run(tmp_path, "newer", "aaa", before=5) == "old"
    assert previous_run(tmp_path, "old", "aaa", before=1) is None


def test_state_without_strength_still_loads_and_reports(tmp_path: Path) -> None:
    from podcycle import report

    folder = RunFolder(tmp_path, "old-run")
    old = _state("old-run", "aaa").to_json()
    del old["strength"]  # as a state file written before the strength check existed
    folder.path.mkdir(parents=True)
    folder.state_path.write_text(json.dumps(old))
    assert folder.state.strength is None
    assert "## Strength" not in report.write(folder).read_text()


def test_strength_in_report_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from podcycle import report
    from podcycle.summary import print_summary

    folder = RunFolder(tmp_path, "measured")
    folder._state = _state("measured", "aaa")
    folder.state.strength = {
        "model": "chessbot:measured", "opponent": "random", "games": 8, "planned_games": 8,
        "wins": 6, "draws": 2, "losses": 0, "score": 0.875, "pentanomial": [0, 0, 0, 2, 2],
        "elo": 337.3, "elo_low": -115.7, "elo_high": 790.3, "pgn": "/x/match.pgn",
        "sprt": {"elo0": 0.0, "elo1": 10.0, "alpha": 0.05, "beta": 0.05, "llr": 0.11,
                 "lower": -2.9444, "upper": 2.9444, "verdict": "continue"}}
    folder.save()
    text = report.write(folder).read_text()
    assert "## Strength" in text and "W 6 D 2 L 0" in text and "Elo +337.3 ± 453.0" in text
    assert "LLR 0.11 (bounds -2.94, 2.94): continue" in text and "/x/match.pgn" in text
    print_summary(folder)
    out = capsys.readouterr().out
    assert "strength   W 6 D 2 L 0 against random, Elo +337.3 ± 453.0" in out
    assert "SPRT [0, 10]: continue" in out


def _inv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = child_environ()
    full.update(env)
    return subprocess.run([INV, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_bad_strength_flags_are_refused_before_any_request(runpod, tmp_path: Path,
                                                           tiny_dataset: Path) -> None:
    env = {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir),
           "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "RUNPOD_DATASET_DIR": str(tiny_dataset), "RUNPOD_CYCLE_RUN_ID": "bad-strength"}
    before = len(runpod.requests())
    for flags, message in ((["--strength-games", "3"], "--strength-games must be even"),
                           (["--strength-games", "2", "--strength-opponent", "bogus"],
                            "is not an opponent")):
        result = _inv(env, "cycle.full-smoke", *flags)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert len(runpod.requests()) == before
    assert not (tmp_path / "artifacts" / "bad-strength").exists()


@pytest.mark.slow
def test_full_smoke_strength_games_recorded_and_eval_match_run(runpod, tmp_path: Path,
                                                                tiny_dataset: Path) -> None:
    artifacts = tmp_path / "artifacts"
    env = {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir),
           "POD_CYCLE_ARTIFACTS_DIR": str(artifacts), "RUNPOD_DATASET_DIR": str(tiny_dataset),
           "RUNPOD_CYCLE_RUN_ID": "strength-run", **SMALL_MODEL}
    result = _inv(env, "cycle.full-smoke", "--epochs", "1", "--strength-games", "8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = RunFolder(artifacts, "strength-run")
    strength = json.loads(folder.state_path.read_text())["strength"]
    assert strength["games"] == 8 and strength["opponent"] == "random"
    assert strength["wins"] + strength["draws"] + strength["losses"] == 8
    assert {"elo", "elo_low", "elo_high", "sprt", "pgn"} <= set(strength)
    assert Path(strength["pgn"]).is_file() and Path(strength["pgn"]).parent == \
        folder.path / "strength"
    assert "## Strength" in folder.observations.read_text()
    assert "strength   W " in result.stdout
    # A finished run measured later, machine-readable.
    later = _inv(env, "eval.match", "--run", "strength-run", "--games", "2", "--tc",
                 "nodes=1", "--max-moves", "30", "--json")
    assert later.returncode == 0, later.stderr
    answer = json.loads(later.stdout)
    assert {"wins", "draws", "losses", "score", "elo", "elo_low", "elo_high", "pgn"} <= \
        set(answer)
    assert answer["games"] == 2 and answer["model"] == "chessbot:strength-run"
    assert Path(answer["pgn"]).parent == folder.path / "strength"
