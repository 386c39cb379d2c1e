"""Provision and control pods (POST/GET /v2/pods, actions, SSH command)."""

from collections.abc import Callable

from podcycle.cli import emit_json, guarded, runpod_client, settings, table, task
from podcycle.redact import printable, redact

COMMON = {
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout, messages on stderr (default: table)",
}


@task(
    iterable=["env"],
    help={
        "template_name": "template to create the pod from (default: RUNPOD_TEMPLATE_NAME, "
                         "chess-bot-training)",
        "template_id": "template id instead of a name (default: none)",
        "gpu_type_id": "GPU type id, e.g. \"NVIDIA H200\" (default: RUNPOD_GPU_TYPE_ID, else "
                       "the cheapest available that fits); validated against the catalog, or "
                       "used as given with a JSON warning when the catalog is denied",
        "gpu_count": "GPUs in the pod, 1 to 16 (default: RUNPOD_GPU_COUNT, else 1)",
        "cloud": "secure|community|all (default: secure)",
        "name": "pod name (default: RUNPOD_POD_NAME, else chess-bot-<time>)",
        "env": "KEY=VALUE for the pod, repeatable; wins over the template's env "
               "(default: none)",
        "use_runpod_training_preset_env": "layer the helper's service defaults under --env "
                                          "(default: off; the template decides)",
        "wait": "wait until the pod is RUNNING with SSH (default: off)",
        "max_minutes": "spend guard: the pod stops itself this many minutes after it boots, "
                       "even if this machine dies; 0.5 to 43200 (30 days), and a RunPod pod "
                       "needs a few minutes to boot (default: RUNPOD_MAX_MINUTES, else none)",
        "max_cost": "spend guard in USD: the pod stops itself once its price has cost this "
                    "much; 0.01 to 10000, and at least half a minute at the pod's price "
                    "(default: RUNPOD_MAX_COST, else none)",
        "network_volume": "network volume (name or id) to mount at /runpod-volume; pins the "
                          "pod to the volume's data centre (default: RUNPOD_NETWORK_VOLUME, "
                          "else none)",
        "allow_proxy_ssh": "create the pod even when the template has no 22/tcp: SSH only "
                           "through RunPod's proxy, a shell without rsync (default: off, "
                           "refused)",
        **COMMON,
    },
)
@guarded
def provision(c, template_name=None, template_id=None, gpu_type_id=None, gpu_count=None,
              cloud=None, name=None, env=None, use_runpod_training_preset_env=False, wait=False,
              allow_proxy_ssh=False, max_minutes=None, max_cost=None, network_volume=None,
              backend=None, api_key=None, json=False):
    """Create a pod from a template on a chosen (or the cheapest) GPU type."""
    from podcycle import provision as prov
    from podcycle.backend import connect
    from podcycle.signals import restore_signals, trap_signals

    if template_name and template_id:  # the id won, and the name was never looked at
        from podcycle.errors import ConfigError

        raise ConfigError("--template-id and --template-name are both given: a pod is made "
                          "from one template", "give one of them")
    s = settings(c, template_name=template_name, template_id=template_id,
                 gpu_type_id=gpu_type_id, gpu_count=gpu_count, cloud=cloud, pod_name=name,
                 backend=backend, api_key=api_key, max_minutes=max_minutes, max_cost=max_cost,
                 network_volume=network_volume)
    pod_env = prov.parse_env(env)
    backend_ = connect(s)
    created: list[prov.Provisioned] = []  # filled with the create, signals held
    previous = trap_signals()  # SIGTERM too: the pod made must be named on the way out
    try:
        pod = _provision(prov, backend_, s, pod_env, use_runpod_training_preset_env,
                         allow_proxy_ssh, wait, created)
    except KeyboardInterrupt:
        from invoke.exceptions import Exit

        if not created:
            raise Exit("interrupted before the pod was created: nothing bills",
                       code=130) from None
        made = created[0].pod
        raise Exit(f"interrupted: pod {made.id} ({made.name}) was created and bills\n"
                   f"  → inv pod.stop {made.id} stops it (inv pod.terminate {made.id} --yes "
                   "deletes it)", code=130) from None
    except Exception:
        if created:  # whatever failed after the create, the pod that bills is named
            from podcycle.config import say

            made = created[0].pod
            say(f"pod {made.id} ({made.name}) was created and bills: inv pod.stop {made.id} "
                f"stops it (inv pod.terminate {made.id} --yes deletes it)")
        raise
    finally:
        restore_signals(previous)
    if json:
        emit_json(pod.to_json())
    else:
        from podcycle.pods import SUMMARY_HEADERS, summary_row

        table([summary_row(pod)], SUMMARY_HEADERS)


def _provision(prov, backend_, s, pod_env, use_preset_env, allow_proxy_ssh, wait, created):
    """pod.provision's create (recorded in `created` as it is made) and its optional wait."""
    import time

    from podcycle import sshkeys
    from podcycle.config import say

    # The key pod.ssh then uses: RUNPOD_SSH_KEY when set (registered on the local RunPod,
    # checked to be on the account on RunPod), else the backend's own (the local RunPod's).
    # The local RunPod's own key was registered in its place, and pod.ssh got "Permission
    # denied (publickey)".
    key_path = backend_.own_ssh_key
    if sshkeys.given(s):
        try:
            key_path = sshkeys.private_key(s, backend_.own_ssh_key)
        except (sshkeys.KeyLocked, sshkeys.KeyNotForCycle) as exc:  # pod.ssh's ssh takes it:
            key_path = exc.path  # only its .pub is needed here
    made = prov.provision_pod(
        backend_, s, name=s.pod_name or time.strftime("chess-bot-%Y%m%d-%H%M%S"), env=pod_env,
        use_preset_env=use_preset_env, key_path=key_path,
        allow_proxy_ssh=allow_proxy_ssh, record=created.append)
    pod = made.pod
    say(f"created pod {pod.id} ({pod.name}) on {s.gpu_count}x {made.gpu_id}, "
        f"{made.cloud} cloud, template {made.template['name']}"
        + (f", about ${made.offer.price_per_hour:.2f}/h" if made.offer else ""))
    if made.volume:
        from podcycle.volumes import PINNED, VOLUME_PATH

        say(f"mounts network volume {made.volume['name']} ({made.volume['id']}) at "
            f"{VOLUME_PATH}; {PINNED.format(dc=made.volume['dataCenter'])}")
    if made.guard:
        say(f"spend guard: the pod stops itself {made.guard.minutes:g} minute(s) after it "
            f"boots ({made.guard.reason})")
    if wait:
        pod = prov.wait_ready(backend_.client, pod.id, timeout=s.ready_timeout, progress=say,
                              left_billing=True,
                              proxy_ok=allow_proxy_ssh and not prov.direct_ssh(made.template))
    return pod


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def status(c, pod_id, backend=None, api_key=None, json=False):
    """Show one pod: status, GPU, cost, SSH endpoint."""
    from podcycle.pods import SUMMARY_HEADERS, summary_row
    from podcycle.runpod.models import validate_pod_id

    pod_id = validate_pod_id(pod_id)
    pod = runpod_client(c, backend, api_key).get_pod(pod_id)
    if json:
        emit_json(pod.to_json())
    else:
        table([summary_row(pod)], SUMMARY_HEADERS)


@task(name="list", help={
    "billing": "only the pods whose GPU time bills: provisioning, starting or running "
               "(default: every pod, stopped ones too)",
    "name": "only the pods whose name holds this text, any case (e.g. a run id; "
            "default: every pod)", **COMMON})
@guarded
def list_(c, billing=False, name=None, backend=None, api_key=None, json=False):
    """List the account's pods (--billing: only those that bill)."""
    from podcycle.pods import SUMMARY_HEADERS, select_pods, summary_row

    pods = select_pods(runpod_client(c, backend, api_key).list_pods(), billing=billing,
                       name=name)
    if json:
        emit_json([p.to_json() for p in pods])
    else:
        table([summary_row(p) for p in pods], SUMMARY_HEADERS)


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def stop(c, pod_id, backend=None, api_key=None, json=False):
    """Stop a pod (GPU released, disk kept); an already stopped pod is fine."""
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.leftovers import record_stop_by_hand
    from podcycle.pods import no_such_pod, stop_pod
    from podcycle.runpod.models import validate_pod_id

    pod_id = validate_pod_id(pod_id)
    s = settings(c, backend=backend, api_key=api_key)
    client = connect(s).client
    outcome = stop_pod(client, pod_id)
    if outcome == "gone":
        raise no_such_pod(pod_id, "stopped")
    run_id = record_stop_by_hand(s, pod_id, outcome)
    say(f"pod {pod_id}: {outcome}" + (f" (recorded in run {run_id})" if run_id else ""))
    if json:
        emit_json({**client.get_pod(pod_id).to_json(), "outcome": outcome})


@task(help={"pod_id": "the pod's id",
            "yes": "really terminate it: its disk (and a model not yet collected on it) is "
                   "deleted for good (default: refuse; inv pod.stop keeps the disk)",
            **COMMON})
@guarded
def terminate(c, pod_id, yes=False, backend=None, api_key=None, json=False):
    """Terminate a pod for good (its disk is deleted); asks for --yes."""
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.errors import ConfigError, PodCycleError
    from podcycle.leftovers import (
        held_text,
        lost_model_line,
        record_stop_by_hand,
        uncollected_model,
    )
    from podcycle.pods import no_such_pod
    from podcycle.runpod.errors import NotFound
    from podcycle.runpod.models import validate_pod_id

    pod_id = validate_pod_id(pod_id)
    s = settings(c, backend=backend, api_key=api_key)
    holder = uncollected_model(s, pod_id=pod_id)
    if not yes and holder:
        raise ConfigError(f"pod {pod_id} holds {held_text(holder)}, and terminating it "
                          "deletes its disk for good: refused without --yes",
                          f"bring the model home first: inv cycle.collect -r {holder[0]} (inv "
                          f"pod.stop {pod_id} stops it and keeps the disk)")
    client = connect(s).client
    if not yes:  # as volume.delete, cluster.delete and registry.delete: looked up first
        try:
            client.get_pod(pod_id)
        except NotFound:  # a typo was told to give --yes, and then a raw 404
            raise no_such_pod(pod_id, "terminated") from None
        except PodCycleError:
            pass  # no answer: the refusal below says what to do all the same
        raise ConfigError(f"terminating pod {pod_id} deletes its disk for good (a model not "
                          "yet collected on it goes too): refused without --yes",
                          f"inv pod.terminate {pod_id} --yes (inv pod.stop {pod_id} stops it "
                          "and keeps the disk)")
    from podcycle.pods import terminate_pod

    try:
        terminate_pod(client, pod_id)  # the settings resolved once, above
    except NotFound:
        raise no_such_pod(pod_id, "terminated") from None
    run_id = record_stop_by_hand(s, pod_id, "terminated", by="pod.terminate")
    say(f"terminated pod {pod_id}" + (f" (recorded in run {run_id})" if run_id else ""))
    if holder:
        say(lost_model_line(holder, "the pod's disk"))
    if json:
        emit_json({"id": pod_id, "status": "TERMINATED"})


@task(help={"pod_id": "the pod's id",
            "print": "only print the ssh command, do not connect (default: connect)",
            "command": "run this command on the pod instead of opening a shell "
                       "(default: a shell)",
            **COMMON})
@guarded
def ssh(c, pod_id, print=False, command=None, backend=None, api_key=None, json=False):
    """Open a shell on a pod (direct SSH, else the proxy); --print shows the command."""
    import shlex
    import sys

    from invoke.exceptions import Exit

    from podcycle import sshkeys
    from podcycle.backend import connect
    from podcycle.config import cache_root, say
    from podcycle.errors import PodCycleError
    from podcycle.pods import (
        recorded_key,
        run_ssh,
        ssh_argv,
        ssh_command,
        ssh_failure,
        ssh_target,
    )
    from podcycle.runpod.models import validate_pod_id

    pod_id = validate_pod_id(pod_id)
    s = settings(c, backend=backend, api_key=api_key)
    backend_ = connect(s)
    pod = backend_.client.get_pod(pod_id)
    try:
        key = sshkeys.private_key(s, backend_.own_ssh_key)
    except (sshkeys.KeyLocked, sshkeys.KeyNotForCycle) as exc:  # ssh itself takes it (it
        key = exc.path  # asks for the passphrase, it talks to the security key)
    except PodCycleError as exc:  # the command is still useful without -i: said, not hidden
        key = None
        say(f"warning: no SSH key is given to ssh: {exc.message} ({exc.remedy}); it tries "
            "your ssh-agent's and ~/.ssh/config's keys")
    kind, _, note = ssh_command(pod, key)
    known_hosts = cache_root() / "known_hosts" / pod.id
    argv = ssh_argv(pod, key, known_hosts, s)
    user, host, port, given = ssh_target(pod, s)
    if given:  # as for the cycle's steps
        note = (f"{note} " if note else "") + f"{given}, as for the cycle's steps: " \
            f"{user}@{host}:{port}"
    printed = shlex.join(argv)  # the very command pod.ssh runs (its per-pod known_hosts)
    if json:
        emit_json({"kind": kind, "command": printed, "note": note})
        return
    if note:
        say(f"note: {note}")
    if print:
        sys.stdout.write(printed + "\n")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # ssh runs on this terminal, for a shell (Ctrl-D ends it) and for a command, whose exit
    # code is pod.ssh's; a Ctrl-C or a kill reaches ssh itself. When ssh could not connect or
    # log in, its own words are followed by why, for a pod, and what to do.
    code, said = run_ssh([*argv, command] if command else argv)
    failure = ssh_failure(pod, code, said, user=user, host=host, port=port, key=key,
                          known_hosts=known_hosts, given=given,
                          status=lambda: backend_.client.get_pod(pod.id).status.value,
                          made_for=lambda: recorded_key(s.artifacts_dir, pod.id))
    if failure is not None:
        raise failure
    if code:
        raise Exit(code=code)


def _pod_port(c, pod_id, port, backend, api_key):
    """(pod, URL of its `port`/http): RunPod's HTTP proxy, or the local pod's mapping."""
    from podcycle.backend import connect
    from podcycle.pods import http_url
    from podcycle.runpod.models import validate_pod_id

    backend_ = connect(settings(c, backend=backend, api_key=api_key))
    pod = backend_.client.get_pod(validate_pod_id(pod_id))
    return pod, http_url(pod, port, backend_.http_proxy)


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def health(c, pod_id, backend=None, api_key=None, json=False):
    """Ask the pod's inference API how it is (GET /healthz): up, and which model."""
    from podcycle.pods import ask_health

    pod, url = _pod_port(c, pod_id, 8000, backend, api_key)
    answer = ask_health(pod, url)
    if json:
        emit_json(answer)
        return
    # What the pod answers is shown, never obeyed by the terminal.
    if answer.get("model_loaded"):
        print(printable(f"ok: {url} answers; model {answer.get('model_path')}"))
    else:
        print(printable(f"ok: {url} answers, but no model is loaded ({answer.get('detail')}); "
                        "POST /move waits for a model.pt under the pod's artifacts"))


@task(help={"pod_id": "the pod's id",
            "fen": "the position, as FEN (default: the start position)",
            "top_k": "candidates to list, 1 to 218 (the most legal moves a position has) "
                     "(default: 3)",
            **COMMON})
@guarded
def move(c, pod_id, fen=None, top_k=None, backend=None, api_key=None, json=False):
    """Ask the pod's inference API for a move (POST /move {fen})."""
    from podcycle.cli import number
    from podcycle.pods import ask_move

    fen = fen or "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1"
    top_k = number("top-k", top_k, minimum=1, maximum=218, example=3) or 3
    # The FEN is checked here, as the pod's API checks it, before the pod is asked: on a pod
    # with no model yet a bad one got "has no model" (exit 1), a good one the next day.
    from chessbot.infer import ModelError, parse_fen
    from podcycle.errors import ConfigError

    try:
        parse_fen(fen)
    except ModelError as exc:
        raise ConfigError(f"--fen: {exc}", "give a FEN of six fields, of a legal position "
                          "with a move to play") from None
    pod, url = _pod_port(c, pod_id, 8000, backend, api_key)
    answer = ask_move(pod, url, fen, top_k)
    if json:
        emit_json(answer)
        return
    top = ", ".join(f"{m['move']} {m['prob']:.3f}" for m in answer.get("top", []))
    print(printable(f"{answer['move']}   (top: {top})"))


@task(help={"pod_id": "the pod's id",
            "login_url": "print the URL that logs in with the pod's JUPYTER_PASSWORD (it "
                         "holds the password: keep it to yourself) (default: off)", **COMMON})
@guarded
def jupyter(c, pod_id, login_url=False, backend=None, api_key=None, json=False):
    """Print the URL of the pod's JupyterLab (port 8888)."""
    from podcycle.config import say
    from podcycle.errors import PodCycleError
    from podcycle.pods import jupyter_login_url

    pod, url = _pod_port(c, pod_id, 8888, backend, api_key)
    started = pod.jupyter_started
    if login_url:
        login = jupyter_login_url(pod, url)
        if login is None:
            raise PodCycleError(f"pod {pod_id} has no JUPYTER_PASSWORD (RunPod sets one for a "
                                "pod created with startJupyter)",
                                f"its Jupyter made its own token: inv pod.ssh {pod_id} "
                                "--command 'grep -m1 token= /var/log/pod/jupyter.log'")
        print(login)
        return
    if json:
        emit_json({"url": url, "jupyter_started": started,
                   "jupyter_password": pod.jupyter_password})
        return
    if not started:
        say("note: this pod was not asked to start Jupyter (START_JUPYTER is not 1); set it "
            "in config/template.toml and create a new pod")
    elif pod.jupyter_password:
        say("the password is the pod's JUPYTER_PASSWORD, which RunPod set for startJupyter "
            f"(inv pod.jupyter {pod_id} --login-url prints a URL that logs in with it)")
    else:
        say("no JUPYTER_PASSWORD on this pod: Jupyter made its own token (inv pod.ssh "
            f"{pod_id} --command 'grep -m1 token= /var/log/pod/jupyter.log' shows it)")
    print(url)


@task(help={"stop": "stop every leftover pod listed and delete every leftover cluster; those "
                    "of open step-by-step runs are kept, and so is a cluster its run's "
                    "uncollected model is on (default: off, only list)", **COMMON})
@guarded
def leftovers(c, stop=False, backend=None, api_key=None, json=False):
    """List pods and clusters of this tool still billing with no process driving their run.

    A cluster of a run nobody drives is a leftover too; --stop deletes it (clusters cannot be
    stopped), unless its run's trained model (or a training the host lost) is only on it:
    that one is kept, and inv cycle.stop -r RUN collects it before deleting. A pod is a
    leftover when it runs (or starts), is this tool's (a run under the artifacts folder
    recorded it, or it carries the per-run name: RUNPOD_POD_NAME or pod-cycle, then the run
    id) and no live process holds its run's lock: a host killed mid-run, or a --keep-pod
    forgotten. Other billing pods (pod.provision's, the console's) are named, never stopped.
    The pod of a step-by-step run that is still open (cycle.start done, cycle.stop not yet)
    waits for its next step: it is listed apart and --stop leaves it alone."""
    from podcycle import leftovers as found_leftovers
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.errors import PodCycleError
    from podcycle.signals import how_to_continue
    s = settings(c, backend=backend, api_key=api_key)
    client = connect(s).client
    others: list = []  # billing pods no run of this tool made: named, never stopped here
    paused: list = []  # pods of runs a suspended process holds: named, never stopped here
    listed = found_leftovers.survey(client, s, others=others, suspended=paused)
    found = [item for item in listed if not item.open_run]
    waiting = [item for item in listed if item.open_run]
    listed_clusters = found_leftovers.survey_clusters(client, s)
    clusters_left = [item for item in listed_clusters if not item.open_run]
    clusters_waiting = [item for item in listed_clusters if item.open_run]
    outcomes = {}
    cluster_outcomes = {}
    failed: list[str] = []  # each one is tried: one that fails must not leave the rest billing

    def attempt(what: str, action: Callable[[], str]) -> str:
        try:
            return action()
        except PodCycleError as exc:
            failed.append(what)
            return f"FAILED, may still bill: {exc.message}"

    if stop:
        # Each under its run's lock, checked again (podcycle.leftovers.stop_one): a run taken
        # up since the listing keeps its pod; the run's record then says it stopped.
        for item in found:
            outcomes[item.pod.id] = attempt(
                f"pod {item.pod.id}", lambda item=item: found_leftovers.stop_one(client, s, item))
            say(f"pod {item.pod.id} (run {item.run_id or '-'}): {outcomes[item.pod.id]}")
        for item in waiting:
            outcomes[item.pod.id] = "kept (open step-by-step run)"
        for item in clusters_left:  # a cluster cannot be stopped: deleted, with its disks
            cluster_outcomes[item.cluster.id] = attempt(
                f"cluster {item.cluster.id}",
                lambda item=item: found_leftovers.delete_one(client, s, item))
            say(f"cluster {item.cluster.id} (run {item.run_id or '-'}): "
                f"{cluster_outcomes[item.cluster.id]}")
        for item in clusters_waiting:
            cluster_outcomes[item.cluster.id] = "kept (open step-by-step run)"
    in_flight = found_leftovers.creates_in_flight(s, client)
    if json:
        def row(listed: dict, outcome: str | None) -> dict:  # with --stop, what it did
            return {**listed, "stop": outcome} if stop else listed

        emit_json([row(item.as_dict(), outcomes.get(item.pod.id)) for item in found + waiting]
                  + [row(item.as_dict(), cluster_outcomes.get(item.cluster.id))
                     for item in clusters_left + clusters_waiting]
                  + [row(found_leftovers.other_as_dict(pod), found_leftovers.OTHER_KEPT)
                     for pod in others]
                  + [row({**found_leftovers.other_as_dict(pod), "run_id": run_id,
                          "kind": "suspended-driver", "pid": pid},
                         found_leftovers.SUSPENDED_KEPT) for pod, run_id, pid in paused]
                  + [row({"kind": "create-in-flight", "run_id": run_id,
                          "seconds_since_create": round(ago)}, None)
                     for run_id, ago in in_flight])
        _leftovers_failed(failed)
        return
    for item in clusters_left if not stop else ():  # --stop said each one as it went
        say(f"leftover {item.line()}: "
            + (item.keep_reason().replace("kept: ", "running; ", 1) if item.holds else
               f"running (delete it with inv cluster.delete {item.cluster.id} --yes, or "
               "pod.leftovers --stop)"))
    for item in clusters_waiting:
        print(item.open_line(), flush=True)
    if (clusters_left or clusters_waiting) and not (found or waiting):
        pass  # the clusters said it all
    elif not found and in_flight:  # a pod may appear: "driven by a live process" was untrue
        say("no leftover pods listed yet" + (" (an open step-by-step run's is apart)"
                                             if waiting else ""))
    elif not found:  # a leftover cluster was said above: then it is the pods that are not
        say(("no leftover pods" if clusters_left else "no leftovers") + ": every pod of this "
            "tool's runs that bills is driven by a live process"
            + (" or waits for the next step of its run" if waiting else ""))
    else:
        rows = [(i.pod.id, i.run_id or "-", i.pod.status.value, found_leftovers.duration(
            i.age_seconds), f"{i.pod.cost_per_hour:.2f}",
            "-" if i.cost_so_far is None else f"{i.cost_so_far:.4f}",
            outcomes.get(i.pod.id, "running")) for i in found]
        table(rows, ["ID", "RUN", "STATUS", "AGE", "USD/H", "USD SO FAR", "NOW"])
        elsewhere = found_leftovers.elsewhere_note(found, s.artifacts_dir)
        if elsewhere and not stop:
            say(elsewhere)
    for item in waiting:
        print(item.open_line(), flush=True)
    if found and not stop:
        say("stop them with inv pod.leftovers --stop (or one with inv pod.stop ID)"
            + ("; pods of open step-by-step runs are kept" if waiting else ""))
    for pod, run_id, pid in paused:
        say(f"note: pod {pod.id} of run {run_id} bills while the process driving it (pid {pid}) "
            f"is suspended (Ctrl-Z or SIGSTOP): {how_to_continue(pid)}")
    for run_id, ago in in_flight:
        # Its process killed as it created its pod: none listed yet, "no leftovers" said, and
        # the pod appeared a moment later.
        say(f"note: run {run_id}'s create was sent {ago:.0f}s ago by a process that ended "
            "before it recorded what it made: RunPod may still make its pod (inv cycle.stop "
            f"-r {run_id} waits for it and stops it" + ("; --stop does not)" if stop else ")"))
    if others:
        shown = ", ".join(f"{p.id} ({printable(p.name)})" for p in others[:5])
        say(f"also billing, made by no run of this tool (pod.provision, the console): "
            f"{len(others)} pod(s): {shown}{' ...' if len(others) > 5 else ''}; "
            "--stop leaves them alone: inv pod.stop ID stops one")
    _leftovers_failed(failed)


def _leftovers_failed(failed: list[str]) -> None:
    """pod.leftovers --stop ends non-zero, naming what it could not stop or delete."""
    if failed:
        from podcycle.pods import StopFailed

        raise StopFailed(f"could not stop {len(failed)} leftover(s), which may still bill: "
                         f"{', '.join(failed)}", "run inv pod.leftovers --stop again, or stop "
                         "each with inv pod.stop ID (a cluster: inv cluster.delete ID --yes)")


@task(help={"pod_id": "the pod's id",
            "follow": "keep streaming new lines until Ctrl-C or the pod stops; a dropped "
                      "connection resumes without repeating lines (default: off)",
            "tail": "lines of history to show first, 0 to 5000 (default: 100)",
            "since": "only lines from this time on: an RFC 3339 time (2026-11-29T10:00:00Z; "
                     "no zone: UTC) or an age such as 90m, 36h, 7d; at most 366 days back; "
                     "not with --tail (default: none; --tail decides)",
            "source": "container (the pod's own output) or system (RunPod's events for "
                      "it) (default: both)",
            **COMMON, "json": "one JSON object {id, ts, source, line} per line on stdout "
                              "(default: text)"})
@guarded
def logs(c, pod_id, follow=False, tail=None, since=None, source=None, backend=None,
         api_key=None, json=False):
    """Show a pod's logs (GET /v2/pods/{id}/logs); --follow streams new lines."""
    import json as _json
    import sys

    from podcycle.cli import number
    from podcycle.config import say
    from podcycle.errors import ConfigError
    from podcycle.pods import format_log, parse_since, read_logs, rfc3339, stream_end_note
    from podcycle.runpod.models import validate_pod_id

    pod_id = validate_pod_id(pod_id)
    tail = number("tail", tail, minimum=0, maximum=5000, example=100)
    if tail is not None and since:  # the spec: `tail` is ignored when `since` is given
        raise ConfigError("--tail and --since cannot be combined: RunPod ignores --tail when "
                          "--since is given", "give one of them")
    since = rfc3339(parse_since(since)) if since else None
    if source not in (None, "container", "system"):
        raise ConfigError(f"--source must be container or system, got {source!r}",
                          "omit it for both")
    client = runpod_client(c, backend, api_key)
    try:
        for event in read_logs(client, pod_id, follow=follow, source=source, tail=tail,
                               since=since, on_reconnect=say):
            # A pod's log is its own text: shown, never obeyed by the terminal (--json
            # escapes the same characters the JSON way).
            text = redact(_json.dumps(event.to_json()) if json
                          else printable(format_log(event)))
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return  # Ctrl-C is how a --follow ends
    ended = stream_end_note(client, pod_id) if follow else None
    if ended:
        say(ended)  # on stderr, past the log


@task(optional_positional=["pod_id"],
      help={"pod_id": "one pod's id, as an argument or --pod-id (default: every pod billed "
                      "in the window)",
            "since": "start of the window: an RFC 3339 time (2026-11-01 or "
                     "2026-11-01T08:00:00Z; no zone: UTC) or an age such as 90m, 36h, 7d; "
                     "in the past, at most 366 days back (default: 30d)",
            **COMMON})
@guarded
def cost(c, pod_id=None, since=None, backend=None, api_key=None, json=False):
    """What RunPod billed per pod (GET /v2/billing/pods), beside the price now.

    Without a pod id, clusters too (GET /v2/billing/clusters), in their own table."""
    from podcycle.pods import cost_table, parse_since
    from podcycle.runpod.models import validate_pod_id

    start = parse_since(since) if since else None
    pod_id = validate_pod_id(pod_id) if pod_id else None
    found = cost_table(runpod_client(c, backend, api_key), pod_id, since=start)
    if json:
        emit_json(found)
        return
    window, rows = found["window"], found["pods"]
    if found.get("clusters"):
        table([(r["cluster_id"], r["name"] or "-", f"${r['billed_usd']:.4f}", r["status"])
               for r in found["clusters"]], ["CLUSTER", "NAME", "BILLED", "STATUS"])
        if not rows:
            print(f"total ${found['total_usd']:.4f} billed from {window[0]} to {window[1]}")
            return
    if not rows:
        what = f"for pod {pod_id}" if pod_id else "for any pod"
        print(f"no billing records {what} between {window[0]} and {window[1]} (yet: RunPod's "
              "billing lags a running pod)")
        return
    table([(r["pod_id"], r["name"] or "-", f"${r['billed_usd']:.4f}",
            f"${r['price_per_hour']:.2f}/h" if r["price_per_hour"] else "-", r["status"])
           for r in rows], ["POD", "NAME", "BILLED", "PRICE NOW", "STATUS"])
    print(f"total ${found['total_usd']:.4f} billed from {window[0]} to {window[1]}")
