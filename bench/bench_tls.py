"""What TLS costs on the piece port: piece transfer throughput, plain vs mutual TLS.

Run: .venv/bin/python bench/bench_tls.py [--size 1GiB] [--rounds 3] [--connections 1]

A sender process serves pieces the way dfdaemon's piece server does: it reads GetPiece
frames and answers each with a Piece frame and the 4 MiB piece from a content file
through the stream layer (d7y.daemons.stream): ``send_file`` is sendfile(2) on a plain
stream and the copy path (pread, encrypt, send) under TLS. The receiver (this process)
asks for the pieces one after another on each of ``--connections`` connections (a
child keeps one piece in flight per connection and opens several per parent), and reads
each into one reused buffer with ``read_payload`` (recv_into +
CRC-32 plain; decrypt + CRC under TLS), checking every CRC against the file. Each end
is its own process (one core each on a 2-core machine), both on uvloop; plain and TLS
alternate round by round, the best round of each is reported with both processes' CPU
seconds per GiB. The certificates are made by d7y.daemons.certs (ECDSA P-256, TLS 1.3;
the cipher OpenSSL negotiates is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from d7y.core.messages import GetPiece, Piece
from d7y.daemons import certs
from d7y.daemons.config import parse_size
from d7y.daemons.framing import FramedStream
from d7y.daemons.listener import Listener
from d7y.daemons.tls import TLSConfig, client_context, server_context

MiB = 1 << 20
GiB = 1 << 30
PIECE = 4 * MiB


def _tls(directory: Path, name: str) -> TLSConfig:
    return TLSConfig(
        enabled=True,
        ca_cert=directory / "ca.crt",
        cert=directory / f"{name}.crt",
        key=directory / f"{name}.key",
    )


async def _serve(content: Path, certdir: Path | None) -> None:
    size = content.stat().st_size
    fd = os.open(content, os.O_RDONLY)

    async def handle(stream, _address) -> None:
        framed = FramedStream(stream)
        try:
            while True:
                stream_id, request = await framed.read()
                offset = request.number * PIECE
                length = min(PIECE, size - offset)
                header = Piece(task_id=request.task_id, number=request.number, offset=offset,
                               length=length, digest="crc32:0")  # fmt: skip
                await framed.send(header, stream_id)
                await stream.send_file(fd, offset, length)
        except EOFError:
            pass
        finally:
            framed.close()

    tls = server_context(_tls(certdir, "sender")) if certdir else None
    listener = Listener(handle, tls=tls)
    await listener.start("127.0.0.1", 0)
    print(listener.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await listener.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(usage.ru_utime + usage.ru_stime, flush=True)


async def _fetch(conn: FramedStream, numbers: range, crcs: list[int]) -> None:
    buf = bytearray(PIECE)
    for number in numbers:
        await conn.send(GetPiece(task_id="b" * 64, number=number), 1)
        _, piece = await conn.read()
        crc = await conn.read_payload(buf, piece.length)
        if crc != crcs[number]:
            raise AssertionError(f"piece {number}: CRC {crc} != {crcs[number]}")


async def _receive(
    port: int, certdir: Path | None, size: int, crcs: list[int], connections: int
) -> tuple[float, str]:
    tls = client_context(_tls(certdir, "receiver")) if certdir else None
    conns = [await FramedStream.connect("127.0.0.1", port, tls=tls) for _ in range(connections)]
    cipher = conns[0].stream._ssl.cipher()[0] if certdir else "-"
    start = time.perf_counter()
    await asyncio.gather(
        *(_fetch(conn, range(i, len(crcs), connections), crcs) for i, conn in enumerate(conns))
    )
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return size / elapsed, cipher


def _round(content: Path, certdir: Path | None, crcs: list[int], size: int, connections: int):
    argv = [sys.executable, __file__, "--serve", str(content)]
    if certdir:
        argv += ["--certs", str(certdir)]
    sender = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(sender.stdout.readline())
    before = resource.getrusage(resource.RUSAGE_SELF)
    import uvloop

    rate, cipher = uvloop.run(_receive(port, certdir, size, crcs, connections))
    after = resource.getrusage(resource.RUSAGE_SELF)
    sender.stdin.close()
    sender_cpu = float(sender.stdout.readline())
    sender.wait()
    receiver_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return rate, sender_cpu * GiB / size, receiver_cpu * GiB / size, cipher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1, help="pieces in flight")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.serve:
        uvloop.run(_serve(args.serve, args.certs))
        return 0
    size = int(parse_size(args.size))
    with tempfile.TemporaryDirectory(prefix="d7y-bench-tls-") as work:
        work = Path(work)
        content = work / "content"
        block = os.urandom(PIECE)
        with open(content, "wb") as f:
            for _ in range(size // PIECE):
                f.write(block)
        crcs = [zlib.crc32(block)] * (size // PIECE)
        size = len(crcs) * PIECE
        ca = certs.create_ca(work / "certs")
        certs.issue(work / "certs", "sender", "peer", ca)
        certs.issue(work / "certs", "receiver", "peer", ca)
        best: dict[str, tuple] = {}
        for _ in range(args.rounds):
            for name, certdir in (("plain", None), ("tls", work / "certs")):
                result = _round(content, certdir, crcs, size, args.connections)
                if name not in best or result[0] > best[name][0]:
                    best[name] = result
    print(
        f"piece port, {size // MiB} MiB in {PIECE // MiB} MiB pieces over "
        f"{args.connections} connection(s), best of {args.rounds}"
    )
    print(f"{'case':<6} {'MiB/s':>8} {'sender CPU s/GiB':>17} {'receiver CPU s/GiB':>19}  cipher")
    for name, (rate, sender_cpu, receiver_cpu, cipher) in best.items():
        print(f"{name:<6} {rate / MiB:>8.0f} {sender_cpu:>17.2f} {receiver_cpu:>19.2f}  {cipher}")
    print(f"TLS / plain throughput: {best['tls'][0] / best['plain'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
