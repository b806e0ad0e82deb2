"""Which worker and which devices served each run of an xdist session, read back from its cache.

Usage: ``python benchmarks/gpu_records.py CACHE_DIR`` (what ``benchmarks/gpu_check.sh`` calls after its
``-n 2 --gpus-per-worker 1`` run).

xdist workers publish their runs into the cache (``published_runs``): each row names the worker and
carries the run's fingerprint, whose ``extra`` holds the device (``cuda_visible_devices``, device name
and memory), and the cache keys of its records. Printed per session and run: the workers that evaluated
it with their devices, and whether those workers' records are the same cached generations (a reference
evaluated by two workers but generated once has identical keys and one record per key in the cache).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_records.py CACHE_DIR")
    database = Path(sys.argv[1]) / "generations.sqlite3"
    if not database.is_file():
        sys.exit(f"no generation cache at {database}")
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT run_id, worker, variant, task, payload FROM published_runs ORDER BY created_at").fetchall()
        stored = {key for (key,) in connection.execute("SELECT key FROM generations")}
    if not rows:
        sys.exit(f"{database} holds no published runs: was the run made with pytest-xdist -n?")
    sessions: dict[str, dict[tuple[str, str], list[tuple[str, dict]]]] = defaultdict(lambda: defaultdict(list))
    for run_id, worker, variant, task, payload in rows:
        sessions[run_id][(variant, task)].append((worker, json.loads(payload)))
    for run_id, runs in sessions.items():
        print(f"session {run_id[:12]}")
        for (variant, task), published in runs.items():
            servers = []
            for worker, payload in published:
                extra = payload["fingerprint"]["extra"]
                name = extra.get("device_name", extra.get("device", "?"))
                servers.append(f"{worker} on CUDA_VISIBLE_DEVICES={extra.get('cuda_visible_devices')} ({name})")
            keys = [tuple(entry.get("key", "") for entry in payload["records"]) for _, payload in published]
            same = len(set(keys)) == 1
            cached = sum(1 for key in keys[0] if key in stored)
            print(f"  {variant} on {task}: {len(keys[0])} records ({cached} in the cache), served by "
                  f"{'; '.join(servers)}"
                  + ("" if len(published) == 1 else
                     f"; {'the same' if same else 'DIFFERENT'} generations on all {len(published)} workers"))


if __name__ == "__main__":
    main()
