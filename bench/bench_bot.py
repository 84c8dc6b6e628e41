"""Webhook intake under load while a scan runs: 2,000 distinct push events (and 200 replays) posted over loopback
as fast as 16 client threads can, to `hfscan serve`'s app under uvicorn, while the worker scans the demo model.

Checks that every accepted event is queued exactly once and that no answer is a 5xx, and reports the intake's
latency percentiles (the scan runs in the same process, so this is the latency a Hub webhook sees on a busy
Space).

    .venv/bin/python bench/bench_bot.py --out bench/results/bot-intake
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-secret"


def _payload(repo: str, sha: str) -> bytes:
    return json.dumps({"event": {"action": "update", "scope": "repo.content"},
                       "repo": {"type": "model", "name": repo, "headSha": sha},
                       "updatedRefs": [{"ref": "refs/heads/main", "newSha": sha}]}).encode()


def _post(url: str, body: bytes) -> tuple[int, float, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"X-Webhook-Secret": SECRET})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, answer = r.status, json.loads(r.read())["status"]
    except urllib.error.HTTPError as e:
        status, answer = e.code, "error"
    return status, time.perf_counter() - t0, answer


def main() -> None:
    import uvicorn

    from scanner import zoo
    from scanner.bot import Bot, BotSettings
    from scanner.bot.app import create_app
    from scanner.sources import LocalHub

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/bot-intake")
    args = ap.parse_args()
    hub = zoo.default_cache_dir() / "demo-hub"
    repos = zoo.build_demo_hub(hub)
    work = Path(tempfile.mkdtemp(prefix="hfscan-bench-bot-"))
    bot = Bot(work, BotSettings(mode="dry-run", org_budget=10**6), SECRET, source_factory=lambda: LocalHub(hub))
    target = repos["target"]
    bot.queue.enqueue(target, LocalHub(hub).describe(target, headers=False).sha, bot.settings.key)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = uvicorn.Server(uvicorn.Config(create_app(bot), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    bot.start(1)
    while bot.queue.counts()["running"] == 0:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}/webhook"
    bodies = [_payload(f"org{i % 10}/model-{i % 50}", f"{i + 1:040x}") for i in range(args.events)]  # 0…0 = deleted
    bodies += bodies[:200]  # replays
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda b: _post(url, b), bodies))
    wall = time.perf_counter() - t0
    scanning = bot.queue.counts()["running"] == 1
    lat = sorted(r[1] for r in results)
    counts = bot.queue.counts()
    row = {"events": args.events, "replays": 200, "wall_s": round(wall, 2), "posts_per_s": round(len(bodies) / wall),
           "queued": sum(r[2] == "queued" for r in results), "duplicate": sum(r[2] == "duplicate" for r in results),
           "5xx": sum(r[0] >= 500 for r in results), "jobs_in_queue": sum(counts.values()) - 1,
           "p50_ms": round(1000 * statistics.median(lat), 1), "p99_ms": round(1000 * lat[int(0.99 * len(lat)) - 1], 1),
           "max_ms": round(1000 * lat[-1], 1), "scan_running_throughout": scanning}
    server.should_exit = True
    bot.stop(timeout=1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row))
    assert row["queued"] == args.events == row["jobs_in_queue"] and row["duplicate"] == 200 and row["5xx"] == 0


if __name__ == "__main__":
    main()
