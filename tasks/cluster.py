"""RunPod Instant Clusters: list, inspect and delete the clusters a run trains on
(GET/DELETE /v2/clusters). A cluster cannot be stopped, only deleted."""

from podcycle.cli import emit_json, guarded, runpod_client, settings, table, task

COMMON = {
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout, messages on stderr (default: table)",
}


@task(name="list", help=COMMON)
@guarded
def list_(c, backend=None, api_key=None, json=False):
    """List the account's clusters: nodes, GPUs, member status, price, primary SSH."""
    from podcycle import clusters

    client = runpod_client(c, backend, api_key)
    found = [client.get_cluster_with_pods(item.id) for item in client.list_clusters()]
    if json:
        emit_json([clusters.cluster_json(item) for item in found])
        return
    if not found:
        from podcycle.config import say

        say("no clusters on this account")
        return
    table([clusters.summary_row(item) for item in found], clusters.SUMMARY_HEADERS)


@task(help={"cluster_id": "the cluster's id (inv cluster.list)", **COMMON})
@guarded
def status(c, cluster_id, backend=None, api_key=None, json=False):
    """Show one cluster and its nodes: rank, pod, status, GPU, price, SSH endpoint."""
    from podcycle import clusters
    from podcycle.runpod.errors import NotFound
    from podcycle.runpod.models import validate_cluster_id

    client = runpod_client(c, backend, api_key)
    cluster_id = validate_cluster_id(cluster_id)
    try:
        cluster = client.get_cluster_with_pods(cluster_id)
    except NotFound:
        refusal = clusters.pod_not_cluster(client, cluster_id)  # a node's id, as its rows say
        if refusal is None:
            raise
        raise refusal from None
    if json:
        emit_json(clusters.cluster_json(cluster))
        return
    table([clusters.summary_row(cluster)], clusters.SUMMARY_HEADERS)
    print()
    table(clusters.member_rows(cluster), clusters.MEMBER_HEADERS)


@task(help={"cluster_id": "the cluster's id (inv cluster.list)",
            "yes": "really delete: every node and its disk are gone for good (default: off, "
                   "refused)", **COMMON})
@guarded
def delete(c, cluster_id, yes=False, backend=None, api_key=None, json=False):
    """Delete a cluster: every node and its disk, for good (clusters cannot be stopped)."""
    from podcycle import clusters
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.errors import ConfigError
    from podcycle.leftovers import (
        held_text,
        lost_model_line,
        record_delete_by_hand,
        uncollected_model,
    )
    from podcycle.runpod.models import validate_cluster_id

    cluster_id = validate_cluster_id(cluster_id)
    s = settings(c, backend=backend, api_key=api_key)
    # A run's model trained there and not yet collected goes with the disks (it went in
    # silence, and the run then waited for a collect that could no longer happen).
    holder = uncollected_model(s, cluster_id=cluster_id)
    if not yes and not holder:
        # A typo was told to give --yes, and only then that no such cluster exists.
        from podcycle.errors import PodCycleError
        from podcycle.runpod.errors import NotFound

        client = connect(s).client
        try:
            client.get_cluster(cluster_id)
        except NotFound:
            raise clusters.unknown_cluster(client, cluster_id) from None
        except PodCycleError:
            pass  # no answer: the refusal below says what to do all the same
    if not yes:
        if holder:
            raise ConfigError(f"cluster {cluster_id} holds {held_text(holder)}, and deleting "
                              "it deletes every node's disk for good: refused without --yes",
                              f"bring the model home first: inv cycle.collect -r {holder[0]} "
                              f"(then inv cluster.delete {cluster_id} --yes, or inv cycle.stop "
                              f"-r {holder[0]})")
        raise ConfigError(f"deleting cluster {cluster_id} terminates every node and deletes "
                          "its disk, for good: refused without --yes",
                          f"inv cluster.delete {cluster_id} --yes (inv cluster.status "
                          f"{cluster_id} shows what it holds)")
    client = connect(s).client
    outcome = clusters.delete_cluster(client, cluster_id)
    if outcome == "gone":  # a typo must not read as "deleted" while the real cluster bills
        raise clusters.unknown_cluster(client, cluster_id)
    run_id = record_delete_by_hand(s, cluster_id, outcome)
    say(f"cluster {cluster_id}: {outcome}" + (f" (recorded in run {run_id})" if run_id else ""))
    if holder:
        say(lost_model_line(holder, "the cluster"))
    if json:
        emit_json({"id": cluster_id, "outcome": outcome})
