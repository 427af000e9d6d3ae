"""``d7y pieces``: the kernels at work on a real file.

Cuts a file into pieces with the core rules, computes every piece's CRC-32 with the
compiled kernel (and with zlib.crc32 as the anchor, on the same bytes), then sends every
piece over a loopback TCP connection with sendfile(2) while the receiver reads it with
recv_into into one reused buffer, checks it against the recorded digest and marks it in
a piece bitmap. Prints the piece table, both throughputs and the checks' result.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import random
import socket
import sys
import tempfile
import time
import zlib
from pathlib import Path

from d7y.core.digest import Digest
from d7y.core.pieces import compute_piece_length, iter_pieces, size_scope
from d7y.ext import bitmap as bitmap_mod
from d7y.ext import crc32 as crc32_mod
from d7y.ext import transfer as transfer_mod


def _mib_s(nbytes: int, seconds: float) -> str:
    return f"{nbytes / max(seconds, 1e-9) / 2**20:,.0f} MiB/s"


def generate_file(path: Path, size: int, seed: int = 7) -> None:
    """Write ``size`` pseudo-random bytes (deterministic for a seed) to ``path``."""
    rng = random.Random(seed)
    block = 4 * 2**20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(rng.randbytes(n))
            left -= n


async def _send_and_verify(path: Path, pieces, digests, piece_length: int):
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    sender = socket.socket()
    sender.setblocking(False)
    connect = loop.create_task(loop.sock_connect(sender, listener.getsockname()))
    receiver, _ = await loop.sock_accept(listener)
    await connect
    receiver.setblocking(False)
    listener.close()
    got = bitmap_mod.Bitmap(len(pieces))
    buffer = bytearray(piece_length)
    fd = os.open(path, os.O_RDONLY)
    try:

        async def send_all() -> None:
            for piece in pieces:
                await transfer_mod.send_file(sender, fd, piece.offset, piece.length)

        async def receive_all() -> None:
            for piece in pieces:
                crc = await transfer_mod.recv_into_exact(receiver, buffer, piece.length)
                if f"crc32:{crc}" != digests[piece.number]:
                    raise SystemExit(f"piece {piece.number} arrived corrupted")
                got.set(piece.number)

        start = time.perf_counter()
        await asyncio.gather(send_all(), receive_all())
        return got, time.perf_counter() - start
    finally:
        os.close(fd)
        sender.close()
        receiver.close()


def run(path: Path | None, generate: int, piece_length: int | None) -> int:
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="d7y-pieces-")
        path = Path(tmp.name) / "sample.bin"
        print(f"generating {generate / 2**20:.0f} MiB of sample data at {path}")
        generate_file(path, generate)
    try:
        size = path.stat().st_size
    except OSError as exc:
        print(f"d7y pieces: cannot read {str(path)!r}: {exc.strerror}", file=sys.stderr)
        return 2
    length = compute_piece_length(size, piece_length)
    pieces = list(iter_pieces(size, length))
    print(f"file         {path}")
    print(f"size         {size:,} bytes ({size_scope(size, length).value})")
    print(f"piece length {length:,} bytes -> {len(pieces)} pieces")
    print(
        f"kernels      crc32={crc32_mod.implementation()} "
        f"bitmap={Path(bitmap_mod.backend.__file__).name} "
        f"transfer={Path(transfer_mod.backend.__file__).name}"
    )
    if size == 0:
        print("empty file: nothing to hash or send")
        return 0

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        sha = hashlib.sha256(view).hexdigest()
        for piece in pieces:  # warm the page cache so both timings read memory
            zlib.crc32(view[piece.offset : piece.end])
        start = time.perf_counter()
        digests = {
            p.number: str(Digest.crc32_of(crc32_mod.crc32(view[p.offset : p.end]))) for p in pieces
        }
        kernel_s = time.perf_counter() - start
        start = time.perf_counter()
        anchor = {p.number: zlib.crc32(view[p.offset : p.end]) for p in pieces}
        zlib_s = time.perf_counter() - start
        view.release()
    mismatches = [n for n in digests if digests[n] != f"crc32:{anchor[n]}"]

    print(f"sha256       {sha}")
    shown = pieces if len(pieces) <= 6 else [*pieces[:3], None, *pieces[-2:]]
    print("piece        offset          length  digest")
    for piece in shown:
        if piece is None:
            print("  ...")
            continue
        print(
            f"{piece.number:>5}  {piece.offset:>14,}  {piece.length:>12,}  {digests[piece.number]}"
        )
    print(
        f"crc32 kernel {_mib_s(size, kernel_s)}; zlib.crc32 {_mib_s(size, zlib_s)}; "
        f"ratio {zlib_s / max(kernel_s, 1e-9):.1f}x; digests agree: {not mismatches}"
    )

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    got, seconds = runner(_send_and_verify(path, pieces, digests, length))
    print(
        f"loopback     sendfile -> recv_into: {_mib_s(size, seconds)}; "
        f"{got.count()}/{len(pieces)} pieces verified, bitmap complete: {got.all()}"
    )
    if tmp is not None:
        tmp.cleanup()
    return 0 if not mismatches and got.all() else 1
