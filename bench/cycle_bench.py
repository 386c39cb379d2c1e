#!/usr/bin/env python3
"""A full local cycle, measured: total time, the on-pod training phase, host-side overhead
(the difference), SSH handshakes (accepted logins in the pod's sshd log) and the bytes a second
push of the unchanged dataset moves. Runs against a fresh local RunPod in a temporary folder.

Goals: overhead <= 5 s, <= 2 handshakes per cycle, re-push < 1% of the dataset's bytes.

    .venv/bin/python bench/cycle_bench.py [--epochs 3] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")


def inv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([INV, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"inv {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def handshakes(pod_dir: Path) -> int:
    log = pod_dir / "root" / "var" / "log" / "pod" / "sshd.log"
    return log.read_text().count("Accepted publickey") if log.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    from podcycle.local import control
    from podcycle.report import on_pod_train_seconds
    from podcycle.runs import RunFolder

    work = Path(tempfile.mkdtemp(prefix="cycle-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "RUNPOD_API_KEY"}
    env.update(POD_CYCLE_LOCAL_DIR=str(work / "local"), RUNPOD_BACKEND="local",
               POD_CYCLE_ARTIFACTS_DIR=str(work / "artifacts"), TRAIN_EPOCHS=args.epochs,
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    info, _ = control.up(work / "local")
    rows = []
    try:
        for index in range(args.runs):
            run_id = f"bench-{index}"
            run_env = {**env, "RUNPOD_CYCLE_RUN_ID": run_id}
            started = time.monotonic()
            inv(run_env, "cycle.full-smoke")
            wall = time.monotonic() - started
            run = RunFolder(work / "artifacts", run_id)
            pods = control.admin(info, "GET", "/_local/pods")["pods"]
            pod = next(p for p in pods if p["id"] == run.state.pod.id)
            train = on_pod_train_seconds(run)
            steps = {name: step.seconds for name, step in run.state.steps.items()}
            rows.append({"wall_s": wall, "cycle_s": run.state.total_seconds,
                         "train_s": train, "overhead_s": wall - train,
                         "handshakes": handshakes(Path(pod["dir"])), "steps": steps})
            # Second push of the unchanged dataset (the pod restarted for it).
            inv(run_env, "cycle.start")
            before = handshakes(Path(pod["dir"]))
            inv(run_env, "cycle.push-dataset")
            inv(run_env, "cycle.stop")
            run = RunFolder(work / "artifacts", run_id)
            second = [t for t in run.state.transfers if t.step == "push-dataset"][-1]
            rows[-1].update(repush_sent=second.sent, dataset_bytes=second.dataset_bytes,
                            repush_handshakes=handshakes(Path(pod["dir"])) - before)
    finally:
        control.down(work / "local")
    for row in rows:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                          for k, v in row.items()}))
    med = {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "train_s",
                                                               "overhead_s", "handshakes")}
    last = rows[-1]
    print(f"full local cycle (median of {len(rows)}): {med['wall_s']:.2f}s wall, on-pod "
          f"training {med['train_s']:.2f}s, host-side overhead {med['overhead_s']:.2f}s "
          f"(goal <= 5 s)")
    print(f"SSH handshakes per cycle: {med['handshakes']:.0f} (goal <= 2)")
    print(f"second push of the unchanged dataset: {last['repush_sent']} bytes sent for a "
          f"{last['dataset_bytes']}-byte dataset = "
          f"{100 * last['repush_sent'] / last['dataset_bytes']:.3f}% (goal < 1%), "
          f"{last['repush_handshakes']} handshake(s) for that step")
    print(f"per step (last run): {json.dumps(last['steps'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
