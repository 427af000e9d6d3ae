"""Screenshots of the manager console for the docs (docs/img/console-*.png).

Runs a real local cluster (a manager, a scheduler registered with it, a seed peer, an
HTTP origin), gives it something to show (a second cluster, tokens, a finished preheat,
a form with a refused value), and photographs the main pages in headless Chromium with
the tests' DevTools client (tests/cdp.py)::

    .venv/bin/python scripts/console_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cdp import Browser, Chromium, Page  # noqa: E402
from tests.manager_harness import (  # noqa: E402
    ROOT_PASSWORD,
    ManagerProcess,
    start_managed_cluster,
)
from tests.origin_server import ThreadedOriginServer  # noqa: E402
from tests.peer_harness import (  # noqa: E402
    PeerProcess,
    wait_for,
)

PAT = "d7y_pat_console-screenshots"
WIDTH, HEIGHT = 1280, 760


def populate(manager: ManagerProcess, seed: PeerProcess, origin_url: str) -> int:
    """Clusters, a seed peer, tokens and a preheat to look at; the preheat job's ID."""
    root = manager.signin()
    root.ok("POST", "/api/v1/clusters", {
        "name": "asia-east", "bio": "Beijing and Shanghai data centers",
        "scopes": {"idc": "bj-1|sh-2", "location": "asia|china", "cidrs": ["10.20.0.0/16"],
                   "hostnames": [r"^gpu-\d+$"]},
        "scheduler_cluster_config": {"candidate_parent_limit": 6, "filter_parent_limit": 60},
    }, status=201)  # fmt: skip
    root.ok("PATCH", "/api/v1/clusters/1", {"bio": "the default cluster of this demo"})
    root.ok("POST", "/api/v1/seed-peers", {
        "hostname": "seed", "ip": "127.0.0.1", "port": seed.piece_port,
        "download_port": seed.upload_port, "cluster_id": 1, "idc": "bj-1",
    }, status=201)  # fmt: skip
    root.ok(
        "POST",
        "/api/v1/personal-access-tokens",
        {"name": "grafana", "scopes": ["cluster"], "expires_in": 90 * 86400},
        status=201,
    )
    old = root.ok(
        "POST",
        "/api/v1/personal-access-tokens",
        {"name": "old-ci", "scopes": ["job"], "expires_in": 7 * 86400},
        status=201,
    )
    root.ok("PATCH", f"/api/v1/personal-access-tokens/{old['id']}", {"state": "inactive"})
    client = manager.client(PAT)
    jobs = []
    for name in ("models/resnet50.bin", "datasets/imagenet-val.tar"):
        jobs.append(client.ok("POST", "/api/v1/jobs", {
            "type": "preheat", "args": {"type": "file", "url": f"{origin_url}/{name}"},
            "scheduler_cluster_ids": [1],
        }, status=201)["id"])  # fmt: skip
    for job_id in jobs:
        wait_for(
            lambda job_id=job_id: (
                client.get(f"/api/v1/jobs/{job_id}")["state"] in ("SUCCESS", "FAILURE")
            ),
            f"preheat job {job_id} to finish",
            timeout=90,
        )
    return jobs[0]


async def photograph(ws_url: str, manager: ManagerProcess, job_id: int, out: Path) -> None:
    base = manager.url
    async with Browser(ws_url) as browser:
        page: Page = await browser.new_page(WIDTH, HEIGHT)
        await page.goto(f"{base}/signin")
        await page.fill("#f-name", "root")
        await page.screenshot(out / "console-signin.png", full_page=False)
        await page.fill("#f-password", ROOT_PASSWORD)
        await page.click_and_load("#signin-form button[type=submit]")
        await page.screenshot(out / "console-clusters.png")
        await page.goto(f"{base}/clusters/1")
        await page.screenshot(out / "console-cluster.png")
        await page.goto(f"{base}/clusters/new")
        await page.fill("#f-name", "europe-west")
        await page.fill("#f-scheduler_cluster_config\\.candidate_parent_limit", "50")
        await page.click_and_load("#save-cluster")
        await page.screenshot(out / "console-cluster-form.png")
        await page.goto(f"{base}/tokens")
        await page.fill("#f-name", "ci-preheat")
        await page.click("input[name=scopes][value=job]")
        await page.click_and_load("#create-token")
        await page.screenshot(out / "console-tokens.png")
        await page.goto(f"{base}/preheat/{job_id}")
        await page.screenshot(out / "console-preheat.png")
        await page.goto(f"{base}/preheat")
        await page.screenshot(out / "console-preheat-list.png")
        await page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="d7y-console-shots-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        origin = stack.enter_context(ThreadedOriginServer())
        origin.add_file("models/resnet50.bin", size=6 << 20, seed=1)
        manager, scheduler, seed = start_managed_cluster(
            stack, work, pat=PAT, hostname="scheduler-1", keepalive="1s"
        )
        scheduler.wait_log("type=seed")
        job_id = populate(manager, seed, origin.base_url.rstrip("/"))
        chromium = Chromium(work)
        ws_url = chromium.start()
        stack.callback(chromium.stop)
        started = time.monotonic()
        asyncio.run(photograph(ws_url, manager, job_id, args.out))
        shots = sorted(args.out.glob("console-*.png"))
        print(f"{len(shots)} screenshots in {args.out} ({time.monotonic() - started:.1f}s):")
        for shot in shots:
            print(f"  {shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
