"""The local RunPod: a v2 API server on 127.0.0.1 whose pods are local processes."""

from pathlib import Path

from podcycle.cli import guarded, settings, task


@task(help={"local_dir": "state folder (default: .pod-cycle/local, or POD_CYCLE_LOCAL_DIR)"})
@guarded
def up(c, local_dir=None):
    """Start the local RunPod server in the background and print its base URL."""
    from podcycle.config import say
    from podcycle.local import control

    info, started = control.up(settings(c, local_dir=local_dir).local_dir)
    say("started the local RunPod" if started else "the local RunPod is already running")
    control.say_other_checkout(info, started)
    print(info["url"])


@task(help={"local_dir": "state folder (default: .pod-cycle/local, or POD_CYCLE_LOCAL_DIR)",
            "force": "stop it even while a cycle of this checkout drives one of its pods "
                     "(default: refused)"})
@guarded
def down(c, local_dir=None, force=False):
    """Stop the local RunPod server and every pod process it started."""
    from podcycle.config import say
    from podcycle.errors import PodCycleError
    from podcycle.local import control
    from podcycle.runs import driving, freeing

    s = settings(c, local_dir=local_dir)
    live = driving(s.artifacts_dir, control.running_pods(s.local_dir)) if not force else []
    if live:
        # Its pods went with the server, mid-training, and the cycle then said "POD STILL
        # RUNNING" (its stop could not reach the API that was taken down).
        run_id, pod_id, holder = live[0]
        more = f" (and {len(live) - 1} more run(s))" if len(live) > 1 else ""
        pid = holder.get("pid")
        by = f"process {pid}" if isinstance(pid, int) else "a live process"
        raise PodCycleError(
            f"run {run_id} is driven by {by} on pod {pod_id} of this local RunPod{more}: "
            "local.down would stop its pod under it",
            f"{freeing(holder)}; inv local.down --force stops everything now")
    was = control.down(s.local_dir)
    say("stopped the local RunPod and its pods" if was else "the local RunPod was not running"
        " (left-over pod processes, if any, were ended)")


@task(help={"local_dir": "state folder (default: .pod-cycle/local, or POD_CYCLE_LOCAL_DIR)",
            "json": "print {url, pid, api_key, running} as JSON (the key is local-only)"})
@guarded
def status(c, local_dir=None, json=False):
    """Say whether the local RunPod runs, where, and its local-only key (with --json)."""
    from invoke.exceptions import Exit

    from podcycle.local import control

    folder = settings(c, local_dir=local_dir).local_dir
    info = control.status(folder)
    if not info:
        control.check_reachable(folder, grace=control.START_GRACE)
        info = control.status(folder)  # it may have come up meanwhile
    if json:
        # The local key is a throwaway for this machine's loopback server, not a RunPod secret.
        import json as _json
        import sys

        sys.stdout.write(_json.dumps(
            {"running": bool(info), "url": info and info["url"], "pid": info and info["pid"],
             "api_key": info and info["api_key"]}) + "\n")
        if not info:
            raise Exit(code=1)
        return
    if not info:
        import shlex

        # The folder asked for by flag is given on: without it, local.up starts another.
        again = f" --local-dir {shlex.quote(str(local_dir))}" if local_dir else ""
        raise Exit(f"the local RunPod is not running (start it with inv local.up{again})",
                   code=1)
    print(f"running: {info['url']} (pid {info['pid']}, state in {info['state_dir']})")
    held = control.inventory(Path(info["state_dir"]))
    pods = ", ".join(f"{n} {status}" for status, n in sorted(held["pods"].items())) or "none"
    print(f"pods: {pods}")
    for cluster in held["clusters"]:
        members = ", ".join(f"{n} {status}" for status, n in sorted(cluster["members"].items()))
        print(f"cluster {cluster['id']} ({cluster['name']}, {cluster['nodes']} nodes): "
              f"{members or 'no members'}")

