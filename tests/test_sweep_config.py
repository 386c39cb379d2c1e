"""The sweep file and the sweep's arithmetic, in milliseconds: every refusal names the file and
the key and happens before anything exists (no sweep folder, no request), grids and
distributions parse into what Optuna gets, the budget rule says which trials may start, the
objective is read from a run's metrics.json, and a trial's command carries its share."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from podcycle import sweep, sweep_config, sweep_status
from podcycle.config import resolve
from podcycle.errors import ConfigError
from podcycle.runs import RunFolder
from tests.conftest import ROOT, eventually

GOOD = """
[sweep]
objective = "val_loss"
parallel = 2
max_cost = 1.0
max_minutes = 10
epochs = 1
blocks = 1
[params.lr]
grid = [0.001, 0.01]
[params.batch_size]
grid = [64, 128]
"""


def no_runpod(*args, **kwargs):
    """The connect of a sweep that must be refused before it talks to RunPod."""
    raise AssertionError("a refused sweep must not talk to RunPod")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        sweep_config.load(path)
    message = err.value.message
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message


BAD = [
    # (what is wrong, the file, what the one line must name)
    ("unknown parameter", '[params.learning_rate]\ngrid = [0.1]\n',
     "[params.learning_rate] unknown parameter 'learning_rate'"),
    ("empty grid", '[params.lr]\ngrid = []\n', "[params.lr] grid is empty"),
    ("low above high", '[params.lr]\nlow = 0.1\nhigh = 0.01\n',
     "[params.lr] low (0.1) > high (0.01)"),
    ("non-numeric bound", '[params.lr]\nlow = "small"\nhigh = 0.01\n',
     "[params.lr] low must be a number, got 'small'"),
    ("non-numeric high", '[params.blocks]\nlow = 1\nhigh = "many"\n',
     "[params.blocks] high must be an integer, got 'many'"),
    # Shown as the file writes it (TOML's true), not as Python's True.
    ("boolean in a grid", '[params.lr]\ngrid = [true]\n',
     "[params.lr] grid[0] must be a number, got true"),
    ("missing high", '[params.lr]\nlow = 0.001\n', "[params.lr] high is missing"),
    ("unknown objective", '[sweep]\nobjective = "speed"\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] objective 'speed' is not an objective"),
    ("parallel below 1", '[sweep]\nparallel = 0\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] parallel must be at least 1, got 0"),
    ("parallel past what one host drives", '[sweep]\nparallel = 10000\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] parallel must be at most 64, got 10000"),
    ("trials below 1", '[sweep]\ntrials = 0\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] trials must be at least 1, got 0"),
    ("trials not a number", '[sweep]\ntrials = "four"\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] trials must be an integer, got 'four'"),
    ("unknown sweep key", '[sweep]\nbudget = 3\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] budget is not a sweep setting"),
    ("unknown parameter key", '[params.lr]\nlo = 0.1\nhigh = 1.0\n',
     "[params.lr] lo is not a parameter key"),
    ("grid and range at once", '[params.lr]\ngrid = [0.1]\nlow = 0.1\nhigh = 1.0\n',
     "[params.lr] gives grid and low/high"),
    ("nothing to draw from", '[params.lr]\nlog = true\n',
     "[params.lr] says neither grid, choices nor low/high"),
    ("grid item of the wrong type", '[params.batch_size]\ngrid = [64, "big"]\n',
     "[params.batch_size] grid[1] must be an integer"),
    ("a bad type", '[params.lr]\nlow = 0.1\nhigh = 1.0\ntype = "double"\n',
     "[params.lr] type must be \"float\" or \"int\""),
    ("log with a zero low", '[params.lr]\nlow = 0.0\nhigh = 1.0\nlog = true\n',
     "[params.lr] low must be at least 1e-08, got 0.0"),
    ("log on zero", '[params.weight_decay]\nlow = 0.0\nhigh = 1.0\nlog = true\n',
     "[params.weight_decay] log = true needs low > 0"),
    ("dataset as a range", '[params.dataset]\nlow = 1\nhigh = 2\n',
     "[params.dataset] dataset takes grid or choices"),
    ("prune on strength", '[sweep]\nobjective = "strength"\nstrength_games = 4\n'
     'prune = true\n[params.lr]\ngrid = [0.1]\n', "[sweep] prune cannot prune"),
    ("a distribution without trials", '[params.lr]\nlow = 0.001\nhigh = 0.1\n',
     "[sweep] trials is missing"),
    ("more trials than the grid", '[sweep]\ntrials = 3\n[params.lr]\ngrid = [0.1, 0.2]\n',
     "[sweep] trials (3) is more than the grid's 2 combination(s)"),
    ("a budget without a time bound", '[sweep]\nmax_cost = 2\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] max_minutes is missing"),
    ("a budget under the guard's minimum", '[sweep]\nmax_cost = 0.001\nmax_minutes = 5\n'
     '[params.lr]\ngrid = [0.1]\n', "[sweep] max_cost must be at least 0.01"),
    ("no parameters", '[sweep]\nparallel = 2\n', "[params] has no parameter to sweep"),
    ("unknown table", '[sweeps]\nparallel = 2\n[params.lr]\ngrid = [0.1]\n',
     "unknown table [sweeps]"),
    ("a setting above the first header", 'trials = 4\n[params.lr]\ngrid = [0.1]\n',
     "trials is set outside any table"),
    ("an array of tables", '[[foo]]\nx = 1\n[params.lr]\ngrid = [0.1]\n',
     "unknown table [foo]"),
    ("a key with a line break", '"a\\nb" = 1\n[params.lr]\ngrid = [0.1]\n',
     "a\\x0ab is set outside any table"),
    ("a base value out of range", '[sweep]\nblocks = 0\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] blocks must be at least 1, got 0"),
    ("strength needs games", '[sweep]\nobjective = "strength"\n[params.lr]\ngrid = [0.1]\n',
     "[sweep] strength_games must be an even number"),
]


@pytest.mark.parametrize("case,text,named", BAD, ids=[case for case, _, _ in BAD])
def test_a_bad_sweep_file_is_refused_naming_file_and_key(tmp_path: Path, case: str, text: str,
                                                         named: str) -> None:
    assert named in refused(tmp_path, text)


def test_a_file_that_is_not_toml_is_refused_with_its_line(tmp_path: Path) -> None:
    message = refused(tmp_path, "[sweep]\nparallel = = 2\n")
    assert "not valid TOML" in message and "line 2" in message


def test_a_refused_file_creates_nothing_and_sends_no_request(tmp_path: Path) -> None:
    """sweep.run's own path: the file is refused before the sweep's folder or any request
    (the backend is never connected, so no pod can be made)."""
    artifacts = tmp_path / "artifacts"
    settings = resolve({"artifacts_dir": str(artifacts)}, {}, environ={}, use_keyring=False)
    path = write(tmp_path, GOOD.replace("grid = [64, 128]", "low = 128\nhigh = 64"))

    with pytest.raises(ConfigError) as err:
        sweep.run_sweep(settings, sweep.Options(config=path), connect=no_runpod)
    assert f"{path}: [params.batch_size] low (128) > high (64)" == err.value.message
    assert not sweep.sweeps_root(settings).exists()
    assert not artifacts.exists()


def test_run_folders_of_an_earlier_sweep_of_the_name_are_refused(tmp_path: Path) -> None:
    """An earlier sweep named zz, its sweep folder since removed, left run folders zz-t0...:
    a new sweep zz's trial 0 failed on "already has steps recorded", and sweep.status charged
    it the old run's cost and pod (which sweep.stop would then stop). Refused first."""
    artifacts = tmp_path / "artifacts"
    (artifacts / "zz-t0").mkdir(parents=True)
    (artifacts / "zz-tail").mkdir()  # not a trial's run: no refusal on its own
    settings = resolve({"artifacts_dir": str(artifacts)}, {}, environ={}, use_keyring=False)

    options = sweep.Options(config=write(tmp_path, GOOD),
                            flags=sweep_config.Overrides(name="zz"))
    with pytest.raises(sweep.SweepError) as err:
        sweep.run_sweep(settings, options, connect=no_runpod)
    assert err.value.message == (f"run folders of an earlier sweep named 'zz' exist in "
                                 f"{artifacts} (zz-t0): its trials would be taken for theirs")
    assert err.value.exit_code == 2  # a refused name, as a volume's or a registry's is
    assert not sweep.sweeps_root(settings).exists()


def test_a_taken_sweep_name_is_refused_with_exit_2_before_anything_is_made(
        tmp_path: Path) -> None:
    """A name that a sweep (its folder and record) or an earlier sweep's live pods hold:
    refused, naming what holds it and what to do, with the exit code of every other refused
    input (2; `inv volume.create` of a taken name exits 2), not 1 as a failure that happened
    along the way. Nothing is made for the new sweep."""
    from types import SimpleNamespace

    from tests.test_cycle_steps import FakeClient, pod_json

    settings = resolve({"artifacts_dir": str(tmp_path / "a")}, {}, environ={},
                       use_keyring=False)
    held = sweep.sweeps_root(settings) / "held"
    held.mkdir(parents=True)
    (held / "sweep.json").write_text("{}")
    options = sweep.Options(config=write(tmp_path, GOOD),
                            flags=sweep_config.Overrides(name="held"))
    with pytest.raises(sweep.SweepError) as err:
        sweep.run_sweep(settings, options, connect=no_runpod)
    assert err.value.message == f"sweep held exists already ({held})"
    assert err.value.remedy.startswith("continue it with inv sweep.run --resume held")
    assert err.value.exit_code == 2
    assert sorted(p.name for p in held.iterdir()) == ["sweep.json"]

    client = FakeClient()
    client.pods["p7"] = pod_json("p7", "EXITED", name="pod-cycle-old-t1")
    options = sweep.Options(config=write(tmp_path, GOOD),
                            flags=sweep_config.Overrides(name="old"))
    with pytest.raises(sweep.SweepError) as err:
        sweep.run_sweep(settings, options,
                        connect=lambda *a, **k: SimpleNamespace(client=client))
    assert err.value.message.startswith("pods of an earlier sweep named 'old' still exist "
                                        "(p7)")
    assert err.value.exit_code == 2
    assert client.actions == []
    assert not (sweep.sweeps_root(settings) / "old").exists()


def test_a_sweep_folder_without_its_record_is_named_as_such(tmp_path: Path) -> None:
    """A sweep whose start failed on a full disk left its folder and no sweep.json: a new
    start said "sweep swr exists already: continue it with --resume swr", and the resume
    said "no sweep 'swr'"."""
    settings = resolve({"artifacts_dir": str(tmp_path / "a")}, {}, environ={},
                       use_keyring=False)
    (sweep.sweeps_root(settings) / "swr").mkdir(parents=True)

    options = sweep.Options(config=write(tmp_path, GOOD),
                            flags=sweep_config.Overrides(name="swr"))
    with pytest.raises(sweep.SweepError) as err:
        sweep.run_sweep(settings, options, connect=no_runpod)
    assert "exists but holds no sweep.json" in err.value.message
    assert "--resume" not in err.value.render()
    assert err.value.exit_code == 2


def test_a_runs_folder_that_cannot_be_written_is_refused_before_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POD_CYCLE_ARTIFACTS_DIR on a read-only mount: the sweep's folder was made (beside it,
    elsewhere), four trials started and each failed "Read-only file system", and the last
    line sent the operator to `inv runs.show` of runs that never were. /sys stands for a
    folder nobody may write into (root included)."""
    settings = resolve({"artifacts_dir": "/sys/pod-cycle-runs"}, {},
                       environ={"POD_CYCLE_SWEEPS_DIR": str(tmp_path / "sweeps")},
                       use_keyring=False)

    with pytest.raises(sweep.SweepError) as err:
        sweep.run_sweep(settings, sweep.Options(config=write(tmp_path, GOOD)), connect=no_runpod)
    assert err.value.message.startswith("the runs folder /sys/pod-cycle-runs cannot be "
                                        "written (/sys: ")
    assert "POD_CYCLE_ARTIFACTS_DIR" in err.value.remedy
    assert not (tmp_path / "sweeps").exists()


def refusals(tmp_path: Path, settings: Any) -> list[ConfigError]:
    """The refusals of a new sweep and of a resumed one under `settings`, each before the
    sweep talks to RunPod."""
    refused = []
    for options in (sweep.Options(config=write(tmp_path, GOOD)),
                    sweep.Options(resume="earlier")):
        with pytest.raises(ConfigError) as err:
            sweep.run_sweep(settings, options, connect=no_runpod)
        refused.append(err.value)
    return refused


def test_a_sweep_on_clusters_is_refused_before_anything(tmp_path: Path,
                                                        monkeypatch) -> None:
    """RUNPOD_NODES=2 in the shell or .env reached every trial: each became a 2-node cluster,
    priced and guarded as one pod (twice its share of the budget, half its time), never
    paused, and missed by sweep.stop, which said no pod billed while the clusters did. A
    resume with it failed every pod trial for good. Refused, new or resumed, wherever the
    count comes from; the trials' own environment gives none."""
    artifacts = {"artifacts_dir": str(tmp_path / "a")}
    for settings, source in (
            (resolve(artifacts, {}, environ={"RUNPOD_NODES": "2"}, use_keyring=False),
             "RUNPOD_NODES"),
            (resolve(artifacts, {"nodes": 3}, environ={}, use_keyring=False),
             "podcycle.nodes in invoke.yaml")):
        for refused in refusals(tmp_path, settings):
            assert refused.message == (
                f"{settings.nodes} nodes (from {source}): a sweep runs each of its trials on "
                "one pod, not on a cluster")
            assert refused.remedy == (f"unset it ({source}) for the sweep; a cluster run is "
                                      "inv cycle.full-smoke --nodes N")
    assert not sweep.sweeps_root(settings).exists()
    sw, _ = engine(tmp_path / "e")
    monkeypatch.setenv("RUNPOD_NODES", "1")  # harmless for a pod; refused by an old cluster
    assert "RUNPOD_NODES" not in sw.child_environ("eng-t0")


def test_a_sweep_with_a_data_centre_is_refused_before_anything(tmp_path: Path) -> None:
    """RUNPOD_DATA_CENTER (a cluster's data centre) in the shell, .env or invoke.yaml: the
    sweep was made, its name used up, and every trial refused for it ("places a cluster; it
    needs --nodes 2"). Refused before anything, new or resumed, naming where it came from."""
    artifacts = {"artifacts_dir": str(tmp_path / "a")}
    for settings, source, undo in (
            (resolve(artifacts, {}, environ={"RUNPOD_DATA_CENTER": "LOCAL-1"},
                     use_keyring=False), "RUNPOD_DATA_CENTER", "unset RUNPOD_DATA_CENTER"),
            (resolve(artifacts, {"data_center": "LOCAL-1"}, environ={}, use_keyring=False),
             "podcycle.data_center in invoke.yaml",
             "remove podcycle.data_center from invoke.yaml")):
        for refused in refusals(tmp_path, settings):
            assert refused.message == (
                f"--data-center LOCAL-1 (from {source}) places a cluster, and a sweep runs "
                "each of its trials on one pod")
            assert refused.remedy.startswith(f"{undo} for the sweep")
    assert not sweep.sweeps_root(settings).exists()


def test_a_bad_flag_is_refused_naming_the_flag(tmp_path: Path) -> None:
    settings = resolve({"artifacts_dir": str(tmp_path / "a")}, {}, environ={},
                       use_keyring=False)
    options = sweep.Options(config=write(tmp_path, GOOD),
                            flags=sweep_config.Overrides(parallel="0"))
    with pytest.raises(ConfigError) as err:
        sweep.run_sweep(settings, options, connect=None)
    assert err.value.message.startswith("--parallel must be at least 1")
    assert not sweep.sweeps_root(settings).exists()


def test_a_grid_too_large_to_list_is_refused_before_any_folder(tmp_path: Path) -> None:
    """Optuna's GridSampler lists every combination in memory, whatever the trials: a grid
    of 3,000 x 1,000 x 64 values ended in a MemoryError traceback (all the RAM, uncapped),
    after the sweep's folder was made, which then named no sweep."""
    seeds, channels, blocks = (", ".join(map(str, values)) for values in (
        range(3000), range(1, 1001), range(1, 65)))
    huge = f"""
[sweep]
objective = "val_loss"
max_cost = 1.0
max_minutes = 10
[params.seed]
grid = [{seeds}]
[params.channels]
grid = [{channels}]
[params.blocks]
grid = [{blocks}]
"""
    message = refused(tmp_path, huge)
    assert message.endswith(": the grid makes 192,000,000 combinations (3000 x 1000 x 64), "
                            "more than the 10,000 a sweep can hold"), message
    with pytest.raises(ConfigError) as err:
        sweep_config.load(write(tmp_path, huge))
    assert err.value.remedy == ("give fewer values, or make the widest, [params.seed], a "
                                "range (low and high) and set trials")
    settings = resolve({"artifacts_dir": str(tmp_path / "a")}, {}, environ={},
                       use_keyring=False)
    with pytest.raises(ConfigError):
        sweep.run_sweep(settings, sweep.Options(config=write(tmp_path, huge)), connect=None)
    assert not sweep.sweeps_root(settings).exists()


def test_grids_and_distributions_parse_into_optunas_terms(tmp_path: Path) -> None:
    cfg = sweep_config.load(write(tmp_path, """
[sweep]
objective = "val_top1"
trials = 6
dataset = "data/dataset/_smoke_runpod"
[params.lr]
low = 1e-4
high = 1e-2
log = true
[params.blocks]
low = 1
high = 4
[params.channels]
choices = [8, 16]
[params.epochs]
grid = [1, 2]
"""))
    assert cfg.direction == "maximize" and cfg.trials == 6 and not cfg.all_grid
    assert cfg.base == {"dataset": "data/dataset/_smoke_runpod"}
    lr, blocks, channels, epochs = (cfg.params[n] for n in ("lr", "blocks", "channels",
                                                          "epochs"))
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert (blocks.kind, blocks.low, blocks.high) == ("int", 1, 4)
    assert (channels.kind, channels.values) == ("choices", [8, 16])
    assert (epochs.kind, epochs.values) == ("grid", [1, 2])
    # What Optuna's TPE sampler draws stays within each parameter's range and type.
    meta = {"params": [p.as_dict() for p in cfg.params.values()], "seed_sampler": 3}
    import optuna

    study = optuna.create_study(sampler=sweep._sampler(meta))
    for _ in range(5):
        trial = study.ask()
        drawn = {p.name: sweep.suggest(trial, sweep_config.Param.from_dict(d))
                 for p, d in zip(cfg.params.values(), meta["params"], strict=True)}
        assert 1e-4 <= drawn["lr"] <= 1e-2
        assert isinstance(drawn["blocks"], int) and 1 <= drawn["blocks"] <= 4
        assert drawn["channels"] in (8, 16) and drawn["epochs"] in (1, 2)
        study.tell(trial, 0.5)


def test_a_grid_runs_each_combination_once_by_ask_and_tell(tmp_path: Path) -> None:
    import optuna

    cfg = sweep_config.load(write(tmp_path, GOOD))
    assert cfg.all_grid and cfg.grid_size == 4 and cfg.trials is None
    meta = {"params": [p.as_dict() for p in cfg.params.values()]}
    study = optuna.create_study(sampler=sweep._sampler(meta))
    seen = []
    for value in range(4):
        trial = study.ask()
        seen.append(tuple(sweep.suggest(trial, p) for p in cfg.params.values()))
        study.tell(trial, float(value))  # the last one would make GridSampler call stop()
    assert sorted(seen) == [(0.001, 64), (0.001, 128), (0.01, 64), (0.01, 128)]


def test_flags_beat_the_file_and_are_checked_again(tmp_path: Path) -> None:
    cfg = sweep_config.load(write(tmp_path, GOOD))
    flags = sweep_config.check_flags(sweep_config.Overrides(parallel="3", trials="2",
                                                            max_cost="0.5", epochs="2",
                                                            dataset="/data/x"))
    sweep_config.apply(cfg, flags)
    assert (cfg.parallel, cfg.trials, cfg.max_cost) == (3, 2, 0.5)
    assert cfg.base["epochs"] == 2 and cfg.base["dataset"] == "/data/x"
    too_many = sweep_config.load(write(tmp_path, GOOD))
    with pytest.raises(ConfigError) as err:
        sweep_config.apply(too_many, sweep_config.Overrides(trials=5))
    # Given by the flag: the file's `trials` was blamed, which the file does not have.
    assert err.value.message == (f"--trials 5 is more than the 4 combination(s) of "
                                 f"{tmp_path / 'sweep.toml'}'s grid")
    assert err.value.remedy == "use --trials 4 or fewer (or leave it out)"


def test_the_shipped_example_is_a_valid_sweep() -> None:
    cfg = sweep_config.load(ROOT / "config" / "sweep.toml")
    assert cfg.all_grid and cfg.parallel == 2 and (cfg.trials or cfg.grid_size) == 4
    assert cfg.max_cost is not None and cfg.max_minutes is not None
    assert (ROOT / cfg.base["dataset"]).is_dir()


# -- the budget ------------------------------------------------------------------------------
def test_a_trials_share_is_its_price_for_its_time_bound() -> None:
    assert sweep_config.trial_share(0.24, 15) == 0.06
    assert sweep_config.trial_share(0.27, 10) == 0.045
    assert sweep_config.trial_share(2.49, 7) == 0.2905  # rounded up to 1/100 cent
    # A short bound on a cheap GPU costs less than the guard's least --max-cost ($0.01): the
    # worst case is still the price for the time bound (the guard stops the pod there); the
    # pod's guard carries the least it takes. 2 min at $0.24/h reserved $0.0100 for a $0.008
    # trial, and a budget of $0.012 with $0.0022 spent refused a trial that fitted.
    assert sweep_config.trial_share(0.24, 1) == 0.004
    assert sweep_config.trial_share(0.24, 2) == 0.008
    assert sweep_config.may_start(0.012, 0.0022, [], sweep_config.trial_share(0.24, 2))
    assert sweep_config.guard_cost(0.004) == 0.01 and sweep_config.guard_cost(0.06) == 0.06


def test_the_budget_rule_says_which_trials_may_start() -> None:
    share = 0.06
    assert sweep_config.may_start(None, 100.0, [share] * 9, share)  # no budget
    assert sweep_config.may_start(0.12, 0.0, [share], share)  # exactly the budget
    assert not sweep_config.may_start(0.12, 0.0001, [share], share)
    assert not sweep_config.may_start(0.1, 0.0, [share], share)
    # A budget of 2.5 shares, 2 at a time: 2 start; once one ends having cost 0.01, a third
    # fits beside the one still running; once spent reaches 0.04 no trial fits any more.
    budget, running, spent, started = 0.15, [], 0.0, 0
    for _ in range(2):
        assert sweep_config.may_start(budget, spent, running, share)
        running.append(share)
        started += 1
    assert not sweep_config.may_start(budget, spent, running, share)
    running.pop()
    spent += 0.01
    assert sweep_config.may_start(budget, spent, running, share)
    running.append(share)
    running.pop()
    spent += 0.03
    assert not sweep_config.may_start(budget, spent, running, share)
    assert sweep_config.may_start(budget, spent, [], share)
    assert not sweep_config.may_start(budget, spent + 0.06, [], share)


def test_a_trial_carries_its_share_and_parameters_never_the_key(tmp_path: Path) -> None:
    meta = {"base": {"epochs": 1, "blocks": 1, "dataset": str(tmp_path)},
            "gpu": {"id": "NVIDIA RTX A5000", "cloud": "secure", "price_per_hour": 0.27},
            "share": 0.045, "max_minutes": 10.0, "strength_games": 0, "backend": "local"}
    argv = sweep.trial_argv(meta, {"lr": 0.003, "batch_size": 64, "epochs": 2}, resume=False)
    assert argv[0].endswith("/inv") and argv[1] == "cycle.full-smoke"
    joined = " ".join(argv)
    assert "--max-cost 0.0450" in joined and "--max-minutes 10" in joined
    assert "--epochs 2" in joined and f"--dataset-dir {tmp_path}" in joined
    assert "--train-extra-args=--lr=0.003 --blocks=1" in argv
    assert "--gpu-type-id" in argv and "NVIDIA RTX A5000" in argv
    assert "--resume" not in argv
    assert "--resume" in sweep.trial_argv(meta, {}, resume=True)
    assert sweep.trial_env(meta, {"batch_size": 64}) == {"TRAIN_BATCH_SIZE": "64"}
    assert not any("api" in a.lower() for a in argv)
    short = {**meta, "share": 0.004, "max_minutes": 1.0}  # under the guard's least --max-cost
    assert "--max-cost 0.0100" in " ".join(sweep.trial_argv(short, {}, resume=False))


# -- the objective ---------------------------------------------------------------------------
def test_the_objective_comes_from_the_last_epoch_or_the_match() -> None:
    metrics = {"epochs": [{"epoch": 1, "val_loss": 3.2, "val_top1": 0.05},
                          {"epoch": 2, "val_loss": 3.0, "val_top1": 0.08}],
               "final": {"epoch": 2, "val_loss": 3.0, "val_top1": 0.08}}
    assert sweep_config.objective_value("val_loss", metrics, None) == 3.0
    assert sweep_config.objective_value("val_top1", metrics, None) == 0.08
    del metrics["final"]
    assert sweep_config.objective_value("val_loss", metrics, None) == 3.0
    assert sweep_config.objective_value("strength", None, {"score": 0.625}) == 0.625
    # A score the opponent's crashes made ranked first in a sweep: it is no value.
    forfeited = {"score": 1.0, "games": 4, "failures": [
        {"game": n, "termination": "abandoned", "loser": "opponent"} for n in (1, 2, 3, 4)]}
    with pytest.raises(ValueError, match="4 of its 4 strength games were won by the "
                                         "opponent's failure"):
        sweep_config.objective_value("strength", None, forfeited)
    own = {"score": 0.5, "games": 2, "failures": [{"game": 1, "loser": "model"}]}
    assert sweep_config.objective_value("strength", None, own) == 0.5  # its own: play
    # But a 0 made of its own engine's crash in every game measured no play: a sweep named
    # such a trial "best" (every trial crashed alike).
    crashed = {"score": 0.0, "games": 2, "failures": [
        {"game": n, "termination": "abandoned", "loser": "model"} for n in (1, 2)]}
    with pytest.raises(ValueError, match="every one of its 2 strength games ended by its "
                                         "engine's failure"):
        sweep_config.objective_value("strength", None, crashed)
    for objective, m, s in (("val_loss", None, None), ("strength", metrics, None),
                            ("val_loss", {"epochs": [{"val_loss": float("nan")}]}, None)):
        with pytest.raises(ValueError):
            sweep_config.objective_value(objective, m, s)


@pytest.mark.slow  # the smoke training (shared with test_chessbot) trains once per test run
def test_the_trainers_epoch_lines_are_read_as_its_metrics(smoke_training) -> None:
    """The line the sweep follows for pruning is the trainer's own (chessbot.train's log)."""
    log = smoke_training["dir"] / "train.log"
    curve = sweep.epoch_curve(log)
    expected = smoke_training["metrics"]["epochs"]
    assert [row["epoch"] for row in curve] == [row["epoch"] for row in expected]
    for seen, wanted in zip(curve, expected, strict=True):
        assert seen["val_loss"] == pytest.approx(wanted["val_loss"], abs=1e-4)
        assert seen["val_top1"] == pytest.approx(wanted["val_top1"], abs=1e-4)


def test_a_torn_journal_tail_is_cut_and_the_study_reads_again(tmp_path: Path) -> None:
    import optuna

    folder = sweep.SweepFolder(tmp_path, "torn")
    folder.path.mkdir()
    meta = {"name": "torn", "direction": "minimize", "params": [
        {"name": "lr", "kind": "grid", "values": [0.1, 0.2]}]}
    study = sweep.open_study(folder, meta, create=True)
    trial = study.ask()
    trial.suggest_categorical("lr", [0.1, 0.2])
    study.tell(trial, 1.5)
    with open(folder.journal, "ab") as journal:  # a kill -9 in the middle of a write
        journal.write(b'{"op_code": 4, "worker_id": "x", "trial_id": 1, "sta')
    assert sweep.cut_torn_tail(folder.journal)
    again = sweep.open_study(folder, meta, create=False)
    again.tell(again.ask(), 2.0)  # appending after the cut works
    states = [t.state for t in sweep_status.load_trials(folder, meta)]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2
    assert not sweep.cut_torn_tail(folder.journal)
    assert json.loads(folder.journal.read_text().splitlines()[-1])


@pytest.mark.parametrize("damage", [
    b"\xff\xfe not the study's log at all\n",
    b'{"op_code": 999}\n',  # Optuna: AssertionError: Should not reach.
    b"[1, 2]\n",  # TypeError
    b"[" * 100_000 + b"\n",  # RecursionError
], ids=["bytes", "unknown-op", "wrong-shape", "nested"])
def test_a_damaged_study_journal_is_one_refusal_naming_it(tmp_path: Path,
                                                          damage: bytes) -> None:
    """sweep.status, sweep.stop and sweep.run --resume each ended in the traceback of
    Optuna's replay (UnicodeDecodeError, AssertionError, TypeError) on a damaged journal."""
    folder = sweep.SweepFolder(tmp_path, "damaged")
    folder.path.mkdir()
    meta = {"name": "damaged", "direction": "minimize", "params": [
        {"name": "lr", "kind": "grid", "values": [0.1, 0.2]}]}
    study = sweep.open_study(folder, meta, create=True)
    study.tell(study.ask({"lr": optuna_grid([0.1, 0.2])}), 1.5)
    first = folder.journal.read_bytes().splitlines(keepends=True)[0]
    with open(folder.journal, "ab") as journal:  # inside the log, not a torn last line
        journal.write(damage + first)
    for read in (lambda: sweep_status.load_trials(folder, meta),
                 lambda: sweep.open_study(folder, meta, create=False)):
        with pytest.raises(sweep.SweepError) as err:
            read()
        assert err.value.message.startswith(
            f"the sweep's study log {folder.journal} is damaged, so its trials cannot be "
            "read ("), err.value.message
        assert f"move {folder.path} away and run the sweep anew" in err.value.remedy
        assert "\n" not in err.value.message


def test_a_sweep_file_nested_past_pythons_stack_is_not_valid_toml(tmp_path: Path) -> None:
    message = refused(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert message.endswith(": not valid TOML (nested deeper than Python can read)")


def test_a_journal_that_cannot_be_read_is_not_called_damaged(tmp_path: Path,
                                                             monkeypatch) -> None:
    """A journal another user owns (or a failing disk) was reported as damaged, with the
    advice to move a healthy sweep's folder away: the file system's error is what it is."""
    from optuna.storages import journal

    folder = sweep.SweepFolder(tmp_path, "owned")
    folder.path.mkdir()

    def refused_open(self: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(folder.journal))

    monkeypatch.setattr(journal.JournalFileBackend, "__init__", refused_open)
    with pytest.raises(PermissionError):
        sweep.journal_storage(folder)


def optuna_grid(values: list) -> Any:
    import optuna

    return optuna.distributions.CategoricalDistribution(values)


# -- the sweep's decisions, without pods -----------------------------------------------------
# A trial's cycle is a child process; here a small Python process stands in for it (no pod,
# no inv), so pruning, Ctrl-C and resume's rules are checked in a second. It takes SIGTERM as
# the cycle takes Ctrl-C, and ignores SIGINT as every trial of a sweep started with `&` by a
# script does: the sweep must interrupt its trials by a signal they take all the same.
FAKE_CYCLE = ("import signal, sys\n"
              "from tests.signal_wait import until_a_signal\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
              "print('ready', flush=True)\n"
              "until_a_signal()\n")


def engine(tmp_path: Path, *, prune: bool = False, lrs=(0.1, 0.2, 0.3, 0.4)):
    folder = sweep.SweepFolder(tmp_path / "sweeps", "eng")
    folder.path.mkdir(parents=True)
    meta = {"name": "eng", "direction": "minimize", "objective": "val_loss", "prune": prune,
            "prune_startup_trials": 1, "prune_warmup_epochs": 0, "trials": len(lrs),
            "parallel": 2, "params": [{"name": "lr", "kind": "grid", "values": list(lrs)}],
            "artifacts_dir": str(tmp_path / "artifacts"), "base": {}, "share": 0.05,
            "budget": None, "max_minutes": 10, "gpu": {"id": "x", "price_per_hour": 0.3},
            "status": "running"}
    folder.save_meta(meta)
    study = sweep.open_study(folder, meta, create=True)
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)
    said: list[str] = []
    return sweep.Sweep(folder, meta, study, settings, said.append), said


def fake_cycle(sw, number: int, trial_id: int):
    import subprocess
    import sys

    log = sw.folder.trial_log(number)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_CYCLE], stdout=out, cwd=ROOT)
    item = sweep.Running(number, trial_id, f"eng-t{number}", 0.05, 0.0, log, proc=proc)
    sw.running[number] = item
    eventually(lambda: "ready" in log.read_text(), what="the stand-in cycle to start")
    return item


def test_a_key_given_to_the_sweep_reaches_its_trials_in_their_environment(
        tmp_path: Path) -> None:
    """sweep.run --api-key KEY: each `inv` the sweep starts for a trial (its cycle, the stop
    of its parked pod) gets the key in its environment, never on its command line; a key
    from the environment is inherited as it is, not copied."""
    sw, _ = engine(tmp_path)
    key = "rpa_SWEEPFLAGKEY0123456789AB"
    sw.settings = resolve({"artifacts_dir": str(tmp_path / "artifacts"), "api_key": key}, {},
                          environ={}, use_keyring=False)
    env = sw.child_environ("eng-t0", {"TRAIN_BATCH_SIZE": "64"})
    assert env["RUNPOD_API_KEY"] == key and env["RUNPOD_CYCLE_RUN_ID"] == "eng-t0"
    assert env["TRAIN_BATCH_SIZE"] == "64"
    assert env["POD_CYCLE_ARTIFACTS_DIR"] == str(sw.artifacts)
    argv = sweep.trial_argv(sw.meta, {"lr": 0.1}, resume=False)
    assert not any(key in word for word in argv)
    sw.settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {},
                          environ={"RUNPOD_API_KEY": key}, use_keyring=False)
    assert sw.child_environ("eng-t0").get("RUNPOD_API_KEY") == os.environ.get("RUNPOD_API_KEY")


def ask(sw):
    trial = sw.study.ask()
    sweep.suggest(trial, sweep_config.Param.from_dict(sw.meta["params"][0]))
    return trial


def test_a_poor_trial_is_pruned_by_interrupting_its_cycle(tmp_path: Path) -> None:
    import optuna

    sw, said = engine(tmp_path, prune=True)
    first = ask(sw)
    first.report(1.0, 1)
    sw.study.tell(first, 1.0)
    second = ask(sw)
    item = fake_cycle(sw, second.number, second._trial_id)
    sw.on_epoch(second.number, "1", "3", "5.0", "0.01")  # worse than the median (1.0)
    assert item.prune_requested
    assert item.proc.wait(timeout=30) == 130, "the cycle was interrupted (it stops its pod)"
    sw.on_exit(second.number, 130)
    trials = sw.trials()
    assert trials[1].state == optuna.trial.TrialState.PRUNED
    assert trials[1].intermediate_values == {1: 5.0}
    assert any(f"trial {second.number}: pruned at epoch 1" in line for line in said)
    # A trial at or under the median is left alone.
    third = ask(sw)
    kept = fake_cycle(sw, third.number, third._trial_id)
    sw.on_epoch(third.number, "1", "3", "0.5", "0.2")
    assert not kept.prune_requested and kept.proc.poll() is None
    sw.signal(kept)
    kept.proc.wait(timeout=30)


def test_ctrl_c_interrupts_every_trial_and_leaves_them_to_resume(tmp_path: Path) -> None:
    import threading

    import optuna

    sw, said = engine(tmp_path)
    items = []
    for _ in range(2):
        trial = ask(sw)
        items.append(fake_cycle(sw, trial.number, trial._trial_id))
        threading.Thread(target=sw.follow, args=(items[-1], 0), daemon=True).start()
    sw.stopping = True
    assert sw.stop_all() == "stopped"
    assert all(item.proc.returncode == 130 for item in items)
    trials = sw.trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.RUNNING] * 2
    assert all(t.user_attrs["interrupted"] for t in trials)
    assert any("--resume continues its run" in line for line in said)
    # --resume continues both runs (as --parallel 2 allows), running again, not stopped.
    launched = []
    sw.launch = launching(sw, lambda number, params, resume_run: launched.append(number))
    sw.stopping = False
    sw.settle_running()
    sw.fill()
    assert sorted(launched) == [0, 1]
    assert not any(t.user_attrs["interrupted"] for t in sw.trials())


def launching(sw, record):
    """A stand-in for Sweep.launch (a trial's cycle cannot run here): records the launch and
    takes the trial's slot, as a started cycle does."""
    import types

    def launch(number, trial_id, params, *, resume_run, prior_cost):
        record(number, params, resume_run)
        sw.running[number] = types.SimpleNamespace(share=0.0, prior_cost=prior_cost,
                                                   adopted=False)

    return launch


def write_run(tmp_path: Path, run_id: str, *, finished: bool, val_loss: float = 2.5) -> None:
    from podcycle.runs import WORK_STEPS, RunState, StepRecord

    state = RunState(run_id)
    if finished:
        state.steps = {name: StepRecord("done") for name in WORK_STEPS}
        state.outcome = "ok"
    else:
        state.steps = {"start": StepRecord("done"), "train": StepRecord("running")}
    run = tmp_path / "artifacts" / run_id
    (run / "collected" / "run_artifacts").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps(state.to_json()))
    if finished:
        (run / "collected" / "run_artifacts" / "metrics.json").write_text(json.dumps(
            {"epochs": [{"epoch": 1, "val_loss": val_loss, "val_top1": 0.1}]}))


def test_resume_settles_each_trial_a_dead_sweep_left_running(tmp_path: Path) -> None:
    """Finished run: its value. Pruning asked: pruned. A run still driven: waited for, then
    continued when it ended unfinished. Any other run: continued (--resume when its folder
    exists)."""
    import fcntl
    import os

    import optuna

    sw, said = engine(tmp_path, lrs=(0.1, 0.2, 0.3, 0.4, 0.5))
    trials = [ask(sw) for _ in range(5)]
    for trial in trials:
        sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id",
                                              f"eng-t{trial.number}")
    write_run(tmp_path, "eng-t0", finished=True, val_loss=2.5)
    write_run(tmp_path, "eng-t1", finished=False)
    sw.study._storage.set_trial_user_attr(trials[2]._trial_id, "prune_requested", True)
    write_run(tmp_path, "eng-t4", finished=False)  # t3 never made its run folder
    driven = RunFolder(tmp_path / "artifacts", "eng-t4")
    lock = os.open(driven.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a cycle that outlived the sweep holds its run
    launched = []
    sw.launch = launching(sw, lambda number, params, resume_run: launched.append(
        (number, resume_run, params)))
    sw.meta["parallel"] = 3  # the adopted cycle's slot, and one for each run to continue
    try:
        sw.settle_running()
        sw.fill()
        assert sorted(launched) == [(1, True, {"lr": trials[1].params["lr"]}),
                                    (3, False, {"lr": trials[3].params["lr"]})]
        assert sorted(sw.running) == [1, 3, 4] and sw.running[4].adopted  # 3 at a time
    finally:
        os.close(lock)  # that cycle ends, its run unfinished
    sw.wait_event()
    assert (4, True, {"lr": trials[4].params["lr"]}) in launched
    states = {t.number: t.state for t in sw.trials()}
    assert states[0] == optuna.trial.TrialState.COMPLETE and sw.trials()[0].value == 2.5
    assert states[2] == optuna.trial.TrialState.PRUNED
    assert states[1] == states[3] == states[4] == optuna.trial.TrialState.RUNNING
    assert any("its cycle is still running" in line for line in said)


def test_a_trial_no_process_runs_is_said_stopped_not_running(tmp_path: Path) -> None:
    """A sweep killed (-9), or ended on its budget with a trial left to continue, marks no
    trial interrupted: status said RUNNING for trials nothing ran. Only a live sweep, or a
    cycle still driving the trial's run, makes a trial RUNNING."""
    import fcntl
    import os

    sw, _ = engine(tmp_path)
    trials = [ask(sw) for _ in range(2)]
    for trial in trials:
        sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id",
                                              f"eng-t{trial.number}")
        write_run(tmp_path, f"eng-t{trial.number}", finished=False)

    def states() -> list[str]:
        shown = sweep_status.status(sw.settings, "eng", root=sw.folder.path.parent)
        return [t["state"] for t in shown["trials"]]

    assert states() == ["STOPPED", "STOPPED"]
    driven = RunFolder(tmp_path / "artifacts", "eng-t1")
    lock = os.open(driven.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a cycle that outlived the sweep still runs t1
    try:
        assert states() == ["STOPPED", "RUNNING"]
    finally:
        os.close(lock)
    sw.folder.lock()  # a live sweep runs them both
    try:
        assert states() == ["RUNNING", "RUNNING"]
    finally:
        sw.folder.unlock()


def test_sweep_stop_looks_for_the_trials_pods_where_they_were_started(tmp_path: Path,
                                                                       monkeypatch) -> None:
    """sweep.stop connected to the sweep's recorded backend, else this command's: a sweep
    whose trials ran on RunPod, stopped without the key, looked on the local RunPod (starting
    one), said "no pod of its trials is billing" and left them billing."""
    from podcycle import backend as backend_mod
    from podcycle.runs import RunState

    sw, _ = engine(tmp_path)
    trial = ask(sw)
    sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id", "eng-t0")
    write_run(tmp_path, "eng-t0", finished=False)
    state_path = tmp_path / "artifacts" / "eng-t0" / "state.json"
    state = RunState.from_json(json.loads(state_path.read_text()))
    state.backend = "runpod"
    state_path.write_text(json.dumps(state.to_json()))

    def connect(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("connected to the wrong backend")

    monkeypatch.setattr(backend_mod, "connect", connect)
    with pytest.raises(ConfigError) as refused:
        sweep_status.stop(sw.settings, "eng")
    assert refused.value.message.startswith("sweep eng's trial run eng-t0 was started on "
                                            "RunPod, but this command would use the local "
                                            "RunPod (no RunPod API key was found)")
    assert "give the key the run used" in refused.value.remedy


def test_sweep_stop_lists_the_pods_once_for_all_its_trials(tmp_path: Path,
                                                         monkeypatch) -> None:
    """sweep.stop listed every pod of the account once per trial: 38 s in silence for 1,000
    trials beside 1,000 pods, and as many rate-limited calls on RunPod. One listing now
    serves every trial; only the trials' billing pods are stopped."""
    from types import SimpleNamespace

    from podcycle import backend as backend_mod
    from podcycle.runpod.models import Pod
    from tests.test_cycle_steps import pod_json

    sw, _ = engine(tmp_path)
    for number in range(4):
        trial = ask(sw)
        sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id", f"eng-t{number}")
        write_run(tmp_path, f"eng-t{number}", finished=number != 1)
    listings: list[int] = []
    pods = [Pod.from_api(pod_json("p1", "RUNNING", "pod-cycle-eng-t1")),
            Pod.from_api(pod_json("p3", "EXITED", "pod-cycle-eng-t3")),
            Pod.from_api(pod_json("px", "RUNNING", "pod-cycle-other"))]

    class Client:
        def list_pods(self) -> list[Pod]:
            listings.append(len(pods))
            return pods

    monkeypatch.setattr(backend_mod, "connect",
                        lambda *args, **kwargs: SimpleNamespace(client=Client()))
    stops: list[tuple[str, str]] = []
    monkeypatch.setattr(sweep_status, "_stop_run_pod", lambda settings, run_id, pod_id, *_:
                        stops.append((run_id, pod_id)) or "stopped")
    stopped = sweep_status.stop(sw.settings, "eng", announce=lambda _: None)
    assert listings == [3]
    assert stops == [("eng-t1", "p1")]
    assert [item["pod_id"] for item in stopped if item["what"] == "pod"] == ["p1"]


def test_sweep_stop_waits_for_a_trials_create_its_killed_cycle_left(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """Hunt: the sweep's process group killed (-9) while two trials' creates were in flight.
    sweep.stop listed the pods once, saw none yet, said "no pod of its trials is billing",
    and both pods, made seconds later, billed on. A trial whose run has a create outstanding
    is now stopped through the cycle's stop, which waits for that create (as cycle.stop
    does), and what it stops is said."""
    import time
    from types import SimpleNamespace

    from podcycle import backend as backend_mod
    from podcycle.runs import RunState, StepRecord

    sw, _ = engine(tmp_path)
    for number in range(2):
        trial = ask(sw)
        sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id", f"eng-t{number}")
        state = RunState(f"eng-t{number}", create_sent_at=time.time() if number else None,
                         steps={"start": StepRecord("running")})
        (tmp_path / "artifacts" / f"eng-t{number}").mkdir(parents=True)
        (tmp_path / "artifacts" / f"eng-t{number}" / "state.json").write_text(
            json.dumps(state.to_json()))

    class Client:
        def list_pods(self) -> list:
            return []  # the create not answered yet

    monkeypatch.setattr(backend_mod, "connect",
                        lambda *args, **kwargs: SimpleNamespace(client=Client()))
    awaited: list[str] = []
    monkeypatch.setattr(sweep_status, "_stop_a_killed_create", lambda settings, run_id, _: (
        awaited.append(run_id) or {"pod_id": "p9", "outcome": "stopped"}))
    said: list[str] = []
    stopped = sweep_status.stop(sw.settings, "eng", announce=said.append)
    assert awaited == ["eng-t1"]
    assert {"what": "pod", "run_id": "eng-t1", "pod_id": "p9", "outcome": "stopped"} in stopped
    assert not any("no pod of its trials is billing" in line for line in said), said
    # sweep.status showed "-" for that pod while it billed.
    rows = sweep_status.status(sw.settings, "eng")["trials"]
    assert [(row["pod"] or {}).get("state") for row in rows] == [
        None, "create sent (may be billing)"]
    # ...and the sweep's report "no pod" (hunt, stop 54: the pod landed seconds later).
    from podcycle import sweep_report

    report = sweep_report.write(sw.folder, sw.folder.meta(), sw.trials()).read_text()
    assert "| 1 | `eng-t1` | (not yet known) | - | create sent (may be billing) | - |" in report
    assert "**1 pod(s) not stopped**: (not yet known) (inv sweep.stop eng)" in report
    # Second read: one trial that cannot be stopped (a --resume took its run meanwhile) ended
    # sweep.stop before the others' pods were stopped. Each is tried; the failure is said.
    from podcycle.runs import RunBusy

    trial = ask(sw)
    sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id", "eng-t2")
    state = RunState("eng-t2", create_sent_at=time.time(), steps={"start": StepRecord("running")})
    (tmp_path / "artifacts" / "eng-t2").mkdir(parents=True)
    (tmp_path / "artifacts" / "eng-t2" / "state.json").write_text(json.dumps(state.to_json()))

    def busy_then_stopped(settings, run_id, _):
        if run_id == "eng-t1":
            raise RunBusy("run eng-t1 is driven by another process (pid 1)", "wait for it")
        awaited.append(run_id)
        return {"pod_id": "p8", "outcome": "stopped"}

    awaited.clear()
    said.clear()
    monkeypatch.setattr(sweep_status, "_stop_a_killed_create", busy_then_stopped)
    from podcycle.pods import StopFailed

    with pytest.raises(StopFailed) as failed:
        sweep_status.stop(sw.settings, "eng", announce=said.append)
    assert awaited == ["eng-t2"]  # the next trial was stopped all the same
    assert failed.value.message == ("sweep eng: could not stop the pods of 1 trial(s), which "
                                    "may still bill: eng-t1")
    assert "run eng-t1: not stopped: run eng-t1 is driven by another process (pid 1)" in said


def test_a_resume_refuses_a_budget_or_trial_count_that_would_drop_its_trials(
        tmp_path: Path) -> None:
    """--resume --max-cost 0.01 under a $0.05 share was saved and ended the sweep at once
    ("budget reached", exit 0), and every later plain --resume the same way; --trials 1 with
    two trials started continued one and left the other for good, saying "finished"."""
    sw, _ = engine(tmp_path)
    for _ in range(2):
        ask(sw)  # two trials started, interrupted

    def resume(**flags: str) -> ConfigError:
        with pytest.raises(ConfigError) as err:
            sweep.run_sweep(sw.settings, sweep.Options(
                resume="eng", flags=sweep_config.Overrides(**flags)), connect=no_runpod)
        return err.value

    low = resume(max_cost="0.01")
    assert low.message == ("--max-cost 0.01 is less than one trial's worst case $0.0500 "
                           "(sweep eng's share)")
    few = resume(trials="1")
    assert few.message == "--trials 1 is fewer than the 2 trial(s) sweep eng has started"
    assert "never dropped" in few.remedy
    assert sw.folder.meta()["budget"] is None and sw.folder.meta()["trials"] == 4  # unsaved


def test_a_crashed_sweep_writes_its_report(tmp_path: Path, monkeypatch) -> None:
    """The report after a trial may wait (report_due); a sweep that crashes writes it as it
    ends, with its status, so it never shows an older state than the sweep's."""
    sw, _ = engine(tmp_path)
    ask(sw)

    def drive(self: Any) -> str:
        raise RuntimeError("the loop broke")

    monkeypatch.setattr(sweep.Sweep, "drive", drive)
    with pytest.raises(RuntimeError):
        sweep.run_sweep(sw.settings, sweep.Options(resume="eng"), connect=no_runpod)
    assert "- status: crashed" in sw.folder.report.read_text()


def test_a_second_ctrl_c_while_a_stopped_sweep_writes_its_report_keeps_the_resume_line(
        tmp_path: Path, monkeypatch) -> None:
    """Hunt: Ctrl-C pressed again while an interrupted sweep, its trials stopped, wrote its
    record and report ended it with "interrupted: the command stopped before it finished",
    without `continue with inv sweep.run --resume NAME`. The wrap-up takes no second signal."""
    import signal

    sw, _ = engine(tmp_path)
    ask(sw)
    monkeypatch.setattr(sweep.Sweep, "drive", lambda self: "stopped")
    writing = sweep.Sweep.write_report

    def write_report(self: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # the second Ctrl-C, as Python takes it
        writing(self, **kwargs)

    monkeypatch.setattr(sweep.Sweep, "write_report", write_report)
    with pytest.raises(KeyboardInterrupt) as interrupted:  # any: a bare one fails, not stops
        sweep.run_sweep(sw.settings, sweep.Options(resume="eng"), connect=no_runpod)
    assert isinstance(interrupted.value, sweep.SweepInterrupted), repr(interrupted.value)
    assert "- status: stopped" in sw.folder.report.read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_strength_opponent_no_trial_could_play_is_refused_before_anything(
        tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    settings = resolve({"artifacts_dir": str(artifacts),
                        "dataset_dir": str(ROOT / "data" / "dataset" / "_smoke_runpod")}, {},
                       environ={}, use_keyring=False)
    path = write(tmp_path, GOOD.replace(
        'objective = "val_loss"', 'objective = "strength"\nstrength_games = 4\n'
        'strength_opponent = "stockfsh:elo=1400"'))

    with pytest.raises(ConfigError) as err:
        sweep.run_sweep(settings, sweep.Options(config=path), connect=no_runpod)
    assert err.value.message == (f"{path}: [sweep] strength_opponent 'stockfsh:elo=1400' is "
                                 "not an opponent")
    assert not sweep.sweeps_root(settings).exists()


def test_a_sweep_whose_every_trial_failed_ends_non_zero() -> None:
    def result(*states: str) -> dict:
        return {"name": "s1", "report": "/x/report.md",
                "trials": [{"state": state} for state in states]}

    with pytest.raises(sweep.SweepError) as err:
        sweep.check_some_trial_ended_well(result("FAIL", "FAIL"), "finished")
    assert err.value.message == ("sweep s1 finished, but every one of its 2 trial(s) failed: "
                                 "there is no best")
    assert "/x/report.md" in err.value.remedy
    for fine in (result("FAIL", "COMPLETE"), result("PRUNED", "FAIL"), result()):
        sweep.check_some_trial_ended_well(fine, "finished")


@pytest.mark.parametrize("where", ["flag", "file", "params", "setting"])
def test_a_missing_dataset_is_blamed_on_where_it_came_from(tmp_path: Path, where: str) -> None:
    missing = str(tmp_path / "missing")
    environ = {"RUNPOD_DATASET_DIR": missing} if where == "setting" else {}
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ=environ,
                       use_keyring=False)
    text = {"file": GOOD.replace("epochs = 1", f'epochs = 1\ndataset = "{missing}"'),
            "params": GOOD + f'[params.dataset]\ngrid = ["{missing}"]\n'}.get(where, GOOD)
    path = write(tmp_path, text)
    flags = sweep_config.Overrides(dataset=missing if where == "flag" else None)

    with pytest.raises(ConfigError) as err:
        sweep.run_sweep(settings, sweep.Options(config=path, flags=flags), connect=no_runpod)
    origin = {"flag": "--dataset-dir", "file": f"{path}: [sweep] dataset",
              "params": f"{path}: [params.dataset]", "setting": "RUNPOD_DATASET_DIR"}[where]
    assert err.value.message == f"dataset folder {missing!r} does not exist (from {origin})"


@pytest.mark.parametrize("text, wrong", [
    ("[]", "the whole file"),
    ('{"name": 5, "objective": "val_loss", "direction": "minimize", "trials": "two", '
     '"parallel": 1, "params": [], "status": "running", "artifacts_dir": "/a"}', "name, trials"),
    # A budget as text was sweep.status's ValueError traceback (its figure is formatted).
    ('{"name": "odd", "objective": "val_loss", "direction": "minimize", "trials": 2, '
     '"parallel": 1, "params": [], "status": "running", "artifacts_dir": "/a", '
     '"budget": "5", "share": true}', "budget, share"),
])
def test_a_sweep_record_of_the_wrong_shape_is_refused_in_one_line(tmp_path: Path, text: str,
                                                                  wrong: str) -> None:
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)
    folder = sweep.SweepFolder(sweep.sweeps_root(settings), "odd")
    folder.path.mkdir(parents=True)
    folder.meta_path.write_text(text)
    for call in (lambda: sweep_status.status(settings, "odd"),
                 lambda: sweep_status.stop(settings, "odd")):
        with pytest.raises(sweep.SweepError) as refused:
            call()
        assert refused.value.message == (f"{folder.meta_path} is not a sweep's record (JSON "
                                         f"of the wrong shape: {wrong})")


# -- starting trials: signals, --parallel and the budget -------------------------------------
class Filling(sweep.Sweep):
    """The sweep's filling loop alone (its trials' cycles cannot run in process): starting a
    trial records it; `on_start` plays what happens meanwhile (a signal)."""

    def __init__(self, *, parallel: int, trials: int, budget: float | None = None,
                 share: float = 0.0, to_continue: list[tuple[int, float]] = ()) -> None:
        self.meta = {"parallel": parallel, "trials": trials, "budget": budget, "share": share}
        self.running, self.stopping, self.waiting_said = {}, False, False
        self.to_continue = list(to_continue)  # (number, the prior cost standing for its run)
        self.parked: set[int] = set()
        self.parked_runs: list[int] = []
        self.started: list[str] = []
        self.said: list[str] = []
        self.on_start = lambda: None

    def say(self, text: str) -> None:
        self.said.append(text)

    def remaining(self) -> int:
        return self.meta["trials"] - len(self.running)

    def spent(self) -> float:
        return 0.0

    def running_worst(self) -> list[float]:
        return list(self.running.values())

    def trial(self, number: int) -> int:
        return number

    def park(self, number: int, run: float) -> None:
        self.parked_runs.append(number)  # its pod stopped (inv cycle.stop) while it waits

    def start_new(self) -> None:
        self.running[100 + len(self.started)] = self.meta["share"]
        self.started.append("new")
        self.on_start()

    def continue_run(self, trial: int, run: float) -> None:
        self.running[trial] = self.meta["share"] + run
        self.started.append(f"continued {trial}")
        self.on_start()


def test_a_signal_stops_the_filling_at_once(monkeypatch) -> None:
    """Ctrl-C (or a CI's SIGTERM) while a sweep started its trials: the loop filled every slot
    before it looked at the signal, and 180 pods were made after a SIGTERM."""
    filling = Filling(parallel=16, trials=16)

    def signal_arrives() -> None:
        filling.stopping = True  # what the sweep's signal handler does

    filling.on_start = signal_arrives
    assert filling.fill() is None
    assert filling.started == ["new"]


def test_a_resumed_sweep_continues_its_trials_within_parallel_and_the_budget(
        monkeypatch) -> None:
    """--resume restarted every interrupted trial at once: 16 cycles under --parallel 1, and
    $0.08 of pods under a $0.04 budget."""
    monkeypatch.setattr(sweep, "run_cost", lambda run: run)
    one_at_a_time = Filling(parallel=1, trials=3, to_continue=[(0, 0.0), (1, 0.0)])
    one_at_a_time.fill()
    assert one_at_a_time.started == ["continued 0"]
    # The one that waits has its pod stopped meanwhile: it billed outside --parallel.
    assert one_at_a_time.parked_runs == [1]
    one_at_a_time.fill()
    assert one_at_a_time.parked_runs == [1]  # once
    within = Filling(parallel=2, trials=2, budget=0.05, share=0.04,
                     to_continue=[(0, 0.005), (1, 0.004)])
    assert within.fill() is None
    assert within.started == ["continued 0"]  # 0.045 running: the next one waits
    # Said once each: the continued run's cost is in the spent, its share on top (a message
    # of "worst case $0.0440 ... $0.0040 spent" counted the $0.0040 twice).
    assert within.said[-1] == ("budget: the next trial (its share $0.0400 on top of the "
                               "$0.0040 its run cost, counted as spent) waits for a running "
                               "one to end: $0.0040 spent + $0.0450 running of $0.0500")
    over = Filling(parallel=2, trials=2, budget=0.04, share=0.04,
                   to_continue=[(0, 0.0077), (1, 0.0077)])
    assert over.fill() == "budget reached" and over.started == []
    assert "2 of them interrupted" in over.said[-1] and over.parked_runs == [0, 1]


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_resumed_sweep_counts_what_every_waiting_run_cost(monkeypatch, parallel) -> None:
    """Two interrupted trials that cost $0.04 each, a $0.06 share, a $0.12 budget: the
    continued one was checked against its own cost only (0.04 + 0.06 <= 0.12), and the other
    one's $0.04 was forgotten: $0.14 committed under $0.12 (sweep.status counted it)."""
    monkeypatch.setattr(sweep, "run_cost", lambda run: run)
    resumed = Filling(parallel=parallel, trials=3, budget=0.12, share=0.06,
                      to_continue=[(0, 0.04), (1, 0.04)])
    assert resumed.fill() == "budget reached" and resumed.started == []
    assert resumed.said[-1].startswith("budget reached: $0.0800 spent + $0.0000 running of "
                                       "$0.1200; 3 trial(s) not started (2 of them")
    fits = Filling(parallel=parallel, trials=3, budget=0.14, share=0.06,
                   to_continue=[(0, 0.04), (1, 0.04)])
    fits.fill()
    assert fits.started == ["continued 0"]  # 0.08 + 0.06: the second waits (0.14 + 0.06)


def test_a_signal_before_the_waiting_trials_were_parked_still_stops_their_pods(
        monkeypatch) -> None:
    """A resumed sweep's trials that wait to continue have their pods stopped by fill; a
    SIGTERM that came first (fill parks no more once one came) left them billing, and the
    sweep said every trial's pod was stopped."""
    monkeypatch.setattr(sweep, "run_cost", lambda run: run)
    filling = Filling(parallel=1, trials=3, to_continue=[(0, 0.0), (1, 0.0)])
    filling.stopping = True
    filling.fill()
    assert filling.parked_runs == []
    assert filling.stop_all() == "stopped"
    assert filling.parked_runs == [0, 1]
    parked_once = Filling(parallel=1, trials=3, to_continue=[(0, 0.0), (1, 0.0)])
    parked_once.fill()  # 0 continues (a running trial: the signal stops it), 1 is parked
    parked_once.running.clear()
    parked_once.stop_all()
    assert parked_once.parked_runs == [1]  # once


def test_a_pod_still_booting_may_bill_and_is_said_so() -> None:
    """A host killed while a trial's pod booted (minutes of image pull on RunPod) left a
    record with neither running_since (set once SSH answers) nor stopped_at: the resumed
    sweep did not park it, and its report said every pod was stopped."""
    from podcycle.runs import ClusterRecord, PodRecord, RunState

    booting = PodRecord(id="p1", created_at=1.0)
    running = PodRecord(id="p1", created_at=1.0, running_since=2.0)
    stopped = PodRecord(id="p1", created_at=1.0, running_since=2.0)
    stopped.record_stop("stopped", 3.0)
    failed = PodRecord(id="p1", running_since=2.0)
    failed.record_stop("stopped", 3.0)
    failed.stop_failed = True
    gone = PodRecord(id="p1", running_since=2.0)  # pod.terminate by hand (5c0d950)
    gone.record_stop("terminated", 3.0)
    gone.terminated_at = 3.0
    said = {name: sweep_status.pod_state(record) for name, record in (
        ("booting", booting), ("running", running), ("stopped", stopped), ("failed", failed),
        ("gone", gone))}
    assert said == {"booting": "starting (may be billing)", "running": "running",
                    "stopped": "stopped", "failed": "STOP FAILED (may be billing)",
                    "gone": "terminated"}
    # A terminated pod bills no more: no "POD STILL RUNNING" (exit 4) for it.
    rows = [{"number": n, "pod": {"id": "p1", "state": said[name]}}
            for n, name in enumerate(("stopped", "gone", "failed"))]
    assert sweep_status.billing_trials({"trials": rows}) == [
        "trial 2 (pod p1: STOP FAILED (may be billing))"]

    def state(pod: PodRecord | None, cluster: ClusterRecord | None = None) -> RunState:
        run = RunState(run_id="r1")
        run.pod, run.cluster = pod, cluster
        return run

    assert [state(pod).may_bill for pod in (booting, running, stopped, failed)] \
        == [True, True, False, True]
    assert not state(None).may_bill
    live, gone = ClusterRecord(id="c1"), ClusterRecord(id="c1", deleted_at=5.0)
    assert state(stopped, live).may_bill
    assert not state(booting, gone).may_bill


def test_a_dataset_that_is_a_file_twice_listed_or_invalid_is_said_as_such(
        tmp_path: Path) -> None:
    """A file given as a dataset was 'does not exist'; the same folder twice in a grid
    ('data/x' and './data/x') ran two paid trials of it; an invalid one's remedy named
    --dataset-dir, though the folder came from the file."""
    from podcycle.errors import DatasetError

    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)

    def refused(grid: str, error: type = ConfigError) -> tuple:
        path = write(tmp_path, GOOD + f"[params.dataset]\ngrid = [{grid}]\n")
        with pytest.raises(error) as err:
            sweep.run_sweep(settings, sweep.Options(config=path), connect=no_runpod)
        return err.value, f"{path}: [params.dataset]"

    afile = tmp_path / "afile"
    afile.write_text("x\n")
    error, origin = refused(f'"{afile}"')
    assert error.message == f"dataset folder {str(afile)!r} is a file, not a folder (from {origin})"
    smoke = ROOT / "data" / "dataset" / "_smoke_runpod"
    again = f"{smoke.parent}/./{smoke.name}"
    error, origin = refused(f'"{smoke}", "{again}"')
    assert error.message.endswith("are the same folder") and error.remedy == "list each " \
        "dataset once"
    empty = tmp_path / "empty"
    empty.mkdir()
    error, origin = refused(f'"{empty}"', DatasetError)
    assert error.message.endswith(f"(from {origin})") and "--dataset-dir" not in error.remedy
    # Hunt: the grid was checked sorted, so ["/nonexistent", EMPTY] named EMPTY (exit 3),
    # not the first bad entry of the file.
    error, origin = refused(f'"{tmp_path / "zz-missing"}", "{empty}"')
    assert error.message.startswith(f"dataset folder {str(tmp_path / 'zz-missing')!r} does "
                                    "not exist")


# A cycle of run argv[2] in another terminal: it holds the run until its stdin closes.
HOLDER = ("import sys\nfrom pathlib import Path\nfrom podcycle.runs import RunFolder\n"
          "run = RunFolder(Path(sys.argv[1]), sys.argv[2])\n"
          "run.path.mkdir(parents=True, exist_ok=True)\nrun.save()\nrun.lock()\n"
          "print('locked', flush=True)\nsys.stdin.read()\n")


def test_a_trial_whose_run_another_process_took_first_is_waited_for_not_failed(
        tmp_path: Path) -> None:
    """`sweep.run --resume` continued a trial while a `cycle.full-smoke --resume` of its run
    began in another terminal. That cycle took the run first, the trial's own exited 5 (in
    use by another process), and the trial failed for good, though its run then finished.
    The other cycle is now the trial's, waited for as one that outlived a sweep is."""
    import subprocess
    import sys

    sw, said = engine(tmp_path)
    trial = ask(sw)
    sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id", "eng-t0")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, sw.meta["artifacts_dir"],
                               "eng-t0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = subprocess.run([sys.executable, "-c", "raise SystemExit(5)"])
        log = sw.folder.trial_log(0)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("error: run eng-t0 is in use by another process\n")
        sw.running[0] = sweep.Running(0, trial._trial_id, "eng-t0", 0.05, 0.0, log,
                                      proc=refused)  # type: ignore[arg-type]
        sw.on_exit(0, refused.returncode)
        assert sw.trial(0).state.name == "RUNNING", said
        assert sw.running[0].adopted and sw.running[0].pid == holder.pid
        assert any(f"trial 0 (run eng-t0): its cycle is still running (pid {holder.pid}): "
                   "waiting for it" in line for line in said), said
        # A Ctrl-C of the sweep (or sweep.stop) cannot end a cycle it did not start: it
        # waited for that training to end. It leaves the trial to that process.
        sw.stopping = True
        assert sw.stop_all() == "stopped" and holder.poll() is None
        assert sw.trial(0).user_attrs.get("interrupted") is True
        assert any(f"trial 0 (run eng-t0) is driven by another process (pid {holder.pid}), "
                   "not by this sweep: left to it" in line for line in said), said
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_the_report_after_a_trial_waits_four_times_its_writing_time(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """The report after each trial reads every trial: over a long sweep it took seconds a
    trial (8.9 s at 1,000 trials), on the loop that refills the slots. After a trial it is
    now written once 4x the last writing time has gone by (the loop writes one that waited
    once it is due); the sweep's end always writes."""
    from podcycle import sweep_report

    sw, _ = engine(tmp_path)
    now = [100.0]
    written: list[float] = []

    def write(folder: Any, meta: Any, trials: Any) -> Path:
        written.append(now[0])
        now[0] += 1.0  # each report takes a second of the clock
        return folder.report

    monkeypatch.setattr(sweep_report, "write", write)
    sw.clock = lambda: now[0]
    for number in range(4):
        trial = ask(sw)
        write_run(tmp_path, f"eng-t{number}", finished=True, val_loss=2.0 + number)
        sw.running[number] = sweep.Running(number, trial._trial_id, f"eng-t{number}", 0.05,
                                           0.0, sw.folder.trial_log(number), pid=1)
    sw.on_exit(0, 0)  # the first: written (100), due again at 101 + 4
    sw.on_exit(1, 0)  # at 101: skipped
    now[0] = 105.0
    sw.on_exit(2, 0)  # due: written (105), due again at 110
    sw.on_exit(3, 0)  # at 106: skipped, waiting
    sw.catch_up_report()  # the loop, a moment later: not due yet
    now[0] = 110.0
    sw.catch_up_report()  # due: the waiting report is written (110), due again at 115
    sw.catch_up_report()  # nothing waits any more
    sw.write_report()  # the end: always
    assert written == [100.0, 105.0, 110.0, 111.0]
    assert [t.state.name for t in sw.trials()] == ["COMPLETE"] * 4


def test_a_sweep_of_many_trials_names_only_its_best_in_the_pictures(tmp_path: Path) -> None:
    """A legend line per trial covered the curves' picture at 500 trials and ran off it, and
    a label per trial covered the objective's; the best are named, the others drawn grey."""
    import matplotlib.pyplot as plt
    import optuna

    from podcycle import sweep_report

    folder = sweep.SweepFolder(tmp_path / "sweeps", "many")
    meta = {"name": "many", "objective": "val_loss", "direction": "minimize", "trials": 30,
            "parallel": 1, "status": "finished", "gpu": {"id": "g"},
            "params": [{"name": "lr", "kind": "float", "low": 0.001, "high": 0.1,
                        "log": True}], "artifacts_dir": str(tmp_path / "art")}
    dist = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True)}
    trials = []
    for number in range(30):
        value = 3.0 - number / 100
        trial = optuna.trial.create_trial(params={"lr": 0.001 + number / 1000},
                                          distributions=dist, value=value,
                                          intermediate_values={1: value + 0.5, 2: value})
        trial.number = number
        trials.append(trial)
        folder.trial_log(number).parent.mkdir(parents=True, exist_ok=True)
        folder.trial_log(number).write_text(
            "".join(f"[train] epoch {e}/2 train_loss=3.0 val_loss={v} val_top1=0.1\n"
                    for e, v in ((1, value + 0.5), (2, value))))
    drawn: list[Any] = []
    real_savefig = plt.Figure.savefig

    def savefig(fig: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append(fig)
        real_savefig(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Figure, "savefig", savefig)
        sweep_report.write(folder, meta, trials)
    objective, curves = drawn
    labels = [t.get_text() for t in objective.axes[0].texts]
    assert labels == [f"t{n}" for n in range(29, 19, -1)]  # the 10 best, best first
    grey, named = objective.axes[0].collections
    assert (len(grey.get_offsets()), len(named.get_offsets())) == (20, 10)
    assert tuple(grey.get_facecolor()[0][:3]) == (0.75, 0.75, 0.75)
    assert sorted(y for _, y in named.get_offsets()) == sorted(3.0 - n / 100
                                                               for n in range(20, 30))
    legend = [t.get_text() for t in curves.axes[0].get_legend().get_texts()]
    assert legend == ["20 other trials", *(f"t{n} (complete)" for n in range(29, 19, -1))]


def test_a_report_whose_every_trial_failed_says_there_is_no_best(tmp_path: Path) -> None:
    """It said "status: finished" above "No trial has finished yet." when all had ended,
    failed."""
    import optuna

    from podcycle import sweep_report

    folder = sweep.SweepFolder(tmp_path / "sweeps", "all-failed")
    meta = {"name": "all-failed", "objective": "val_loss", "direction": "minimize",
            "trials": 2, "parallel": 1, "status": "finished", "gpu": {"id": "g"},
            "params": [{"name": "lr", "kind": "grid", "values": [0.1, 0.2]}],
            "artifacts_dir": str(tmp_path / "art")}
    dist = {"lr": optuna.distributions.CategoricalDistribution([0.1, 0.2])}
    trials = [optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                        params={"lr": lr}, distributions=dist)
              for lr in (0.1, 0.2)]
    for number, trial in enumerate(trials):
        trial.number = number
    text = sweep_report.write(folder, meta, trials).read_text()
    assert "No best: none of its 2 trial(s) gave a value (2 fail); each trial's run says " \
           "why: inv runs.show RUN_ID." in text
    assert "No trial has finished yet" not in text
    trials[1] = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                          params={"lr": 0.2}, distributions=dist)
    trials[1].number = 1
    text = sweep_report.write(folder, meta, trials).read_text()
    assert "none of its 2 trial(s) gave a value (1 fail, 1 pruned)" in text
    # Still going: its first trials failed, more are planned.
    text = sweep_report.write(folder, {**meta, "status": "running", "trials": 4},
                              trials).read_text()
    assert "No trial has finished yet." in text and "No best" not in text


def test_sweep_stop_continues_a_suspended_sweep_so_that_it_stops(tmp_path: Path) -> None:
    """A sweep suspended with Ctrl-Z (its whole process group: its trials too) took
    sweep.stop's signal only once continued: sweep.stop waited its five minutes and gave up,
    and every trial's pod billed on. It continues what it signals."""
    import signal
    import subprocess
    import sys

    from podcycle.signals import suspended

    sw, _ = engine(tmp_path)
    # The sweep's process, as far as sweep.stop sees it: it holds the sweep's lock and ends
    # on STOP_SIGNAL (SIGTERM) as the sweep does.
    code = ("import sys\nfrom pathlib import Path\nfrom podcycle.sweep import SweepFolder\n"
            "folder = SweepFolder(Path(sys.argv[1]), 'eng')\nfolder.lock()\n"
            "print('locked', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "sweeps")],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        os.kill(holder.pid, signal.SIGSTOP)
        eventually(lambda: suspended(holder.pid), timeout=30, what="the sweep suspended")
        said: list[str] = []
        stopped = sweep_status.stop(sw.settings, "eng", announce=said.append, wait=30)
        assert stopped == [{"what": "sweep", "pid": holder.pid}]
        assert f"pid {holder.pid} was suspended (Ctrl-Z or SIGSTOP): continuing it, so " \
               "that it stops" in said
        assert holder.wait(timeout=30) == -signal.SIGTERM
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_suspended_trial_is_continued_when_the_sweep_stops_it(tmp_path: Path) -> None:
    """Ctrl-Z suspends the sweep's trials with it; the sweep, continued and stopped, signalled
    each trial's cycle, which took it only once continued itself: the sweep waited on, and the
    trials' pods billed."""
    import signal

    from podcycle.signals import suspended

    sw, said = engine(tmp_path)
    trial = ask(sw)
    item = fake_cycle(sw, 0, trial._trial_id)
    try:
        os.kill(item.proc.pid, signal.SIGSTOP)
        eventually(lambda: suspended(item.proc.pid), timeout=30, what="the trial suspended")
        sw.signal(item)
        assert item.proc.wait(timeout=30) == 130  # it took the signal as Ctrl-C
        assert any(f"pid {item.proc.pid} was suspended" in line for line in said)
    finally:
        if item.proc.poll() is None:
            item.proc.kill()
            item.proc.wait()


@pytest.mark.parametrize(("text", "where"), [
    ('name = "{key}"\n', "[sweep] name"),
    ('name = "my-{key}-sweep"\n', "[sweep] name"),
    ('strength_opponent = "uci:/opt/{key}"\n', "[sweep] strength_opponent"),
    ('dataset = "/data/{key}"\n', "[sweep] dataset"),
    ('[params.dataset]\nchoices = ["/a", "/b/{key}"]\n', "[params.dataset] choices[1]"),
    ('"{key}" = 1\n', "a name in [sweep]"),
], ids=["name", "in-name", "opponent", "dataset", "choice", "a-key"])
def test_a_sweep_file_holding_the_api_key_is_refused_before_anything(tmp_path: Path, text: str,
                                                                     where: str) -> None:
    """A sweep file's `name` that was the RunPod key (pasted in the wrong place) made the
    sweep's folder of it, and the key was written in clear into its journal, trial logs and
    reports, and listed by sweep.status once the key was no longer in the environment to
    mask it. --name KEY was refused; the file's values were not. Named by place, never shown."""
    from podcycle.redact import register_secret

    key = "rpa_SWEEPFILE0123456789ABCDEFXYZ"
    register_secret(key)
    body = text.format(key=key)
    sweep, rest = (body, "") if not body.startswith("[params") else ("", body)
    path = write(tmp_path, GOOD.replace("[sweep]\n", "[sweep]\n" + sweep) + rest)
    with pytest.raises(ConfigError) as err:
        sweep_config.load(path)
    assert err.value.message == (f"{path}: {where} is, or holds, a secret this machine is "
                                 "configured with (the RunPod API key?), so the file is not "
                                 "used: pasted in the wrong place?")
    assert key not in err.value.render() and key.lower() not in err.value.render().lower()


@pytest.mark.parametrize(("encoding", "tool"), [("utf-16", "utf-16"), ("latin-1", "latin1")])
def test_a_sweep_file_that_is_not_utf8_says_so_and_how_to_mend_it(tmp_path: Path,
                                                                  encoding: str,
                                                                  tool: str) -> None:
    """A sweep file saved as UTF-16 (Windows editors) or Latin-1 said "not valid TOML
    ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)": Python's
    decoder speaking, not the file's problem and its fix, as a template file's says."""
    path = tmp_path / "sweep.toml"
    path.write_bytes(GOOD.replace("[sweep]", '[sweep]\nname = "é-sweep"').encode(encoding))
    with pytest.raises(ConfigError) as refused:
        sweep_config.load(path)
    assert refused.value.message.startswith(f"{path} is not UTF-8 text (line ")
    assert refused.value.message.endswith("; TOML files are UTF-8")
    assert ("it is UTF-16" in refused.value.message) == (encoding == "utf-16")
    assert refused.value.remedy == (f"save the file as UTF-8 (e.g. iconv -f {tool} -t utf-8), "
                                    "then run again")


def test_a_stray_byte_in_a_utf8_sweep_file_is_named_by_its_line_not_sent_to_iconv(
        tmp_path: Path) -> None:
    """One byte that is not UTF-8 in a file that is UTF-8 elsewhere (an accent that reads):
    `iconv -f latin1` would have turned every accent of the file into two wrong characters.
    The line is named, to retype there."""
    path = tmp_path / "sweep.toml"
    text = GOOD.replace("[sweep]", '[sweep]\nname = "é-sweep"\n# note: \udcff')
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    line = text.splitlines().index("# note: \udcff") + 1
    with pytest.raises(ConfigError) as refused:
        sweep_config.load(path)
    assert refused.value.message.startswith(f"{path} is not UTF-8 text (line {line}, byte ")
    assert "the rest is UTF-8" in refused.value.message
    assert refused.value.remedy == (f"retype the text at line {line} (a stray byte, pasted?), "
                                    "then run again")
    # After a byte-order mark (Notepad's UTF-8), the same line and the byte itself: the
    # decoder counts from after the mark, and named the line before and a byte of the é.
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as refused:
        sweep_config.load(path)
    offset = 3 + len(text[:text.index("\udcff")].encode())
    assert refused.value.message.startswith(f"{path} is not UTF-8 text (line {line}, byte "
                                            f"{offset}: b'\\xff'; the rest is UTF-8)")


def _starting(root: Path, name: str) -> tuple[sweep.SweepFolder, dict[str, Any]]:
    """What plan() gives a new sweep (without asking RunPod for its GPU's price)."""
    return sweep.SweepFolder(root, name), {
        "name": name, "direction": "minimize", "objective": "val_loss", "params": [],
        "trials": 2, "parallel": 1, "budget": None, "share": 0.05, "max_minutes": 10,
        "gpu": {"id": "x", "price_per_hour": 0.3}}


def test_a_sweep_interrupted_while_it_starts_leaves_nothing_and_its_name_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the second a new sweep opens its study (optuna's import): exit 1 in silence,
    and a folder holding only its lock, which refused the name ("exists but holds no
    sweep.json ... move that folder away") and every --resume of it ("no sweep")."""
    root = tmp_path / "sweeps"  # beside the runs folder: the settings' default
    monkeypatch.setattr(sweep, "plan", lambda *_, **__: _starting(root, "st"))
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)

    def interrupted(folder, meta, *, create):
        assert folder.is_driven() and create  # its lock taken, its folder made
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "open_study", interrupted)
    with pytest.raises(sweep.SweepNotStarted):
        sweep.run_sweep(settings, sweep.Options(config=tmp_path / "unused.toml"))
    assert not (root / "st").exists()

    def full(folder, meta, *, create):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep, "open_study", full)
    with pytest.raises(OSError):  # a failure is itself, not an interruption
        sweep.run_sweep(settings, sweep.Options(config=tmp_path / "unused.toml"))
    assert not (root / "st").exists()

    # Second read: a Ctrl-C while the plan is said (stderr blocked, a pager not reading),
    # after the study opened, left the folder all the same; and a second Ctrl-C (a closing
    # terminal's second SIGHUP) during the removal killed it half-way. Both are covered now.
    import shutil
    import signal

    monkeypatch.setattr(sweep, "open_study", lambda folder, meta, *, create: object())
    removing = shutil.rmtree

    def removed_under_a_second_ctrl_c(path, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # ignored while the start is forgotten
        removing(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", removed_under_a_second_ctrl_c)

    def interrupted_saying(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(sweep.SweepNotStarted):
        sweep.run_sweep(settings, sweep.Options(config=tmp_path / "unused.toml"),
                        announce=interrupted_saying)
    assert not (root / "st").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_ctrl_c_as_the_start_makes_its_folder_leaves_no_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second read: a Ctrl-C just after the start made its folder, before it counted the
    folder as its own, ended in a bare KeyboardInterrupt and left the folder, which refused
    the name ("exists but holds no sweep.json"). The making and the counting are one step."""
    import pathlib
    import signal

    root = tmp_path / "deep" / "sweeps"
    monkeypatch.setattr(sweep, "plan", lambda *_, **__: _starting(root, "st"))
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)
    making = pathlib.Path.mkdir

    def made_then_interrupted(self, *args, **kwargs):
        making(self, *args, **kwargs)
        if self.name == "st":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(pathlib.Path, "mkdir", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt) as interrupted:  # any: a bare one fails, not stops
        sweep.run_sweep(settings, sweep.Options(config=tmp_path / "unused.toml"))
    assert isinstance(interrupted.value, sweep.SweepNotStarted), repr(interrupted.value)
    assert not (tmp_path / "deep").exists()
    # Second read: a lock whose record a full disk refused left the folder, its lock file
    # empty: never a killed start's, so the name was refused for good.
    monkeypatch.setattr(pathlib.Path, "mkdir", making)

    def full(self) -> None:
        (self.path / ".lock").write_text("")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep.SweepFolder, "lock", full)
    with pytest.raises(OSError):
        sweep.run_sweep(settings, sweep.Options(config=tmp_path / "unused.toml"))
    assert not (tmp_path / "deep").exists()


def test_a_start_never_removes_a_sweep_another_start_made_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plan() found the name free; while it checked the datasets and priced the GPU, another
    sweep.run of that name made its folder, ran and ended. This start then failed to create
    its study (it exists), and removed that sweep's folder: its record, journal and logs."""
    root = tmp_path / "sweeps"
    monkeypatch.setattr(sweep, "plan", lambda *_, **__: _starting(root, "st"))
    other = root / "st"
    other.mkdir(parents=True)
    (other / "sweep.json").write_text("{}")
    (other / "study.journal").write_text("")
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)
    with pytest.raises(sweep.SweepError) as refused:
        sweep.run_sweep(settings, sweep.Options(config=tmp_path / "unused.toml"))
    assert refused.value.message == (f"sweep st exists already ({other.resolve()}): another "
                                     "sweep.run of that name started meanwhile")
    assert refused.value.exit_code == 2
    assert sorted(p.name for p in other.iterdir()) == ["study.journal", "sweep.json"]


# A new sweep "st" (its plan given, without RunPod) whose study takes until a signal to open.
STARTING_SWEEP = """
import sys
from pathlib import Path
from podcycle import sweep
from podcycle.config import resolve
from tests.signal_wait import until_a_signal
from tests.test_sweep_config import _starting

root = Path(sys.argv[1])
sweep.plan = lambda *_, **__: _starting(root, "st")

def opening(folder, meta, *, create):
    print("starting", flush=True)
    until_a_signal()

sweep.open_study = opening
settings = resolve({"artifacts_dir": sys.argv[2]}, {}, environ={}, use_keyring=False)
try:
    sweep.run_sweep(settings, sweep.Options(config=Path("unused.toml")))
except sweep.SweepNotStarted:
    print("not started", flush=True)
    sys.exit(130)
"""


def test_sweep_stop_while_the_sweep_starts_stops_it_before_it_makes_anything(
        tmp_path: Path) -> None:
    """sweep.stop in the first second of a sweep.run (its folder made and locked, its record
    not yet written) said "no sweep 'st'" (exit 1), and the sweep went on to make its pods.
    It now interrupts the starting sweep, which makes nothing and leaves no folder."""
    root = tmp_path / "sweeps"  # beside the runs folder: the settings' default
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)
    stop_a_starting_sweep([STARTING_SWEEP, str(root), str(tmp_path / "artifacts")], "st",
                          "starting", settings)
    assert not (root / "st").exists()


def stop_a_starting_sweep(argv: list[str], name: str, ready: str, settings: Any,
                          meanwhile: Any = lambda pid: None) -> None:
    """`python -c argv...`: a new sweep `name` that prints `ready`, then waits for a signal
    as it starts. `meanwhile(pid)` runs once it is ready; then sweep.stop must interrupt it
    before it makes anything, and the sweep end with exit 130, not started."""
    import subprocess
    import sys

    from tests.conftest import child_environ

    starting = subprocess.Popen([sys.executable, "-c", *argv], cwd=ROOT, env=child_environ(),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert starting.stdout.readline() == f"{ready}\n", starting.stderr.read()
        meanwhile(starting.pid)
        said: list[str] = []
        stopped = sweep_status.stop(settings, name, announce=said.append, wait=60)
        out, err = starting.communicate(timeout=60)
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.communicate()
    assert stopped == [{"what": "sweep", "pid": starting.pid}]
    assert said[0] == (f"sweep {name} is starting in pid {starting.pid}: interrupting it "
                       "before it makes anything")
    assert starting.returncode == 130 and out == "not started\n", (out, err)


# A new sweep "sp" from a real sweep file, whose plan (after its name) takes until a signal:
# a large dataset's check, a slow answer for the GPU's price.
PLANNING_SWEEP = """
import sys
from pathlib import Path
from podcycle import sweep, sweep_config
from podcycle.config import resolve
from tests.signal_wait import until_a_signal

def checking(*args, **kwargs):
    print("planning", flush=True)
    until_a_signal()

sweep._refuse_earlier_runs = checking
settings = resolve({"artifacts_dir": sys.argv[2]}, {}, environ={}, use_keyring=False)
options = sweep.Options(config=Path(sys.argv[1]), flags=sweep_config.Overrides(name="sp"))
try:
    sweep.run_sweep(settings, options)
except sweep.SweepNotStarted:
    print("not started", flush=True)
    sys.exit(130)
"""


def test_sweep_stop_while_the_sweep_checks_its_plan_stops_it_before_it_makes_anything(
        tmp_path: Path) -> None:
    """sweep.stop while a new sweep checked its datasets and priced its GPU (its name known,
    no folder made yet) said "no sweep 'sp'" (exit 1), and the sweep went on to make its
    pods. The name is claimed as soon as it is known: the stop now interrupts the sweep,
    which makes nothing and leaves no sweeps folder. Meanwhile sweep.status and a second
    sweep.run of the name say that it is starting, not "no sweep" or "move that folder
    away"."""
    artifacts = tmp_path / "artifacts"
    settings = resolve({"artifacts_dir": str(artifacts)}, {}, environ={}, use_keyring=False)
    root = sweep.sweeps_root(settings)
    config = write(tmp_path, GOOD)

    def starting_meanwhile(pid: int) -> None:
        with pytest.raises(sweep.SweepStarting) as starting:
            sweep_status.status(settings, "sp")
        assert starting.value.message.startswith(f"sweep sp is starting in pid {pid}: ")
        assert "inv sweep.stop sp" in starting.value.remedy
        options = sweep.Options(config=config, flags=sweep_config.Overrides(name="sp"))
        with pytest.raises(sweep.SweepStarting):
            sweep.run_sweep(settings, options, connect=no_runpod)

    stop_a_starting_sweep([PLANNING_SWEEP, str(config), str(artifacts)], "sp", "planning",
                          settings, starting_meanwhile)
    assert not root.exists()  # made by this start, and gone with it
    assert not artifacts.exists()


# A new sweep "sk" from a real sweep file (its GPU given, without RunPod) that waits, once
# its study is created and before its record is written, to be killed.
KILLED_START = """
import sys
from pathlib import Path
from podcycle import sweep, sweep_config
from podcycle.config import resolve
from tests.signal_wait import until_a_signal

sweep._gpu_for = lambda *_: {"id": "x", "price_per_hour": 0.3}
creating = sweep.open_study

def opened(*args, **kwargs):
    creating(*args, **kwargs)
    print("opened", flush=True)
    until_a_signal()

sweep.open_study = opened
settings = resolve({"artifacts_dir": sys.argv[2]}, {}, environ={}, use_keyring=False)
sweep.run_sweep(settings, sweep.Options(config=Path(sys.argv[1]),
                                        flags=sweep_config.Overrides(name="sk")))
"""


def test_a_start_killed_before_its_record_is_named_and_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hunt: a sweep.run killed (-9) as it started left its folder with its lock and study
    journal and no sweep.json. sweep.status and sweep.stop then said "no sweep 'sk'", and a
    new sweep.run said the folder "exists but holds no sweep.json ... move that folder away".
    Nothing was made (trials begin after the record): they now say so, and the same command
    takes the folder over."""
    import signal
    import subprocess
    import sys

    from tests.conftest import child_environ

    artifacts = tmp_path / "artifacts"
    settings = resolve({"artifacts_dir": str(artifacts)}, {}, environ={}, use_keyring=False)
    folder = sweep.SweepFolder(sweep.sweeps_root(settings), "sk")
    config = write(tmp_path, GOOD)
    starting = subprocess.Popen([sys.executable, "-c", KILLED_START, str(config),
                                 str(artifacts)], cwd=ROOT, env=child_environ(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert starting.stdout.readline() == "opened\n", starting.stderr.read()
        starting.send_signal(signal.SIGKILL)
    finally:
        starting.communicate(timeout=60)
    left = {p.name for p in folder.path.iterdir()}
    assert ".lock" in left and "sweep.json" not in left and left <= sweep.START_FILES, left
    for told in (lambda: sweep_status.status(settings, "sk"),
                 lambda: sweep_status.stop(settings, "sk", announce=lambda _: None, wait=5)):
        with pytest.raises(sweep.SweepError) as killed:
            told()
        assert killed.value.message.startswith("sweep sk's start was killed before it made "
                                               "anything (no trial, no pod; ")
        assert "same inv sweep.run command" in killed.value.remedy

    def created(folder_, meta, *, create):  # the takeover's: the folder clean, and its own
        assert folder_.is_driven() and create
        assert {p.name for p in folder_.path.iterdir()} == {".lock"}
        raise RuntimeError("created")

    monkeypatch.setattr(sweep, "_gpu_for", lambda *_: {"id": "x", "price_per_hour": 0.3})
    monkeypatch.setattr(sweep, "open_study", created)
    said: list[str] = []
    options = sweep.Options(config=config, flags=sweep_config.Overrides(name="sk"))
    with pytest.raises(RuntimeError, match="created"):
        sweep.run_sweep(settings, options, announce=said.append)
    assert said[0] == ("sweep sk: an earlier start of it was killed before it made anything "
                       "(no trial, no pod): starting afresh in its folder")
    assert not folder.path.exists()  # and this start, failed, forgot itself
    # Second read: a live start's lock file, made and not yet locked, is empty; taken for a
    # killed start's, a second start took the folder over, and the first then removed it.
    folder.path.mkdir(parents=True)
    (folder.path / ".lock").write_text("")
    assert not folder.killed_start()
    (folder.path / ".lock").write_text('{"pid": 999999999, "since": 1}')
    assert folder.killed_start()
    import shutil

    shutil.rmtree(folder.path)
    # A folder of something else (no lock: not a start's) is still refused as before.
    folder.path.mkdir(parents=True)
    (folder.path / "study.journal").write_text("")
    with pytest.raises(sweep.SweepError, match="exists but holds no sweep.json"):
        sweep.run_sweep(settings, options, announce=said.append)


# A live sweep "st" whose sweep.json is damaged: it holds its lock until its stdin closes.
DAMAGED_LIVE_SWEEP = """
import sys
from pathlib import Path
from podcycle import sweep
folder = sweep.SweepFolder(Path(sys.argv[1]), "st")
folder.path.mkdir(parents=True)
folder.lock()
folder.meta_path.write_text("{damaged")
print("locked", flush=True)
sys.stdin.read()
"""


def test_sweep_stop_refuses_a_damaged_record_it_never_takes_for_a_start(tmp_path: Path
                                                                        ) -> None:
    """Second read: a live sweep whose sweep.json was damaged was taken for one still
    starting, and interrupted "before it makes anything", trials and pods and all. Only a
    sweep with no record yet is one that starts; a damaged record is refused as before."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    root = tmp_path / "sweeps"
    live = subprocess.Popen([sys.executable, "-c", DAMAGED_LIVE_SWEEP, str(root)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "locked\n"
        settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                           use_keyring=False)
        with pytest.raises(sweep.SweepError) as refused:
            sweep_status.stop(settings, "st", announce=lambda _: None, wait=5)
        assert "is not valid JSON" in refused.value.message
        assert live.poll() is None  # not interrupted
    finally:
        live.communicate(input="", timeout=30)


def test_status_shows_the_cost_of_a_trials_run_as_it_stands(tmp_path: Path) -> None:
    """A trial kept its cost as it ended (a Ctrl-C: $0.0001); a --resume then took its run on,
    which trained to the end and billed more. sweep.status still showed the kept $0.0001,
    and spent with it; the run's record is read first now."""
    import time

    from podcycle.runs import PodRecord, RunState

    sw, _ = engine(tmp_path)
    trial = ask(sw)
    storage = sw.study._storage
    storage.set_trial_user_attr(trial._trial_id, "run_id", "eng-t0")
    storage.set_trial_user_attr(trial._trial_id, "cost", 0.0001)
    state = RunState("eng-t0")
    now = time.time()
    state.set_pod(PodRecord(id="p1", name="pod-cycle-eng-t0", price_per_hour=3.6,
                            created_at=now - 400, billed_seconds=360.0, stopped_at=now - 40))
    run = tmp_path / "artifacts" / "eng-t0"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps(state.to_json()))
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {}, environ={},
                       use_keyring=False)
    row = sweep_status.status(settings, "eng", root=tmp_path / "sweeps")["trials"][0]
    assert row["cost"] == sweep.run_cost(RunFolder(tmp_path / "artifacts", "eng-t0")) > 0.0001


def test_a_trial_whose_stop_failed_is_named_not_said_stopped(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Hunt (stop 54): a sweep stopped (SIGTERM) while RunPod failed the trials' stops said
    "interrupted: every trial's pod was stopped" (exit 130), and one that finished with a
    trial's stop failed said "finished" (exit 0), while those pods billed on. The trials whose
    pod may bill are named, with sweep.stop, and the exit is 4."""
    from invoke.exceptions import Exit

    from podcycle.runs import PodRecord, RunFolder
    from tasks import sweep as sweep_tasks

    sw, _ = engine(tmp_path, lrs=(0.1, 0.2))
    for number, stop_failed in ((0, True), (1, False)):
        trial = ask(sw)
        sw.study._storage.set_trial_user_attr(trial._trial_id, "run_id", f"eng-t{number}")
        sw.study.tell(trial, 2.5)
        write_run(tmp_path, f"eng-t{number}", finished=True)
        run = RunFolder(tmp_path / "artifacts", f"eng-t{number}")
        run.state.set_pod(PodRecord(id=f"p{number}", name=f"pod-cycle-eng-t{number}"))
        run.state.pod.stopped_at = None if stop_failed else 1000.0
        run.state.pod.stop_failed = stop_failed
        run.save()
        run.unlock()
    real_run_sweep = sweep.run_sweep
    result = sweep_status.status(sw.settings, "eng", root=tmp_path / "sweeps")
    billing = sweep_status.billing_trials(result)
    assert billing == ["trial 0 (pod p0: STOP FAILED (may be billing))"]

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise sweep.SweepInterrupted("eng", billing)

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    with pytest.raises(Exit) as said:
        sweep_tasks.run.body(None, resume="eng")
    assert said.value.code == 4
    assert str(said.value.message).startswith(
        "interrupted, but POD STILL RUNNING: trial 0 (pod p0: STOP FAILED (may be billing)) "
        "may still bill\n  → stop them with inv sweep.stop eng, then "
        "continue with inv sweep.run --resume eng")

    # A sweep that ends (its trials done) with that pod billing: not "finished" and exit 0.
    meta = sw.folder.meta()
    sw.folder.save_meta({**meta, "status": "stopped"})
    monkeypatch.setattr(sweep.Sweep, "drive", lambda self: "finished")
    settings = resolve({"artifacts_dir": str(tmp_path / "artifacts")}, {},
                       environ={"POD_CYCLE_SWEEPS_DIR": str(tmp_path / "sweeps")},
                       use_keyring=False)
    monkeypatch.setattr(sweep, "run_sweep", real_run_sweep)
    with pytest.raises(sweep.SweepError) as ended:
        sweep.run_sweep(settings, sweep.Options(resume="eng"), connect=no_runpod)
    assert ended.value.message == ("sweep eng finished, but POD STILL RUNNING: trial 0 (pod "
                                   "p0: STOP FAILED (may be billing)) may still bill")
    assert ended.value.remedy.startswith("stop them with inv sweep.stop eng")
    assert ended.value.exit_code == 4


def test_a_trial_that_trained_and_collected_keeps_its_value_when_its_stop_fails(
        tmp_path: Path) -> None:
    """Hunt (stop 54): RunPod failed the stops of two trials that had trained and collected
    their models; each cycle exited 4, each trial was failed, and the sweep said "no best"
    (or ranked a worse trial first, exit 0) while both pods billed. A trial whose only
    failure is its stop keeps its value, and says its pod still runs; one that failed
    earlier is failed as before."""
    from podcycle.runs import PodRecord, RunFolder

    sw, said = engine(tmp_path, lrs=(0.1, 0.2))
    for number, pending in ((0, False), (1, True)):
        trial = ask(sw)
        write_run(tmp_path, f"eng-t{number}", finished=True, val_loss=2.0 + number)
        run = RunFolder(tmp_path / "artifacts", f"eng-t{number}")
        run.state.outcome = "failed"  # the cycle's end: its stop failed
        run.state.set_pod(PodRecord(id=f"p{number}", name=f"pod-cycle-eng-t{number}"))
        run.state.pod.stop_failed = True
        # As full-smoke leaves it: its stop comes before its local-validate, and ended it.
        del run.state.steps["local-validate"]
        if pending:  # failed in its collect, then its stop failed too
            run.state.steps["collect"].status = "failed"
        run.save()
        run.unlock()
        sw.running[number] = sweep.Running(number, trial._trial_id, f"eng-t{number}", 0.05,
                                           0.0, sw.folder.trial_log(number), pid=1)
        sw.on_exit(number, 4)
    kept, failed = sw.trials()
    assert kept.state.name == "COMPLETE" and kept.value == 2.0
    assert failed.state.name == "FAIL"
    assert any(line.startswith("trial 0 finished: val_loss 2") and line.endswith(
        "; POD STILL RUNNING: its stop failed (inv sweep.stop eng stops it)")
        for line in said), said

    # Stopped (Ctrl-C, SIGTERM) with its stop failed: "trial 2 stopped" read as its pod's.
    trial = ask(sw)
    write_run(tmp_path, "eng-t2", finished=False)
    run = RunFolder(tmp_path / "artifacts", "eng-t2")
    run.state.set_pod(PodRecord(id="p2", name="pod-cycle-eng-t2"))
    run.state.pod.stop_failed = True
    run.save()
    run.unlock()
    sw.running[2] = sweep.Running(2, trial._trial_id, "eng-t2", 0.05, 0.0,
                                  sw.folder.trial_log(2), pid=1)
    sw.stopping = True
    sw.on_exit(2, 130)
    assert said[-1].startswith("trial 2 (run eng-t2) stopped") and said[-1].endswith(
        ": --resume continues its run; POD STILL RUNNING: its pod's stop failed (inv "
        "sweep.stop eng stops it)"), said


def test_a_sweep_name_that_names_nothing_is_refused_input(tmp_path: Path) -> None:
    """`sweep.status nosuch` and `sweep.stop nosuch` exited 1 where `runs.show nosuch` exits
    2: a name that names nothing is refused input, and a script tells it from a failure by
    the code. The existing sweeps are named in the remedy."""
    engine(tmp_path)  # sweep "eng"
    settings = resolve({}, {}, environ={"POD_CYCLE_SWEEPS_DIR": str(tmp_path / "sweeps")},
                       use_keyring=False)
    for call in (lambda: sweep_status.status(settings, "nosuch"),
                 lambda: sweep_status.stop(settings, "nosuch", announce=lambda _: None)):
        with pytest.raises(sweep.SweepError) as refused:
            call()
        assert refused.value.exit_code == 2
        assert refused.value.message.startswith("no sweep 'nosuch' under ")
        assert "eng" in refused.value.remedy
