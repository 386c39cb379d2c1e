"""Provision and control pods (POST/GET /v2/pods, actions, SSH command)."""

from invoke import task

from podcycle.cli import emit_json, guarded, settings, table

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
        "gpu_count": "GPUs in the pod (default: 1)",
        "cloud": "secure|community|all (default: secure)",
        "name": "pod name (default: RUNPOD_POD_NAME, else chess-bot-<time>)",
        "env": "KEY=VALUE for the pod, repeatable; wins over the template's env",
        "use_runpod_training_preset_env": "layer the helper's service defaults under --env "
                                          "(default: off; the template decides)",
        "wait": "wait until the pod is RUNNING with SSH (default: off)",
        **COMMON,
    },
)
@guarded
def provision(c, template_name=None, template_id=None, gpu_type_id=None, gpu_count=None,
              cloud=None, name=None, env=None, use_runpod_training_preset_env=False, wait=False,
              backend=None, api_key=None, json=False):
    """Create a pod from a template on a chosen (or the cheapest) GPU type."""
    import time

    from podcycle import provision as prov
    from podcycle.backend import connect
    from podcycle.config import say

    s = settings(c, template_name=template_name, template_id=template_id,
                 gpu_type_id=gpu_type_id, gpu_count=gpu_count, cloud=cloud, pod_name=name,
                 backend=backend, api_key=api_key)
    client = connect(s).client
    template = prov.resolve_template(client, s.template_name, s.template_id)
    gpu_id, offer = prov.choose_gpu(client, gpu_type_id=s.gpu_type_id, cloud=s.cloud,
                                    gpu_count=s.gpu_count, max_price=s.max_price)
    pod_cloud = offer.cloud.lower() if offer else ("secure" if s.cloud == "all" else s.cloud)
    body = prov.create_body(
        name=s.pod_name or time.strftime("chess-bot-%Y%m%d-%H%M%S"), template=template,
        gpu_id=gpu_id, gpu_count=s.gpu_count, cloud=pod_cloud, env=prov.parse_env(env),
        use_preset_env=use_runpod_training_preset_env)
    pod = client.create_pod(body)
    say(f"created pod {pod['id']} ({body['name']}) on {s.gpu_count}x {gpu_id}, "
        f"{pod_cloud} cloud, template {template['name']}"
        + (f", about ${offer.price_per_hour:.2f}/h" if offer else ""))
    if wait:
        pod = prov.wait_for_ssh(client, pod["id"], timeout=s.ready_timeout, progress=say)
    if json:
        emit_json(pod)
    else:
        from podcycle.pods import SUMMARY_HEADERS, summary_row

        table([summary_row(pod)], SUMMARY_HEADERS)


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def status(c, pod_id, backend=None, api_key=None, json=False):
    """Show one pod: status, GPU, cost, SSH endpoint."""
    from podcycle.backend import connect
    from podcycle.pods import SUMMARY_HEADERS, summary_row

    pod = connect(settings(c, backend=backend, api_key=api_key)).client.get_pod(pod_id)
    if json:
        emit_json(pod)
    else:
        table([summary_row(pod)], SUMMARY_HEADERS)


@task(name="list", help=COMMON)
@guarded
def list_(c, backend=None, api_key=None, json=False):
    """List the account's pods."""
    from podcycle.backend import connect
    from podcycle.pods import SUMMARY_HEADERS, summary_row

    pods = connect(settings(c, backend=backend, api_key=api_key)).client.list_pods()
    if json:
        emit_json(pods)
    else:
        table([summary_row(p) for p in pods], SUMMARY_HEADERS)


def _action(c, pod_id, action, backend, api_key, json):
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.runpod.errors import Conflict

    client = connect(settings(c, backend=backend, api_key=api_key)).client
    try:
        result = client.pod_action(pod_id, action)
    except Conflict:
        pod = client.get_pod(pod_id)
        if action == "stop" and pod["status"] == "EXITED":
            say(f"pod {pod_id} is already stopped")
            result = pod
        else:
            raise
    if action == "terminate":
        say(f"terminated pod {pod_id}")
        if json:
            emit_json({"id": pod_id, "status": "TERMINATED"})
        return
    say(f"pod {pod_id}: {result['status']}")
    if json:
        emit_json(result)


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def stop(c, pod_id, backend=None, api_key=None, json=False):
    """Stop a pod (GPU released, disk kept); an already stopped pod is fine."""
    _action(c, pod_id, "stop", backend, api_key, json)


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def terminate(c, pod_id, backend=None, api_key=None, json=False):
    """Terminate a pod for good (its disk is deleted)."""
    _action(c, pod_id, "terminate", backend, api_key, json)


@task(help={"pod_id": "the pod's id", **COMMON})
@guarded
def ssh(c, pod_id, backend=None, api_key=None, json=False):
    """Print the ssh command for a pod: direct first, else the proxy and its limits."""
    from podcycle import sshkeys
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.pods import ssh_command

    s = settings(c, backend=backend, api_key=api_key)
    backend_ = connect(s)
    pod = backend_.client.get_pod(pod_id)
    try:
        key = sshkeys.private_key(s, backend_.name)
    except Exception:  # noqa: BLE001 - the command is still useful without -i
        key = None
    kind, command, note = ssh_command(pod, key)
    if json:
        emit_json({"kind": kind, "command": command, "note": note})
        return
    if note:
        say(f"note: {note}")
    print(command)
