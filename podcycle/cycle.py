"""The training cycle: start → push-dataset → train → collect → local-validate → stop.

Each step is a method of `Cycle`; the `cycle.*` tasks call one, `full_smoke` calls them all in
order inside try/finally so the pod is stopped whatever happens (also on SIGINT/SIGTERM), and a
state file in the run folder lets a failed run resume from the step that failed. The same code
drives RunPod and the local RunPod.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from podcycle import PROJECT_ROOT, provision, remote, report, sshkeys
from podcycle.backend import Backend, connect
from podcycle.config import Settings, say
from podcycle.dataset import validate
from podcycle.errors import PodCycleError
from podcycle.redact import redact, scrub_pod
from podcycle.runpod.errors import Conflict, NotFound
from podcycle.runs import RunFolder, atomic_write, new_run_id

VALIDATION_FEN = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
# CPU-sized training for local pods unless the operator says otherwise.
LOCAL_TRAINING = {"EPOCHS": "3", "MODEL_BLOCKS": "4", "MODEL_CHANNELS": "32",
                  "BATCH_SIZE": "128"}


class StepFailed(PodCycleError):
    pass


class Interrupted(KeyboardInterrupt):
    pass


class Cycle:
    def __init__(self, settings: Settings, *, announce: Callable[[str], None] = say,
                 new_run: bool = True) -> None:
        self.settings = settings
        self.say = announce
        run_id = settings.run_id
        if not run_id and not new_run:
            runs = sorted((p for p in settings.artifacts_dir.glob("*/state.json")),
                          key=lambda p: p.stat().st_mtime)
            hint = f"; the latest here is {runs[-1].parent.name}" if runs else ""
            raise StepFailed("no run id: this step continues a run started by cycle.start",
                             f"set RUNPOD_CYCLE_RUN_ID (cycle.start printed it){hint}")
        if not run_id:
            run_id = new_run_id()
            self.say(f"run id: {run_id} (set RUNPOD_CYCLE_RUN_ID={run_id} to continue it "
                     "step by step)")
        self.run = RunFolder(settings.artifacts_dir, run_id)
        self._backend: Backend | None = None
        self._conn: Any = None
        self._endpoint: remote.Endpoint | None = None
        self._master: subprocess.Popen | None = None

    def __enter__(self) -> Cycle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = connect(self.settings)
            self.run.state.setdefault("backend", self._backend.name)
            self.run.save()
        return self._backend

    @property
    def client(self):  # noqa: ANN201
        return self.backend.client

    @property
    def pod_id(self) -> str:
        pod_id = self.run.state.get("pod_id")
        if not pod_id:
            raise StepFailed(f"run {self.run.run_id} has no pod yet",
                             f"run inv cycle.start first (RUNPOD_CYCLE_RUN_ID="
                             f"{self.run.run_id})")
        return pod_id

    def key(self) -> Path:
        return sshkeys.private_key(self.settings, self.backend.name)

    def endpoint(self) -> remote.Endpoint:
        if self._endpoint is None:
            pod = self.client.get_pod(self.pod_id)
            if pod["status"] != "RUNNING":
                raise StepFailed(f"pod {self.pod_id} is {pod['status']}, not RUNNING",
                                 "start it again with inv cycle.start (same run id), or run "
                                 "the cycle with --resume")
            self._endpoint = remote.endpoint_for(pod, self.settings, self.key())
        return self._endpoint

    def conn(self) -> Any:
        if self._conn is None:
            self._conn = remote.connect_when_ready(self.endpoint(), self.run.known_hosts,
                                                   timeout=60, progress=self.say)
        return self._conn

    def warm_master(self) -> None:
        if self._master is None and self.run.known_hosts.exists():
            self._master = remote.open_master(self.endpoint(), self.run.known_hosts,
                                              self.run.run_id)

    def rsync(self, source: str, dest: str, **kwargs: Any) -> remote.Transfer:
        if self._master is not None:
            self._master.wait()  # the shared connection is up (or failed: rsync says why)
        return remote.rsync(self.endpoint(), self.run.known_hosts, self.run.run_id, source,
                            dest, **kwargs)

    def remote_paths(self) -> dict[str, str]:
        paths = self.run.state.get("remote")
        if not paths:
            result = remote.run(self.conn(), (
                'printf "%s\\n" "${REPO_DIR:-/workspace/chess-bot}" '
                '"${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}" '
                '"${RUNPOD_PHASE_TIMING_LOG:-${REPO_DIR:-/workspace/chess-bot}/artifacts/'
                'timings/runpod_phase_times.jsonl}" "${VENV_DIR:-/opt/venv}"'), hide=True)
            repo, training, timing, venv = result.stdout.split("\n")[:4]
            out = f"{repo}/artifacts/runpod_cycles/{self.run.run_id}"
            paths = {"repo_dir": repo, "training_dir": training, "timing_log": timing,
                     "venv_dir": venv, "out": out,
                     "python": f'$( [ -x {shlex.quote(venv)}/bin/python ] && echo '
                               f'{shlex.quote(venv)}/bin/python || echo python3 )'}
            self.run.state["remote"] = paths
            self.run.save()
        return paths

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self._conn = None
        if self._endpoint is not None:
            remote.close_master(self._endpoint, self.run.run_id)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self.say(f"==> {name} (run {self.run.run_id})")
        self.run.mark(name, "running", started_at=time.time())
        try:
            yield
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.run.mark(name, status, seconds=round(time.monotonic() - started, 3),
                          error=str(getattr(exc, "message", exc))[:500])
            report.write(self.run)
            raise
        self.run.mark(name, "done", seconds=round(time.monotonic() - started, 3),
                      finished_at=time.time())
        report.write(self.run)

    # -- steps -------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        with self.step("start"):
            pod = self._existing_pod()
            if pod is None:
                pod = self._provision()
            elif pod["status"] in ("EXITED", "ERROR"):
                self.say(f"run {self.run.run_id} already has pod {pod['id']} ({pod['status']}):"
                         " starting it again instead of creating another")
                self.client.pod_action(pod["id"], "start")
                self.run.known_hosts.unlink(missing_ok=True)  # a new container, new host key
                self.run.event(f"restarted pod {pod['id']}")
            else:
                self.say(f"run {self.run.run_id} already has pod {pod['id']} ({pod['status']})")
            pod = provision.wait_for_ssh(self.client, pod["id"],
                                         timeout=self.settings.ready_timeout, progress=self.say)
            self.run.state["pod_running_since"] = time.time()
            self.run.save()
            self._endpoint = remote.endpoint_for(pod, self.settings, self.key())
            self.conn()  # records the host key (trust on first use) rsync then requires
            self.remote_paths()
            self.say(f"pod {pod['id']} answers SSH at {self.endpoint().label()}")
            return pod

    def _existing_pod(self) -> dict[str, Any] | None:
        pod_id = self.run.state.get("pod_id")
        if pod_id:
            try:
                pod = self.client.get_pod(pod_id)
                if pod["status"] != "TERMINATED":
                    return pod
            except NotFound:
                self.run.event(f"pod {pod_id} no longer exists; provisioning a new one")
        # A create that died half-way (or another terminal) may have made the pod already.
        named = [p for p in self.client.find_pods_by_name(self.pod_name())
                 if p["status"] != "TERMINATED"]
        if named:
            pod = named[0]
            self.run.state["pod_id"] = pod["id"]
            self.run.save()
            return pod
        return None

    def pod_name(self) -> str:
        # Unique per run: it is how a pod whose create call died half-way is found again.
        return f"{self.settings.pod_name or 'pod-cycle'}-{self.run.run_id}"

    def _provision(self) -> dict[str, Any]:
        s = self.settings
        key = self.key()
        line = sshkeys.public_line(key)
        keys = self.client.get_ssh_keys()
        if not sshkeys.is_registered(line, keys):
            if self.backend.name == "local":
                self.client.put_ssh_keys([*keys, line])
            else:
                raise StepFailed(f"your SSH key {key}.pub is not registered on the RunPod "
                                 "account, so the pod would refuse it",
                                 "run inv api.doctor --register-ssh-key, then run the step again")
        template = provision.resolve_template(self.client, s.template_name, s.template_id)
        gpu_id, offer = provision.choose_gpu(self.client, gpu_type_id=s.gpu_type_id,
                                             cloud=s.cloud, gpu_count=s.gpu_count,
                                             max_price=s.max_price)
        cloud = offer.cloud.lower() if offer else ("secure" if s.cloud == "all" else s.cloud)
        body = provision.create_body(name=self.pod_name(), template=template, gpu_id=gpu_id,
                                     gpu_count=s.gpu_count, cloud=cloud, env={},
                                     use_preset_env=False)
        pod = self.client.create_pod(body)
        self.run.state.update(pod_id=pod["id"], gpu_id=gpu_id, gpu_count=s.gpu_count,
                              cloud=cloud, template=template["name"],
                              price_per_hour=offer.price_per_hour if offer else pod.get("cost"),
                              pod_created_at=time.time())
        self.run.save()
        record = {"request": body, "pod": pod,
                  "template": {"id": template["id"], "name": template["name"]},
                  "offer": offer.as_dict() if offer else None, "backend": self.backend.name,
                  "api_base_url": self.backend.base_url}
        atomic_write(self.run.provision_json,
                     redact(json.dumps(scrub_pod(record), indent=2)))
        self.say(f"created pod {pod['id']} ({body['name']}): {s.gpu_count}x {gpu_id}, {cloud} "
                 f"cloud" + (f", ${offer.price_per_hour:.2f}/h" if offer else ""))
        return pod

    def push_dataset(self, dataset_dir: Path | None = None) -> dict[str, Any]:
        dataset_dir = (dataset_dir or self.settings.dataset_dir).resolve()
        summary = validate(dataset_dir)  # again: the files may have changed since start
        with self.step("push-dataset"):
            paths = self.remote_paths()
            target = f"{paths['repo_dir']}/data/dataset/{dataset_dir.name}"
            moved = self.rsync(f"{dataset_dir}/", f":{target}/",
                               extra=["--mkpath", "--delete", "--exclude", ".encoded_cache"])
            size = sum(p.stat().st_size for p in dataset_dir.glob("*.jsonl"))
            self.run.state["dataset"] = {"local": str(dataset_dir), "remote": target,
                                         "bytes": size, "sha256": summary["sha256"],
                                         "train": summary["train"], "val": summary["val"]}
            self.run.state.setdefault("transfers", []).append(
                {"step": "push-dataset", "sent": moved.sent, "received": moved.received,
                 "seconds": round(moved.seconds, 3), "dataset_bytes": size})
            self.run.save()
            self.say(f"pushed {dataset_dir} → pod:{target} ({summary['train']} train / "
                     f"{summary['val']} val positions, {moved.sent} bytes sent)")
            return summary

    def train(self, extra_args: str | None = None) -> None:
        with self.step("train"):
            paths = self.remote_paths()
            dataset = self.run.state.get("dataset")
            if not dataset:
                raise StepFailed("no dataset was pushed in this run",
                                 "run inv cycle.push-dataset first")
            out = paths["out"]
            env = {"DATASET_DIR": dataset["remote"], "OUTPUT_DIR": f"{out}/run_artifacts",
                   "METRICS_PATH": f"{out}/run_artifacts/metrics.json",
                   "RUNPOD_PHASE_TIMING_LOG": paths["timing_log"]}
            if self.backend.name == "local":
                env.update(LOCAL_TRAINING)
            if self.settings.train_epochs:
                env["EPOCHS"] = str(self.settings.train_epochs)
            if self.settings.train_batch_size:
                env["BATCH_SIZE"] = str(self.settings.train_batch_size)
            if extra_args:
                env["TRAIN_EXTRA_ARGS"] = extra_args
            assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            q = shlex.quote
            arts = f"{q(out)}/run_artifacts"
            # The infer_move smoke starts beside the training (Python and torch load while
            # the pod trains) and answers as soon as the training ends; it gives up if the
            # shell that started it goes away.
            command = (
                f"set -o pipefail; mkdir -p {arts} && cd {q(paths['repo_dir'])} || exit 2; "
                f"flag={arts}/.train_done; rm -f \"$flag\" {arts}/remote_infer_move.rc; "
                f"PY={paths['python']}; "
                f"{{ \"$PY\" scripts/infer_move.py --model {arts}/model.pt "
                f"--json --wait-for \"$flag\" --wait-pid $$ "
                f">{arts}/remote_infer_move.json 2>{arts}/remote_infer_move.err; "
                f"echo $? >{arts}/remote_infer_move.rc; }} & smoke=$!; "
                f"{assignments} bash {q(paths['training_dir'])}/train_baseline_preset.sh 2>&1 "
                f"| tee {arts}/train.log; rc=$?; "
                f"if [ $rc -ne 0 ]; then kill $smoke 2>/dev/null; exit $rc; fi; "
                f": >\"$flag\"; wait $smoke; rm -f \"$flag\"; exit 0")
            started = time.monotonic()
            result = remote.run(self.conn(), command)
            self.run.state["train_remote_seconds"] = round(time.monotonic() - started, 3)
            self.run.save()
            if result.exited != 0:
                raise StepFailed(f"training failed on the pod (exit code {result.exited})",
                                 "its log is collected into the run folder "
                                 "(collected/run_artifacts/train.log); fix and rerun with "
                                 "--resume")
            smoke = remote.run(self.conn(), (
                f"cat {arts}/remote_infer_move.rc {arts}/remote_infer_move.json; "
                f"cat {arts}/remote_infer_move.err >&2"), hide=True)
            code, _, answer = smoke.stdout.partition("\n")
            if code.strip() != "0":
                raise StepFailed("the remote infer_move smoke failed after training",
                                 f"see the pod's output: {smoke.stderr.strip()[-300:]}")
            self.say(f"remote infer_move smoke: {answer.strip()}")

    def collect(self) -> dict[str, Any]:
        with self.step("collect"):
            return self._collect()

    def _collect(self) -> dict[str, Any]:
        paths = self.remote_paths()
        out = shlex.quote(paths["out"])
        manifest = (f"mkdir -p {out}/run_artifacts {out}/timings && "
                    f"{{ cp {shlex.quote(paths['timing_log'])} {out}/timings/ 2>/dev/null || "
                    f"true; }} && cd {out} && find run_artifacts timings -type f -print0 | "
                    "sort -z | xargs -0 -r sha256sum > MANIFEST.sha256")
        made = remote.run(self.conn(), manifest, hide=True)
        if made.exited != 0:
            raise StepFailed("could not build the artifact manifest on the pod",
                             made.stderr.strip()[-300:] or "see the pod's output")
        self.run.collected.mkdir(parents=True, exist_ok=True)
        moved = self.rsync(f":{paths['out']}/", f"{self.run.collected}/")
        self.run.state.setdefault("transfers", []).append(
            {"step": "collect", "sent": moved.sent, "received": moved.received,
             "seconds": round(moved.seconds, 3)})
        self.run.save()
        files = verify_manifest(self.run.collected)
        self.say(f"collected {len(files)} files into {self.run.collected} (sha256 verified)")
        return {"files": files}

    def local_validate(self) -> dict[str, Any]:
        with self.step("local-validate"):
            verify_manifest(self.run.collected)
            model = self.run.run_artifacts / "model.pt"
            if not model.is_file():
                raise StepFailed(f"no collected model at {model}", "run inv cycle.collect first")
            answer = self._infer_move(model)
            atomic_write(self.run.infer_output, json.dumps(answer) + "\n")
            import chess

            if chess.Move.from_uci(answer["move"]) not in chess.Board(answer["fen"]).legal_moves:
                raise StepFailed(f"the model answered an illegal move {answer['move']}",
                                 "this is a bug in chessbot.infer; please report it")
            metrics = self._val_metrics(model)
            atomic_write(self.run.local_validation / "val_metrics.json",
                         json.dumps(metrics, indent=2))
            self.run.state["local_validation"] = {"move": answer["move"], **metrics}
            self.run.save()
            self.say(f"local validation: {answer['move']} for {VALIDATION_FEN}; val top-1 "
                     f"{metrics['val_top1']:.3f} (random legal {metrics['random_legal_top1']:.3f})")
            return metrics

    @staticmethod
    def _infer_move(model: Path) -> dict[str, Any]:
        """scripts/infer_move.py --json on the model, run in this process (its main(), the
        same code path as the command line) so torch is imported once, not twice."""
        import contextlib
        import importlib.util
        import io

        spec = importlib.util.spec_from_file_location(
            "infer_move_script", PROJECT_ROOT / "scripts" / "infer_move.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = script.main(["--model", str(model), "--fen", VALIDATION_FEN, "--json"])
        if code != 0:
            raise StepFailed(f"local inference failed: {err.getvalue().strip()}",
                             "the collected model may be damaged; collect again")
        return json.loads(out.getvalue())

    def _val_metrics(self, model_path: Path) -> dict[str, Any]:
        """Top-1 of the collected model on the local val set, batched (one forward pass per
        4096 positions), against the random-legal-move baseline."""
        import torch

        from chessbot.infer import load_model
        from chessbot.train import encode_file, evaluate, random_legal_top1

        dataset = Path(self.run.state.get("dataset", {}).get("local")
                       or self.settings.dataset_dir)
        arrays = encode_file(dataset / "val.jsonl")
        labels = torch.from_numpy(arrays["labels"])
        masks = torch.from_numpy(arrays["masks"])
        _, top1 = evaluate(load_model(model_path), torch.from_numpy(arrays["boards"]), labels,
                           masks, cuda=False)
        baseline = random_legal_top1(masks)
        return {"val_top1": round(top1, 5), "random_legal_top1": round(baseline, 5),
                "positions": len(labels), "dataset": str(dataset)}

    def stop(self) -> None:
        with self.step("stop"):
            self.stop_pod()

    def stop_pod(self) -> None:
        """Stop the run's pod; an already stopped pod is success. Retries transient trouble:
        a pod left running costs money."""
        pod_id = self.run.state.get("pod_id")
        self.close()
        if not pod_id:
            return
        last: Exception | None = None
        for attempt in range(4):
            try:
                self.client.pod_action(pod_id, "stop")
                break
            except Conflict:
                break  # already stopped
            except NotFound:
                self.run.event(f"pod {pod_id} was already gone at stop")
                break
            except PodCycleError as exc:
                last = exc
                time.sleep(1 + attempt)
        else:
            raise StepFailed(f"could not stop pod {pod_id}: {last}",
                             f"stop it now: inv pod.stop {pod_id} (it is billing)")
        running_since = self.run.state.pop("pod_running_since", None)
        if running_since:
            self.run.state["pod_billed_seconds"] = round(
                self.run.state.get("pod_billed_seconds", 0) + time.time() - running_since, 3)
        self.run.state["pod_stopped_at"] = time.time()
        self.run.save()
        self.say(f"pod {pod_id} stopped")


def verify_manifest(collected: Path) -> list[str]:
    manifest = collected / "MANIFEST.sha256"
    if not manifest.is_file():
        raise StepFailed(f"no manifest at {manifest}", "run inv cycle.collect")
    import hashlib

    files = []
    problems = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(None, 1)
        name = name.lstrip("*")
        path = collected / name
        files.append(name)
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            problems.append(f"{name} does not match its sha256")
    if problems:
        raise StepFailed(f"collected artifacts fail the manifest check: {'; '.join(problems)}",
                         "collect again (inv cycle.collect); do not trust these files")
    return files


def _prewarm_local_validation() -> None:
    """Import torch and the payload in the background while the pod works, so the
    local-validate step at the end does not wait a second for it."""
    import threading

    def load() -> None:
        try:
            import chessbot.infer  # noqa: F401
            import chessbot.train  # noqa: F401
        except Exception:  # noqa: BLE001 - local-validate will report it properly
            pass

    threading.Thread(target=load, name="prewarm", daemon=True).start()


def full_smoke(settings: Settings, *, dataset_dir: Path | None = None, keep_pod: bool = False,
               resume: bool = False, train_extra_args: str | None = None,
               announce: Callable[[str], None] = say) -> RunFolder:
    """All steps in order; the pod is stopped in `finally` (and on SIGINT/SIGTERM) unless
    keep_pod. With resume, steps already done in this run are skipped."""
    dataset = (dataset_dir or settings.dataset_dir).resolve()
    validate(dataset)  # before any pod exists
    cycle = Cycle(settings, announce=announce)
    run = cycle.run
    if run.state.get("steps") and not resume:
        raise PodCycleError(f"run {run.run_id} already has steps recorded",
                            "add --resume to continue it, or use a new RUNPOD_CYCLE_RUN_ID")
    started = time.monotonic()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    for sig in previous:
        signal.signal(sig, interrupted)
    failure: BaseException | None = None
    try:
        if resume and run.done("start"):
            cycle.start()  # a live pod is reused or restarted, never doubled
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("start", cycle.start),
            ("push-dataset", lambda: cycle.push_dataset(dataset)),
            ("train", lambda: cycle.train(train_extra_args)),
            ("collect", cycle.collect),
            ("local-validate", cycle.local_validate),
        ]
        for name, action in steps:
            if resume and run.done(name):
                announce(f"==> {name}: done earlier in this run, skipped")
                continue
            if name == "train":
                _prewarm_local_validation()  # the host only waits while the pod trains
            action()
            if name == "start":
                cycle.warm_master()  # the rsync connection comes up while we go on
    except BaseException as exc:
        failure = exc
        if run.step("train").get("status") == "failed" and not run.done("collect"):
            announce("training failed: collecting its log before stopping the pod")
            try:
                cycle._collect()
            except BaseException as collect_error:  # noqa: BLE001 - the first failure matters
                announce(f"could not collect after the failure: {collect_error}")
        announce(f"run folder: {run.path} (report: {run.observations}); continue with "
                 f"RUNPOD_CYCLE_RUN_ID={run.run_id} inv cycle.full-smoke --resume")
        raise
    finally:
        def hold_on(signum: int, frame: Any) -> None:
            announce("stopping the pod first; it will take a few seconds")

        for sig in previous:  # a second Ctrl-C must not abandon a billing pod
            signal.signal(sig, hold_on)
        try:
            if keep_pod:
                cycle.close()
                if run.state.get("pod_id"):
                    announce(f"--keep-pod: pod {run.state['pod_id']} is still running (and "
                             f"billing); stop it with inv cycle.stop or inv pod.stop "
                             f"{run.state['pod_id']}")
            elif run.state.get("pod_id"):
                cycle.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            run.state["total_seconds"] = round(time.monotonic() - started, 3)
            run.state["outcome"] = "ok" if failure is None else (
                "interrupted" if isinstance(failure, KeyboardInterrupt) else "failed")
            run.save()
            report.write(run, final=True)
    return run

