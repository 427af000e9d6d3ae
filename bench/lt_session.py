"""One libtorrent session: the BitTorrent side of bench_swarm.py's namespace comparison.

Runs under the system interpreter (``/usr/bin/python3``), which is where Debian's
python3-libtorrent installs; the benchmark starts one of these per network namespace.

    lt_session.py make-torrent FILE OUT.torrent
    lt_session.py run --listen IP:PORT --torrent T --save DIR --status FILE --go FILE
                      [--seeder] [--super-seed] [--peer IP:PORT ...]

``run`` adds the torrent paused, writes one status line ("ready"), waits for the go file
(the benchmark's starting gun, so every session starts at once), then resumes and
connects to every other session directly (no tracker, no DHT: ``connect_peer``). It
writes a JSON status line every 0.25 s, and when it holds the whole file it records the
time; it keeps seeding until it is stopped (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import libtorrent as lt


def make_torrent(path: str, out: str) -> None:
    fs = lt.file_storage()
    lt.add_files(fs, path)
    torrent = lt.create_torrent(fs)  # libtorrent picks the piece size for the file size
    lt.set_piece_hashes(torrent, os.path.dirname(os.path.abspath(path)))
    with open(out, "wb") as f:
        f.write(lt.bencode(torrent.generate()))
    info = lt.torrent_info(out)
    print(json.dumps({"piece_length": info.piece_length(), "pieces": info.num_pieces()}))


def run(args: argparse.Namespace) -> int:
    stopping = False

    def on_term(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    host, port = args.listen.rsplit(":", 1)
    session = lt.session(
        {
            "listen_interfaces": f"{host}:{port}",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "alert_mask": lt.alert.category_t.error_notification,
        }
    )
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save
    flags = lt.torrent_flags.paused
    if args.seeder:
        flags |= lt.torrent_flags.seed_mode  # the file is complete: no hash check at start
    if args.super_seed:
        flags |= lt.torrent_flags.super_seeding
    params.flags = flags  # not auto-managed: nothing may pause it behind our back
    handle = session.add_torrent(params)

    status_file = open(args.status, "a", buffering=1)  # noqa: SIM115 (lives for the run)

    def report(**extra) -> None:
        s = handle.status()
        record = {
            "time": time.time(),
            "progress": s.progress,
            "seeding": s.is_seeding,
            "upload": s.total_payload_upload,
            "download": s.total_payload_download,
            "upload_all": s.total_upload,
            "peers": s.num_peers,
            **extra,
        }
        status_file.write(json.dumps(record) + "\n")

    report(state="ready")
    while not os.path.exists(args.go):
        if stopping:
            return 0
        time.sleep(0.01)
    start = time.time()
    handle.resume()
    for peer in args.peer:
        peer_host, peer_port = peer.rsplit(":", 1)
        handle.connect_peer((peer_host, int(peer_port)))
    finished_at = start if args.seeder else None
    last_report = 0.0
    while not stopping:
        now = time.time()
        if finished_at is None and handle.status().is_seeding:
            finished_at = now
            report(state="finished", finished_at=finished_at, start=start)
        if now - last_report >= 0.25:
            report(state="running" if finished_at is None else "seeding", start=start)
            last_report = now
        for alert in session.pop_alerts():
            print(alert.message(), file=sys.stderr, flush=True)
        time.sleep(0.02)
    report(state="stopped", start=start, finished_at=finished_at)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("make-torrent")
    make.add_argument("file")
    make.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("--listen", required=True)
    r.add_argument("--torrent", required=True)
    r.add_argument("--save", required=True)
    r.add_argument("--status", required=True)
    r.add_argument("--go", required=True)
    r.add_argument("--seeder", action="store_true")
    r.add_argument("--super-seed", action="store_true")
    r.add_argument("--peer", action="append", default=[])
    args = parser.parse_args()
    if args.action == "make-torrent":
        make_torrent(args.file, args.out)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
