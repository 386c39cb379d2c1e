"""Runs: list, show and compare the runs under the artifacts folder; TensorBoard over them."""

from podcycle.cli import ABSENT, emit_json, guarded, settings, table, task

STATUS_HELP = ("running | finished | failed | interrupted | unfinished | unreadable | foreign "
               "(default: all)")
SORT_HELP = ("started | id | status | dataset | model | params | epochs | val_loss | val_top1 | "
             "elo | cost | duration; each in its useful direction: newest, lowest loss, highest "
             "top-1, cheapest... (default: started, newest first)")


@task(name="list", help={
    "status": f"only runs with this status: {STATUS_HELP}",
    "dataset": "only runs on this dataset: its folder name, or a prefix (4+ hex digits) of "
               "its sha256 or of the encoded set's hash (default: all)",
    "since": "only runs started since: an age (90m, 36h, 7d) or a UTC date/time "
             "(2026-11-01, 2026-11-01T08:00:00Z) (default: all)",
    "sort": SORT_HELP,
    "limit": "show at most N runs (default: all)",
    "json": "print JSON on stdout, messages on stderr (default: table)",
})
@guarded
def list_(c, status=None, dataset=None, since=None, sort="started", limit=None, json=False):
    """Every run under the artifacts folder: status, dataset, model, metrics, cost."""
    import sys

    from podcycle import history
    from podcycle.cli import number

    wanted = history.check_choice("--status", status, history.STATUSES) if status else None
    column = history.check_choice("--sort", sort, tuple(history.SORTS))
    start = history.parse_since(since) if since else None
    most = number("limit", limit, minimum=1)
    artifacts = settings(c).artifacts_dir
    rows = history.select(history.read_runs(artifacts), status=wanted, dataset=dataset,
                          since=start, sort=column, limit=most)
    if json:
        emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        print(f"no runs under {artifacts}" + (" match" if status or dataset or since else ""),
              file=sys.stderr)
        return
    table(history.list_table(rows), history.LIST_HEADERS)
    note = history.opponents_note(rows)
    if note:
        print(note, file=sys.stderr)


@task(help={"run_id": "the run's id (inv runs.list shows them)",
            "json": "print JSON on stdout: the state, metrics and paths (default: text)"})
@guarded
def show(c, run_id, json=False):
    """One run on one screen: steps, pod, dataset, metrics, strength, cost, events, paths."""
    from podcycle import history

    data = history.show(settings(c).artifacts_dir, run_id)
    if json:
        emit_json(data)
    else:
        from podcycle.redact import printable, redact

        # A step's error and the metrics can hold the pod's text: shown, never obeyed.
        print(printable(redact(history.show_text(data)), lines=True), flush=True)
    if data["run"]["status"] == "unreadable":  # shown as far as it goes, but not a success
        from podcycle.errors import ConfigError

        raise ConfigError(f"run {data['run']['id']}: its state cannot be read "
                          f"({data['run']['status_detail']})",
                          f"fix or remove {data['paths']['state']} (the run can no longer "
                          "resume)")


@task(positional=["run1", "run2"], optional_positional=[f"run{i}" for i in range(3, 9)], help={
    "run1": "the first run's id (required)",
    "run2": "the second run's id (required)",
    **{f"run{i}": "one more run's id (up to 8 in all; default: none)" for i in range(3, 9)},
    "out": "where to write the picture, a .png (default: the artifacts folder, "
           "compare-ID1-ID2....png)",
    "json": "print JSON on stdout: each run's settings, results and curves, and the "
            "picture's path (default: table)",
})
@guarded
def compare(c, run1, run2, run3=None, run4=None, run5=None, run6=None, run7=None, run8=None,
            out=None, json=False):
    """Runs side by side (settings and results) and one picture of their curves."""
    import sys
    from pathlib import Path

    from podcycle import history

    ids = [r for r in (run1, run2, run3, run4, run5, run6, run7, run8) if r and r != ABSENT]
    found = history.compare(settings(c).artifacts_dir, ids, Path(out) if out else None)
    if json:
        emit_json(found.as_json())
    else:
        table(found.table(), ["", *(r.id for r in found.rows)])
        note = history.opponents_note(found.rows)
        if note:
            print(note, file=sys.stderr)
    print(f"picture: {found.picture}", file=sys.stderr if json else sys.stdout, flush=True)


@task(help={
    "port": "the port TensorBoard listens on, 1 to 65535 (default: 6006)",
    "host": "the address it listens on (default: 127.0.0.1; another address exposes every "
            "run's curves to that network, so it must be given explicitly)",
    "live": "also copy the event files of running runs from their pods every --every "
            "seconds into <run>/live/tensorboard/ (default: off)",
    "every": "seconds between live copies, 5 to 3600 (default: 30)",
    "backend": "auto|runpod|local: the backend the running runs' pods are on, for --live "
               "(default: auto)",
    "api_key": "RunPod API key, for --live (default: RUNPOD_API_KEY, then keyring)",
})
@guarded
def board(c, port=None, host="127.0.0.1", live=False, every=None, backend=None, api_key=None):
    """TensorBoard over every run's curves (URL printed); Ctrl-C ends it."""
    import importlib.util
    import subprocess
    import sys

    from invoke.exceptions import Exit

    from podcycle import history
    from podcycle.cli import number
    from podcycle.config import say
    from podcycle.errors import ConfigError
    from podcycle.signals import held_signals, ignored_signals, restore_signals, trap_signals

    port = number("port", port, minimum=1, maximum=65535, example=6006) or 6006
    every = number("every", every, float, minimum=5, maximum=3600, example=30) or 30.0
    if not host or host.strip() != host:
        raise ConfigError(f"--host {host!r} is not an address", "e.g. --host 127.0.0.1")
    s = settings(c, backend=backend, api_key=api_key)
    logdir = s.artifacts_dir.resolve()
    if not logdir.is_dir():
        raise ConfigError(f"no runs folder at {logdir}", "run a cycle first (inv cycle.start)")
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("TensorBoard is not installed in this environment",
                          "pip install -r requirements.txt (it pins tensorboard)")
    busy = history.port_in_use(host, port)
    if busy:  # found before the URL is printed, not in TensorBoard's exit afterwards
        raise ConfigError(f"cannot serve on {host}:{port}: {busy}",
                          f"pass --port {port + 1} (or end what holds {port})"
                          if busy == history.PORT_IN_USE else
                          "give --host an address of this machine: 127.0.0.1 (the default), "
                          "0.0.0.0 (every interface) or one of its own")
    if host not in history.LOOPBACK:  # once --host is known to be an address to serve on
        say(f"note: --host {host} exposes the board (every run's curves, no login) to "
            "whoever reaches that address")
    rsync_one = history.pod_rsync(s) if live else None
    said: set[str] = set()
    # SIGTERM (a kill, a supervisor's stop) and SIGHUP (its terminal closed) end the board as
    # Ctrl-C does: TensorBoard, in its own session, would otherwise serve on alone, holding
    # the port.
    previous = trap_signals()
    proc = None
    stopping = False
    try:
        with held_signals(lambda _: None):  # no signal between its start and the `finally`
            # Its own session: Ctrl-C reaches this task only, which then ends TensorBoard.
            proc = subprocess.Popen(history.board_command(sys.executable, logdir, host, port),
                                    stdout=subprocess.DEVNULL, start_new_session=True)
        shown = f"[{host}]" if ":" in host else host
        print(f"TensorBoard on http://{shown}:{port}/ over {logdir} (Ctrl-C ends it)",
              flush=True)
        if live:
            say(f"--live: every {every:g}s, the pod's tensorboard/ of each running run is "
                "copied into <run>/live/tensorboard/")
        while proc.poll() is None:
            if rsync_one is not None:
                history.sync_live(logdir, rsync_one, say, said)
            try:
                proc.wait(timeout=every if live else None)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        stopping = True
    finally:
        # A second Ctrl-C must not leave it serving: the stop is bounded (10 s, then a kill),
        # and signals wait until it is done.
        with ignored_signals():
            if stopping and proc is not None:
                say("stopping TensorBoard")
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        restore_signals(previous)
    if proc is None:  # interrupted before TensorBoard started
        return
    if proc.returncode not in (0, -15):
        raise Exit(f"error: TensorBoard ended with exit code {proc.returncode} (its message "
                   "is above; a port in use? try --port)", code=1)
