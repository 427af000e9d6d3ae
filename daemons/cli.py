"""The ``d7y`` command: one entry point for the services and tools.

d7y pieces [FILE]        hash a file into pieces and send them over loopback
d7y dfdaemon [...]       run the peer daemon (same as ``dfdaemon``)
d7y dfget URL -O FILE    download through the daemon (same as ``dfget``)
d7y config-docs          print every config key with its default
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def dfdaemon_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dfdaemon``."""
    import asyncio

    from d7y.daemons.config import ConfigError
    from d7y.daemons.logs import setup_logging
    from d7y.daemons.peer.config import DEFAULT_CONFIG_PATH, load_peer_config
    from d7y.daemons.peer.daemon import PeerDaemon
    from d7y.daemons.peer.storage import StorageError

    parser = argparse.ArgumentParser(prog="dfdaemon", description="d7y peer daemon")
    parser.add_argument(
        "--config",
        default=None,
        help=f"YAML config file (default {DEFAULT_CONFIG_PATH} if it exists)",
    )
    parser.add_argument("--data-dir", default=None, help="override storage.data_dir")
    parser.add_argument("--seed-peer", action="store_true", help="run as a seed peer")
    parser.add_argument("--port", type=int, default=None, help="override upload.port")
    args = parser.parse_args(argv)
    overrides: dict = {}
    if args.data_dir:
        overrides.setdefault("storage", {})["data_dir"] = args.data_dir
    if args.port is not None:
        overrides.setdefault("upload", {})["port"] = args.port
    if args.seed_peer:
        overrides["seed_peer"] = True
    try:
        config = load_peer_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        run = asyncio.run
    try:
        run(PeerDaemon(config).serve_forever())
    except StorageError as exc:
        print(f"dfdaemon: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a port already in use
        print(f"dfdaemon: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def dfget_main(argv: list[str] | None = None) -> int:
    from d7y.daemons.dfget import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "dfdaemon":
        return dfdaemon_main(argv[1:])
    if argv and argv[0] == "dfget":
        return dfget_main(argv[1:])
    parser = argparse.ArgumentParser(prog="d7y", description="d7y: P2P data distribution")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dfdaemon", help="run the peer daemon (see dfdaemon --help)")
    sub.add_parser("dfget", help="download through the daemon (see dfget --help)")
    pieces = sub.add_parser("pieces", help="hash a file into pieces and send them over loopback")
    pieces.add_argument("file", nargs="?", type=Path, help="file to use (default: generate one)")
    pieces.add_argument("--generate", default="256MiB", help="size of the generated sample")
    pieces.add_argument("--piece-length", default=None, help="fixed piece length (>= 4MiB)")
    docs = sub.add_parser("config-docs", help="print every config key with its default")
    docs.add_argument("service", choices=["dfdaemon"], nargs="?", default="dfdaemon")
    args = parser.parse_args(argv)

    if args.command == "pieces":
        from d7y.daemons.config import parse_size
        from d7y.daemons.pieces_demo import run

        try:
            generate = int(parse_size(args.generate))
            piece_length = int(parse_size(args.piece_length)) if args.piece_length else None
            return run(args.file, generate, piece_length)
        except ValueError as exc:
            print(f"d7y pieces: {exc}", file=sys.stderr)
            return 2
    if args.command == "config-docs":
        from d7y.daemons.config import describe
        from d7y.daemons.peer.config import PeerConfig

        print("| key | default | meaning |\n|---|---|---|")
        for key, default, doc in describe(PeerConfig):
            print(f"| `{key}` | `{default}` | {doc} |")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
