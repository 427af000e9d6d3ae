"""The long fuzzing run (issue 13): N generated and mutated inputs on every port of a real
scheduler + seed peer + peer, then a normal download; prints one line per port.

    python bench/fuzz_ports.py --inputs 1000000 [--ports piece,scheduler] [--seed 1]

Each port line: inputs, connections answered, bytes back, hangs, floods, refused
connections, RSS before and after (MiB), wall seconds, inputs/s. The run fails (exit 1)
on any hang, flood, refused connection, daemon exit, traceback in a daemon's log, or a
download that does not verify afterwards. tests/test_fuzz_ports_e2e.py is the short
version that CI runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fuzzing
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per port")
    parser.add_argument("--ports", default=",".join(fuzzing.PORTS), help="comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    names = [p for p in args.ports.split(",") if p]
    unknown = set(names) - set(fuzzing.PORTS)
    if unknown:
        parser.error(f"unknown port names {sorted(unknown)}: choose from {fuzzing.PORTS}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="d7y-fuzz-") as tmp:
        work = Path(tmp)
        quiet = {"log": {"level": "info"}}
        with ThreadedOriginServer() as origin, SchedulerProcess(work, **quiet) as scheduler:
            seed = PeerProcess(work, "seed", **peer_config(scheduler, "seed", seed=True), **quiet)
            guarded = {"proxy": {"upstream_allow": fuzzing.PROXY_ALLOW}}  # no relay out
            peer = PeerProcess(work, "peer", **peer_config(scheduler, "peer", **guarded), **quiet)
            with seed, peer:
                targets = fuzzing.targets(scheduler, peer)
                print(
                    "port inputs answered bytes_back hangs floods refused "
                    "rss_before_mib rss_after_mib wall_s inputs_per_s"
                )
                for name in names:
                    daemon, opener, make_input, linger = targets[name]
                    before = rss_mib(daemon.proc.pid)
                    started = time.monotonic()
                    outcome = asyncio.run(
                        fuzzing.throw(
                            opener,
                            make_input,
                            args.inputs,
                            seed=args.seed * 1_000_003 + zlib.crc32(name.encode()),
                            concurrency=args.concurrency,
                            linger=linger,
                        )
                    )
                    wall = time.monotonic() - started
                    after = rss_mib(daemon.proc.pid)
                    print(
                        f"{name} {outcome.inputs} {outcome.answered} {outcome.bytes_back} "
                        f"{len(outcome.hangs)} {len(outcome.floods)} {len(outcome.refused)} "
                        f"{before:.1f} {after:.1f} {wall:.1f} {outcome.inputs / wall:.0f}",
                        flush=True,
                    )
                    if outcome.hangs or outcome.floods or outcome.refused:
                        failed = True
                        print(
                            f"  first problems: {outcome.hangs[:3]} {outcome.floods[:3]} "
                            f"{outcome.refused[:3]}"
                        )
                    if daemon.proc.poll() is not None or not daemon.ready():
                        print(f"  {daemon.name} is down")
                        return 1
                for d in (scheduler, seed, peer):
                    text = d.log()
                    if "Traceback" in text:
                        failed = True
                        at = text.index("Traceback")
                        print(f"  traceback in {d.name}'s log:\n{text[at - 300 : at + 3000]}")
                url = origin.add_file("after-fuzz.bin", size=3 * 4 * 1024 * 1024 + 5, seed=41)
                out = work / "after-fuzz.out"
                result = peer.dfget(url, out, "--no-progress")
                ok = result.returncode == 0 and out.read_bytes() == origin.content("after-fuzz.bin")
                print(f"download after fuzzing: {'verified' if ok else 'FAILED'}")
                failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
