"""Benchmark: 1 GiB over loopback TCP, sendfile(2) vs pread + sock_sendall (the anchor).

Run: .venv/bin/python -m pytest bench/test_bench_transfer.py --benchmark-only -s

The receiver always runs the compiled backend (when built): for every 4 MiB piece it
calls recv_into_exact into one reused 4 MiB buffer, which CRC-checks the piece
(d7y.ext.crc32) as it lands; the piece CRCs are checked against the file. Only the
sending side changes between cases:

  pread+sock_sendall   the anchor: send_file_fallback (compiled), reused 1 MiB buffer
  sendfile             send_file, compiled backend
  sendfile-twin        send_file, pure-Python twin (os.sendfile)

each on the sender's uvloop and stock asyncio loop, in two topologies:

  2proc   receiver in its own process (this file run as a script, on uvloop), so each
          end has one of the machine's two cores: the realistic peer-to-peer setup.
          The receiver (one copy out of the socket + CRC) is then the slower end.
  1proc   receiver as a task on the sender's own loop: one core does both ends, so the
          sender's CPU cost shows up directly in the throughput.

Reported per case: throughput (best of 6 rounds), ratio to the anchor of the same
loop and topology, sender CPU seconds per GiB (whole process in 1proc), receiver CPU
seconds per GiB (2proc), and the receiver's peak RSS growth over its starting RSS (in
1proc the one process's). Targets: sendfile >= 1.3x the anchor; receiver RSS growth
< 16 MiB. Wall-clock figures on a shared 2-core machine are noisy: the CPU-second
columns are the steadier measure of what sendfile saves.

Reading the figures: sendfile cuts the sender's CPU about 5x (no copy into user space
and none back into the kernel). In 2proc the receiver is the slower end: its cost per
GiB (one copy out of the socket, the kernel's TCP receive path, which on loopback also
runs the ACK-clocked transmits of the sender's queued data, and the CRC, measured alone
and printed in the summary) is close to what the anchor's sender spends, so the ratio
there is bounded by the receiver; 1proc shows the CPU saving as throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
TOTAL = GiB
PIECE = 4 * MiB
BLOCK = 16 * MiB  # the file is one random 16 MiB block repeated, so CRCs are cheap to know
ANCHOR_BUF = MiB  # 256 KiB..1 MiB measured the fastest for the anchor; 4 MiB is slower

# Header the sender writes before the payload: total bytes and piece size (0, 0 = quit).
HEADER = struct.Struct("!QQ")
# What the receiver measured: digest of the piece CRCs, RSS growth at the end and at the
# peak (both over the RSS before its first transfer), CPU seconds of the transfer.
ANSWER = struct.Struct("!Iqqd")


def piece_digest(crcs: list[int]) -> int:
    return zlib.crc32(b"".join(struct.pack("!I", c) for c in crcs))


async def receive_pieces(
    impl: Any, conn: socket.socket, buf: bytearray, total: int, proc: Any, rss_start: int
) -> tuple[int, int, int, float]:
    """Receive total bytes in len(buf) pieces; return an ANSWER tuple."""
    cpu0 = time.process_time()
    piece = len(buf)
    crcs = []
    peak = 0
    for _ in range(total // piece):
        crcs.append(await impl.recv_into_exact(conn, buf, piece))
        peak = max(peak, proc.memory_info().rss)
    cpu = time.process_time() - cpu0
    rss = proc.memory_info().rss
    return piece_digest(crcs), rss - rss_start, peak - rss_start, cpu


# -- receiver process ------------------------------------------------------------------------


def receiver_main() -> None:
    """Serve transfers one at a time until a (0, 0) header; print the port first."""
    import psutil
    import uvloop

    from d7y.ext import transfer
    from d7y.ext.crc32 import crc32

    proc = psutil.Process()
    buf = bytearray(PIECE)
    buf[:] = bytes(PIECE)  # touch every page now, so RSS growth is the transfer's alone
    # The CRC alone over 1 GiB of 4 MiB pieces: how much of the receiver's CPU per GiB is
    # the checksum that recv_into_exact computes in every case (best of 3).
    crc_s_per_gib = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(GiB // PIECE):
            crc32(buf)
        crc_s_per_gib = min(crc_s_per_gib, time.perf_counter() - t0)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        hello = {
            "port": listener.getsockname()[1],
            "backend": transfer.backend.__name__,
            "crc_s_per_gib": crc_s_per_gib,
        }
        print(json.dumps(hello), flush=True)
        header = bytearray(HEADER.size)
        rss_start = proc.memory_info().rss
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            with conn:
                await transfer.recv_into_exact(conn, header, HEADER.size)
                total, piece = HEADER.unpack(header)
                if total == 0:
                    return
                assert piece == PIECE
                answer = await receive_pieces(transfer, conn, buf, total, proc, rss_start)
                await loop.sock_sendall(conn, ANSWER.pack(*answer))

    uvloop.run(serve())


# -- sender side (pytest) --------------------------------------------------------------------

if __name__ != "__main__":
    import psutil
    import pytest

    uvloop = pytest.importorskip("uvloop")

    LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.SelectorEventLoop}
    CASES = ["pread+sock_sendall", "sendfile", "sendfile-twin"]
    TOPOLOGIES = ["2proc", "1proc"]
    ANCHOR = "pread+sock_sendall"
    RESULTS: dict[tuple[str, str, str], dict[str, float]] = {}
    RECEIVER_BUF = bytearray(PIECE)  # the 1proc receiver's reused buffer
    ROUNDS = 6  # best of: the machine is shared, so the minimum time is the steady one

    def _sender_module(case: str) -> Any:
        if case == "sendfile-twin":
            return importlib.import_module("d7y.ext._transfer_py")
        return importlib.import_module("d7y.ext.transfer").backend

    def _receiver_module() -> Any:
        return importlib.import_module("d7y.ext.transfer")

    async def _send(case: str, sock: socket.socket, f: Any) -> None:
        impl = _sender_module(case)
        if case == ANCHOR:
            sent = await impl.send_file_fallback(sock, f, 0, TOTAL, bytearray(ANCHOR_BUF))
        else:
            sent = await impl.send_file(sock, f, 0, TOTAL)
        assert sent == TOTAL

    async def _transfer_2proc(case: str, path: str, port: int) -> tuple:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with sock, open(path, "rb") as f:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, HEADER.pack(TOTAL, PIECE))
            await _send(case, sock, f)
            answer = bytearray(ANSWER.size)
            await _receiver_module().recv_into_exact(sock, answer, ANSWER.size)
            return ANSWER.unpack(answer)

    async def _transfer_1proc(case: str, path: str, rss_start: int) -> tuple:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        with client, server, open(path, "rb") as f:
            for s in (client, server):
                s.setblocking(False)
            receiver = asyncio.create_task(
                receive_pieces(
                    _receiver_module(), server, RECEIVER_BUF, TOTAL, psutil.Process(), rss_start
                )
            )
            await _send(case, client, f)
            return await receiver

    @pytest.fixture(scope="module")
    def data_file(tmp_path_factory) -> Iterator[tuple[str, int]]:
        """1 GiB file (a random 16 MiB block x 64) and the digest of its piece CRCs."""
        block = os.urandom(BLOCK)
        path = tmp_path_factory.mktemp("bench_transfer") / "1gib.bin"
        with open(path, "wb") as f:
            for _ in range(TOTAL // BLOCK):
                f.write(block)
        block_crcs = [zlib.crc32(block[i : i + PIECE]) for i in range(0, BLOCK, PIECE)]
        yield str(path), piece_digest(block_crcs * (TOTAL // BLOCK))
        os.unlink(path)

    @pytest.fixture(scope="module")
    def receiver(request) -> Iterator[int]:
        """The receiver process (yields its port); stopped, then the summary printed."""
        child = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
        hello = json.loads(child.stdout.readline() or "{}")
        try:
            yield hello["port"]
        finally:
            with (
                contextlib.suppress(OSError, KeyError),
                socket.create_connection(("127.0.0.1", hello["port"]), timeout=5) as s,
            ):
                s.sendall(HEADER.pack(0, 0))
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            _report(request.config, hello)

    @pytest.mark.parametrize("topology", TOPOLOGIES)
    @pytest.mark.parametrize("loop_name", list(LOOPS))
    @pytest.mark.parametrize("case", CASES)
    def test_transfer_1gib(benchmark, data_file, receiver, case, loop_name, topology):
        path, expected_digest = data_file
        answers: list[tuple[int, int, int, float]] = []
        sender_cpu: list[float] = []
        RECEIVER_BUF[:] = bytes(PIECE)  # touched before the RSS baseline
        rss_start = psutil.Process().memory_info().rss

        def one_round() -> None:
            cpu0 = time.process_time()
            with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
                if topology == "2proc":
                    answer = runner.run(_transfer_2proc(case, path, receiver))
                else:
                    answer = runner.run(_transfer_1proc(case, path, rss_start))
            sender_cpu.append(time.process_time() - cpu0)
            answers.append(answer)

        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        assert all(a[0] == expected_digest for a in answers), "receiver saw corrupt data"
        RESULTS[(topology, loop_name, case)] = result = {
            "gib_per_s": TOTAL / benchmark.stats.stats.min / GiB,
            "sender_cpu_s_per_gib": min(sender_cpu) * GiB / TOTAL,
            "receiver_cpu_s_per_gib": min(a[3] for a in answers) * GiB / TOTAL,
            "rss_growth_mib": max(max(a[1], a[2]) for a in answers) / MiB,
        }
        benchmark.extra_info.update(result)

    def _report(config: Any, hello: dict[str, Any]) -> None:
        lines = [
            "",
            f"transfer bench: 1 GiB over loopback TCP, best of {ROUNDS} rounds; receiver "
            f"{hello.get('backend', '?')} recv_into_exact + CRC into a reused 4 MiB buffer "
            f"(the CRC alone costs the receiver {hello.get('crc_s_per_gib', float('nan')):.2f} "
            "s/GiB)",
        ]
        verdicts = []
        for topology in TOPOLOGIES:
            for loop_name in LOOPS:
                anchor = RESULTS.get((topology, loop_name, ANCHOR))
                for case in CASES:
                    r = RESULTS.get((topology, loop_name, case))
                    if r is None:
                        continue
                    ratio = r["gib_per_s"] / anchor["gib_per_s"] if anchor else float("nan")
                    if topology == "2proc":
                        cpu = (
                            f"sender {r['sender_cpu_s_per_gib']:.2f} "
                            f"receiver {r['receiver_cpu_s_per_gib']:.2f}"
                        )
                    else:
                        cpu = f"both ends {r['sender_cpu_s_per_gib']:.2f}"
                    lines.append(
                        f"  {topology} {loop_name:7} {case:18} {r['gib_per_s']:5.2f} GiB/s "
                        f"{ratio:5.2f}x anchor | cpu s/GiB: {cpu:26} | "
                        f"RSS +{r['rss_growth_mib']:.1f} MiB"
                    )
                    if case == "sendfile" and anchor:
                        cpu_ratio = anchor["sender_cpu_s_per_gib"] / r["sender_cpu_s_per_gib"]
                        flag = "" if ratio >= 1.3 else " (below 1.3x)"
                        who = "sender CPU" if topology == "2proc" else "CPU"
                        verdicts.append(
                            f"{topology}/{loop_name} {ratio:.2f}x{flag} "
                            f"with {cpu_ratio:.1f}x less {who}"
                        )
        rss = max(
            (r["rss_growth_mib"] for (t, _, _), r in RESULTS.items() if t == "2proc"),
            default=float("nan"),
        )
        lines.append(
            f"  => sendfile vs pread+sock_sendall: {', '.join(verdicts)} (target >= 1.3x); "
            f"receiver process RSS growth {rss:.1f} MiB (target < 16 MiB)"
        )
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for line in lines:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)


if __name__ == "__main__":
    receiver_main()
