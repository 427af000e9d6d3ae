"""dfget: download a URL through the local dfdaemon (P2P when peers have it).

    dfget https://example.com/model.bin -O model.bin --digest sha256:<hex>
    dfget https://example.com/file -O -        # to stdout, pieces streamed in order
    dfget s3://bucket/path/key -O key          # S3 (credentials: dfdaemon's AWS settings)
    dfget oci://registry:5000/repo:tag -O blob # the single layer of an OCI artifact

Exit status: 0 success; 1 other error; 2 bad usage (also a malformed s3:// or oci://
URL); 3 dfdaemon not running; 4 the origin failed (4xx/5xx, S3 or registry errors,
missing credentials, broken transfer); 5 timeout; 6 digest mismatch (also an OCI blob
that does not match its digest); 7 disk full; 8 back-to-source disabled and no peer had
the task.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path

from d7y.core.pieces import validate_piece_length
from d7y.daemons.config import ConfigError, parse_duration, parse_size

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_ORIGIN = 4
EXIT_TIMEOUT = 5
EXIT_DIGEST = 6
EXIT_NO_SPACE = 7
EXIT_NO_SOURCE = 8

_EXIT_BY_KIND = {
    "origin": EXIT_ORIGIN,
    "digest": EXIT_DIGEST,
    "no_space": EXIT_NO_SPACE,
    "timeout": EXIT_TIMEOUT,
    "no_source": EXIT_NO_SOURCE,
    "bad_request": EXIT_USAGE,
}


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfget",
        description="Download a URL through the local dfdaemon (P2P when peers have it).",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 dfdaemon not running, 4 origin "
        "error, 5 timeout, 6 digest mismatch, 7 disk full, 8 no source.",
    )
    p.add_argument("url", help="URL to download: http(s)://, s3://bucket/key or oci://...")
    p.add_argument("-O", "--output", required=True, help="output file path, or - for stdout")
    p.add_argument("--digest", default="", help="expected sha256:<hex>, sha512:<hex> or crc32:<n>")
    p.add_argument("--tag", default="", help="tag: different tags make different tasks")
    p.add_argument("--application", default="", help="application name (part of the task ID)")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="request header for the origin (repeatable)",
    )
    p.add_argument(
        "--filtered-query-param",
        action="append",
        default=None,
        metavar="NAME",
        help="query parameter left out of the task ID (repeatable; replaces the default "
        "S3/GCS/OSS signature list)",
    )
    p.add_argument("--piece-length", default=None, help="fixed piece length (>= 4MiB)")
    p.add_argument("--timeout", default=None, help="give up after this long (e.g. 30s, 10m)")
    p.add_argument(
        "--disable-back-to-source",
        action="store_true",
        help="never fetch from the origin; fail if no peer has the task",
    )
    p.add_argument("--priority", type=int, default=0, help="scheduling priority (0-6)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--daemon-socket", default=None, help="dfdaemon's local API socket")
    return p


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise Failure(EXIT_USAGE, f"dfget: header {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def build_request(args: argparse.Namespace) -> dict:
    body: dict = {
        "url": args.url,
        "headers": dict(_parse_header(h) for h in args.header),
        "tag": args.tag,
        "application": args.application,
        "digest": args.digest,
        "disable_back_to_source": args.disable_back_to_source,
        "priority": args.priority,
    }
    if args.filtered_query_param is not None:
        body["filtered_query_params"] = args.filtered_query_param
    if args.piece_length is not None:
        try:
            body["piece_length"] = validate_piece_length(int(parse_size(args.piece_length)))
        except (ValueError, TypeError) as exc:
            raise Failure(EXIT_USAGE, f"dfget: --piece-length: {exc}") from None
    if args.output != "-":
        output = Path(args.output).expanduser().absolute()
        if output.is_dir():
            raise Failure(EXIT_USAGE, f"dfget: output {str(output)!r} is a directory")
        body["output"] = str(output)
    else:
        body["content"] = True
    return body


def default_socket() -> Path:
    from d7y.daemons.peer.config import load_peer_config

    try:
        return load_peer_config().socket_path
    except ConfigError:
        from d7y.daemons.peer.config import PeerConfig

        return PeerConfig().socket_path


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


class Progress:
    """A one-line progress bar on a terminal, plain periodic lines otherwise."""

    def __init__(self, enabled: bool, stream=sys.stderr) -> None:
        self.enabled = enabled
        self.stream = stream
        self.tty = stream.isatty()
        self._last_line = 0.0

    def update(self, snap: dict) -> None:
        if not self.enabled or (not snap.get("completed_bytes") and not self.tty):
            return
        now = time.monotonic()
        if not self.tty and now - self._last_line < 2.0:
            return
        self._last_line = now
        done = snap.get("completed_bytes", 0)
        total = snap.get("content_length")
        elapsed = max(snap.get("elapsed", 0.0), 1e-6)
        rate = done / elapsed
        pct = f"{100 * done / total:5.1f}%" if total else "  ?  "
        eta = f"{(total - done) / rate:.0f}s" if total and rate > 0 else "-"
        line = (
            f"{pct} {_human(done)}/{_human(total) if total is not None else '?'} "
            f"{_human(rate)}/s ETA {eta} origin {_human(snap.get('bytes_from_origin', 0))} "
            f"peers {_human(snap.get('bytes_from_peers', 0))}"
        )
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, snap: dict) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        total = snap.get("content_length") or 0
        elapsed = max(snap.get("elapsed", 0.0), 1e-6)
        source = (
            "local cache"
            if snap.get("from_cache")
            else (
                f"origin {_human(snap.get('bytes_from_origin', 0))}, "
                f"peers {_human(snap.get('bytes_from_peers', 0))}"
            )
        )
        self.stream.write(
            f"done: {_human(total)} in {elapsed:.2f}s ({_human(total / elapsed)}/s) from {source}\n"
        )
        self.stream.flush()


def _failure_from(snapshot: dict) -> Failure:
    error = snapshot.get("error") or {}
    kind = error.get("kind", "internal")
    message = error.get("message", "download failed")
    return Failure(_EXIT_BY_KIND.get(kind, EXIT_ERROR), f"dfget: {message}")


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over dfdaemon's unix socket, with the stdlib (dfget starts in ~50 ms)."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("dfdaemon", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Deadline:
    def __init__(self, seconds: float | None, label: str | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.label = label

    def remaining(self) -> float | None:
        if self.end is None:
            return None
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def arm(self, conn: http.client.HTTPConnection) -> None:
        """Bound the next socket operation by the time left."""
        if conn.sock is not None:
            conn.sock.settimeout(self.remaining())


def _run(args: argparse.Namespace, deadline: _Deadline) -> int:
    body = build_request(args)
    socket_path = Path(args.daemon_socket) if args.daemon_socket else default_socket()
    if not socket_path.exists():
        raise Failure(
            EXIT_NO_DAEMON,
            f"dfget: dfdaemon is not running (no socket at {socket_path}); start it with "
            f"'dfdaemon' (or 'dfdaemon --config FILE'), or pass --daemon-socket",
        )
    conn = _UnixHTTPConnection(socket_path, deadline.remaining())
    try:
        conn.request("POST", "/v1/tasks", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise Failure(
            EXIT_NO_DAEMON,
            f"dfget: cannot reach dfdaemon at {socket_path} ({exc.strerror}); is it running? "
            f"start it with 'dfdaemon'",
        ) from None
    try:
        if resp.status != 200:
            raise _failure_from(json.loads(resp.read() or b"{}"))
        if body.get("content"):
            return _to_stdout(conn, resp, body, socket_path, deadline)
        return _to_file(conn, resp, Progress(enabled=not args.no_progress), deadline)
    finally:
        conn.close()


def _to_file(conn, resp, progress: Progress, deadline: _Deadline) -> int:
    last: dict = {}
    with contextlib.suppress(ConnectionError):  # the daemon died: reported below
        while True:
            deadline.arm(conn)
            line = resp.readline()
            if not line:
                break
            if line.strip():
                last = json.loads(line)
                progress.update(last)
    if last.get("state") != "succeeded":
        if not last:
            raise Failure(EXIT_ERROR, "dfget: dfdaemon closed the connection without an answer")
        if last.get("state") != "failed":
            raise Failure(
                EXIT_ERROR,
                "dfget: dfdaemon closed the connection before the download finished (did it "
                "stop? see its log); run dfget again to resume",
            )
        raise _failure_from(last)
    progress.finish(last)
    return EXIT_OK


def _to_stdout(conn, resp, body: dict, socket_path: Path, deadline: _Deadline) -> int:
    out = sys.stdout.buffer
    try:
        while True:
            deadline.arm(conn)
            chunk = resp.read1(1024 * 1024)
            if not chunk:
                break
            out.write(chunk)
        out.flush()
        return EXIT_OK
    except http.client.IncompleteRead:
        pass  # the daemon cut the stream: ask it why below
    from d7y.core.ids import task_id as make_task_id

    tid = make_task_id(
        body["url"],
        tag=body["tag"] or None,
        application=body["application"] or None,
        piece_length=body.get("piece_length"),
        filtered_query_params=body.get("filtered_query_params"),
    )
    status = _UnixHTTPConnection(socket_path, deadline.remaining())
    try:
        status.request("GET", f"/v1/tasks/{tid}")
        raise _failure_from(json.loads(status.getresponse().read() or b"{}"))
    finally:
        status.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    deadline = None
    if args.timeout is not None:
        try:
            deadline = float(parse_duration(args.timeout))
        except ValueError as exc:
            print(f"dfget: --timeout: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return _run(args, _Deadline(deadline, args.timeout))
    except Failure as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except TimeoutError:
        print(
            f"dfget: timed out after {args.timeout} (the download goes on in dfdaemon; "
            f"run dfget again to pick it up)",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
