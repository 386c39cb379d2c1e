#!/usr/bin/env python3
"""HF watch: upload new checkpoints (model.pt, metrics.json) under $REPO_DIR/artifacts to the
Hugging Face repo HF_REPO. Skips cleanly when HF_REPO is unset. HF_TOKEN comes from the env."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} [hf_watch] {message}",
          flush=True)


def main() -> int:
    repo = os.environ.get("HF_REPO", "").strip()
    if not repo:
        log("HF_REPO is not set: nothing to upload; exiting")
        return 0
    try:
        from huggingface_hub import HfApi
    except ImportError:
        log("huggingface_hub is not installed (requirements-pod.txt); cannot upload")
        return 1
    root = Path(os.environ.get("REPO_DIR", "/workspace/chess-bot")) / "artifacts"
    interval = float(os.environ.get("HF_WATCH_SECONDS", "60"))
    api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    seen: dict[Path, float] = {}
    log(f"watching {root} for checkpoints to upload to {repo}")
    while True:
        for path in sorted(root.glob("**/model.pt")) + sorted(root.glob("**/metrics.json")):
            mtime = path.stat().st_mtime
            if seen.get(path) == mtime or time.time() - mtime < 10:
                continue
            target = str(path.relative_to(root))
            try:
                api.upload_file(path_or_fileobj=str(path), path_in_repo=target, repo_id=repo)
                seen[path] = mtime
                log(f"uploaded {target}")
            except Exception as exc:  # noqa: BLE001 - retried next round
                log(f"upload of {target} failed ({type(exc).__name__}); retrying later")
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
