"""The training cycle on a pod: start, push-dataset, train, collect, local-validate, stop, or
all of them with full-smoke. Steps share RUNPOD_CYCLE_RUN_ID and its run folder
artifacts/runpod_cycles/<run_id>/."""

from contextlib import contextmanager

from podcycle.cli import guarded, settings, task

COMMON = {
    "run_id": "the run's id (default: RUNPOD_CYCLE_RUN_ID; required: cycle.start printed it)",
    "backend": "auto|runpod|local (default: auto = runpod when a key is found, else local)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
}
PROVISION = {
    "template_name": "template for the pod (default: RUNPOD_TEMPLATE_NAME, chess-bot-training)",
    "gpu_type_id": "GPU type id (default: RUNPOD_GPU_TYPE_ID, else the cheapest available)",
    "gpu_count": "GPUs in the pod (with --nodes: GPUs per node), 1 to 16 (default: "
                 "RUNPOD_GPU_COUNT, else 1)",
    "nodes": "2 to 250 makes the run a RunPod Instant Cluster of that many pods, trained on "
             "by torchrun (rank 0 on the primary); it is deleted at the end (clusters cannot "
             "be stopped) and needs a public image; 1 is one pod (default: RUNPOD_NODES, "
             "else 1)",
    "data_center": "with --nodes: the data centre to place the cluster in, e.g. US-TX-3 "
                   "(default: RUNPOD_DATA_CENTER, else RunPod chooses; a network volume "
                   "decides it)",
    "cloud": "secure|community|all (default: secure)",
    "max_minutes": "spend guard: a new pod stops itself this many minutes after it boots, even "
                   "if this machine dies; 0.5 to 43200 (30 days), and a RunPod pod needs a few "
                   "minutes to boot (default: RUNPOD_MAX_MINUTES, else none)",
    "max_cost": "spend guard in USD: a new pod stops itself once its price has cost this much; "
                "0.01 to 10000, and at least half a minute at the pod's price (default: "
                "RUNPOD_MAX_COST, else none)",
    "network_volume": "network volume (name or id) a new pod mounts: the dataset, its encoding "
                      "and the checkpoints live there (default: RUNPOD_NETWORK_VOLUME, else "
                      "none; a run remembers its volume)",
}
DATASET = {"dataset_dir": "dataset folder with train.jsonl and val.jsonl (default: "
                          "RUNPOD_DATASET_DIR, data/dataset/_smoke_runpod)"}
# A push again, or a --resume's: left out, the run's own pushed dataset (Cycle.run_dataset).
PUSHED_DATASET = {"dataset_dir": "dataset folder with train.jsonl and val.jsonl (default: "
                                 "RUNPOD_DATASET_DIR, else the one the run pushed before, "
                                 "else data/dataset/_smoke_runpod)"}
# local-validate's val metrics: the run's own dataset first (Cycle.local_validate).
VALIDATED_DATASET = {"dataset_dir": "dataset whose val.jsonl the model is measured on "
                                    "(default: the one the run pushed, else RUNPOD_DATASET_DIR, "
                                    "else data/dataset/_smoke_runpod)"}
STRENGTH = {
    "strength_games": "also play this many games (even, up to 1000000; each opening with "
                      "both colours) of the model against --strength-opponent, judged by an "
                      "SPRT of elo0 0, elo1 10; the result goes to the run state, report and "
                      "summary (default: 0 = no match)",
    "strength_opponent": "the strength check's opponent, as eval.match's --opponent (default: "
                         "the previous finished run on the same dataset, else random)",
}
TRAINING = {
    "epochs": "training epochs, 1 to 10000 (default: TRAIN_EPOCHS, else the preset's: 3)",
    "train_extra_args": "extra arguments for chessbot.train, e.g. \"--lr 1e-3\" "
                        "(default: none)",
}


@contextmanager
def _cycle(c, step, mode="step", **flags):
    """The run's Cycle, holding the run's lock until the task ends. Ctrl-C or SIGTERM ends
    the step as `interrupted` and says what still bills (exit 130), as full-smoke does; a
    step that fails says it too (but a stop: its own error says what bills and the ways on;
    pointing back at the collect it tried, or at the stop itself, went in a circle). `step`
    is the task's own: the one to run again (a refusal before it began, such as a dataset
    refused, records nothing, and the run's last failed step was named instead)."""
    import time

    from invoke.exceptions import Exit

    from podcycle.cycle import Cycle, open_run
    from podcycle.driver import after_interrupt, count_command_time, still_billing
    from podcycle.errors import PodCycleError
    from podcycle.signals import restore_signals, trap_signals

    flags = {k: v for k, v in flags.items() if v is not None}
    if "epochs" in flags:
        flags["train_epochs"] = flags.pop("epochs")
    s = settings(c, **flags)
    with Cycle.for_run(s, open_run(s, mode=mode)) as cycle:
        previous = trap_signals()
        cycle.command_started, began = time.monotonic(), time.time()
        try:
            yield cycle
        except KeyboardInterrupt as interrupted:
            raise Exit(after_interrupt(cycle, interrupted, own=step, since=began),
                       code=130) from None
        except PodCycleError as exc:  # a step task leaves the pod up: say that it bills
            if step != "stop":
                from podcycle.cycle import PodStoppedUnderStep

                _saying(exc, still_billing(cycle, step,
                                           found_gone=isinstance(exc, PodStoppedUnderStep)))
            raise
        except OSError as exc:  # a path the system refused: one line, and the same warning
            billing = still_billing(cycle, step)
            if exc.filename is None or not billing:
                raise
            from podcycle.cli import path_error

            raise _saying(path_error(exc), billing) from None
        finally:
            count_command_time(cycle)  # before a second Ctrl-C can reach it
            restore_signals(previous)


def _saying(error, billing):
    """`error` with the line on what still bills (driver.still_billing) after its remedy."""
    if billing:
        error.remedy = f"{error.remedy}\n  → {billing}" if error.remedy else billing
    return error


@task(help={**COMMON, "run_id": "run id (default: RUNPOD_CYCLE_RUN_ID; generated and printed "
                                "when unset)", **PROVISION})
@guarded
def start(c, run_id=None, backend=None, api_key=None, template_name=None, gpu_type_id=None,
          gpu_count=None, cloud=None, max_minutes=None, max_cost=None, network_volume=None,
          nodes=None, data_center=None):
    """Provision the run's pod or cluster (or reuse its live one) and wait for SSH.

    Saves provision.json in the run folder; the later steps find the pod there."""
    from podcycle.driver import check_cluster_inputs

    given = settings(c, **{k: v for k, v in (
        ("nodes", nodes), ("data_center", data_center), ("cloud", cloud)) if v is not None})
    check_cluster_inputs(given, run_may_exist=bool(run_id or given.run_id))
    with _cycle(c, "start", mode="start", run_id=run_id, backend=backend, api_key=api_key,
                template_name=template_name, gpu_type_id=gpu_type_id, gpu_count=gpu_count,
                cloud=cloud, max_minutes=max_minutes, max_cost=max_cost,
                network_volume=network_volume, nodes=nodes, data_center=data_center) as cycle:
        cycle.start()
    print(cycle.run.path)


@task(help={**COMMON, **PUSHED_DATASET})
@guarded
def push_dataset(c, dataset_dir=None, run_id=None, backend=None, api_key=None):
    """Validate the local dataset, then rsync its files to the run's pod."""
    with _cycle(c, "push-dataset", run_id=run_id, backend=backend, api_key=api_key,
                dataset_dir=dataset_dir) as cycle:
        cycle.push_dataset()


@task(help={**COMMON, **TRAINING})
@guarded
def train(c, epochs=None, train_extra_args=None, run_id=None, backend=None, api_key=None):
    """Train on the pod (one trainer per run; log streamed live), then an infer_move smoke.

    A trainer of this run that is still running on the pod (the host lost its connection, or
    was killed) is attached to and followed to its end, never started twice."""
    with _cycle(c, "train", run_id=run_id, backend=backend, api_key=api_key,
                epochs=epochs) as cycle:
        cycle.train(train_extra_args)


@task(help=COMMON)
@guarded
def collect(c, run_id=None, backend=None, api_key=None):
    """Pull the run's artifacts and timing logs into collected/, checked by sha256.

    The manifest is made on the pod; a file that does not match fails the step."""
    with _cycle(c, "collect", run_id=run_id, backend=backend, api_key=api_key) as cycle:
        cycle.collect()


@task(help={**COMMON, **VALIDATED_DATASET, **STRENGTH})
@guarded
def local_validate(c, dataset_dir=None, run_id=None, backend=None, api_key=None,
                   strength_games=None, strength_opponent=None):
    """Check the collected model on this machine: infer_move and val metrics.

    The val metrics are on --dataset-dir when it is given, else on the dataset the run
    pushed.

    Verifies the manifest first, saves local_validation/infer_move_output.txt and
    val_metrics.json; with --strength-games N, also plays N games (see eval.match). Needs no
    pod."""
    from podcycle.match import check_strength_flags

    games = check_strength_flags(strength_games, strength_opponent,
                                 settings(c).artifacts_dir)
    with _cycle(c, "local-validate", run_id=run_id, backend=backend, api_key=api_key,
                dataset_dir=dataset_dir) as cycle:
        cycle.local_validate(games, strength_opponent, dataset_dir=dataset_dir)


@task(help=COMMON)
@guarded
def stop(c, run_id=None, backend=None, api_key=None):
    """Stop the run's pod (an already stopped pod is fine) and finish the report.

    A cluster is deleted instead (clusters cannot be stopped), after its run's uncollected
    model is collected: if that fails, the cluster is kept and the error says why."""
    from podcycle import report
    from podcycle.runs import StateUnreadable

    try:
        with _cycle(c, "stop", run_id=run_id, backend=backend, api_key=api_key) as cycle:
            cycle.stop(rescue=True)
            from podcycle.driver import count_command_time

            count_command_time(cycle)  # the report's total holds the stop's own time
            report.write(cycle.run)
    except StateUnreadable as unreadable:  # what bills is still stopped, by its name
        from podcycle.backend import connect
        from podcycle.config import say
        from podcycle.leftovers import stop_named

        s = settings(c, run_id=run_id, backend=backend, api_key=api_key)
        done = stop_named(connect(s).client, s, s.run_id, say)
        unreadable.remedy = "; ".join(
            [*(done or [f"no pod of run {s.run_id} is running"]), unreadable.remedy])
        raise
    print(cycle.run.observations)


@task(help={**COMMON, "run_id": "run id (default: RUNPOD_CYCLE_RUN_ID; a new one when unset; "
                                "with --resume, the latest unfinished run)",
            **PROVISION, **DATASET, **TRAINING,
            "keep_pod": "leave the pod (or cluster) running at the end (default: off; a pod "
                        "is stopped, a cluster deleted, even on failure or Ctrl-C)",
            "resume": "continue the run: only the steps whose results are missing run; a "
                      "finished run is left as it is (default: off)", **STRENGTH})
@guarded
def full_smoke(c, dataset_dir=None, keep_pod=False, resume=False, epochs=None,
               train_extra_args=None, run_id=None, backend=None, api_key=None,
               template_name=None, gpu_type_id=None, gpu_count=None, cloud=None,
               max_minutes=None, max_cost=None, network_volume=None, strength_games=None,
               strength_opponent=None, nodes=None, data_center=None):
    """The whole cycle in one command: start → push → train → collect → validate → stop.

    With --nodes N (2 or more) the run is a RunPod Instant Cluster: the dataset goes to every
    node, torchrun trains on all of them (rank 0's log streams here), the artifacts come
    from the primary, and the cluster is deleted at the end. One node that fails stops the
    others and fails the run naming it; --resume then makes a new cluster and goes on from
    the last checkpoint."""
    from podcycle.driver import full_smoke as run_cycle
    from podcycle.summary import print_summary

    s = settings(c, run_id=run_id, backend=backend, api_key=api_key,
                 template_name=template_name, gpu_type_id=gpu_type_id, gpu_count=gpu_count,
                 cloud=cloud, dataset_dir=dataset_dir, train_epochs=epochs,
                 max_minutes=max_minutes, max_cost=max_cost, network_volume=network_volume,
                 nodes=nodes, data_center=data_center)
    from podcycle.match import check_strength_flags

    games = check_strength_flags(strength_games, strength_opponent, s.artifacts_dir)
    try:
        run = run_cycle(s, keep_pod=keep_pod, resume=resume, train_extra_args=train_extra_args,
                        strength_games=games if strength_games is not None else None,
                        strength_opponent=strength_opponent)
    except KeyboardInterrupt as interrupted:
        from invoke.exceptions import Exit

        from podcycle.driver import NOTHING_MADE, NothingMade
        from podcycle.errors import OutputClosed

        if isinstance(interrupted, NothingMade):
            raise Exit(NOTHING_MADE, code=130) from None
        what = getattr(interrupted, "ended", None) or (
            "what the run made may still bill (inv pod.leftovers lists it)")
        why = f" ({OutputClosed.reason})" if isinstance(
            interrupted, OutputClosed) else ""
        raise Exit(f"interrupted{why}: {what}; continue with --resume and the same "
                   "RUNPOD_CYCLE_RUN_ID", code=130) from None
    print_summary(run)
