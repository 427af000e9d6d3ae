"""Hostile frames against real daemons: an unknown message type must cost one Error.

Issue 13, defect 1: a 16-byte frame (a header with an unknown type code on a non-zero
stream, and a 4-byte body) made the scheduler answer with Error frames forever at
100% CPU (its event loop never yielded, so /healthy stopped answering), and the piece
port flood its client with Error frames. The frame must be skipped after one Error; the
connection, and every other connection, keeps working.
"""

from __future__ import annotations

import socket
import struct

import pytest

from d7y.core.messages import Error, Ping, Pong
from d7y.core.protocol import MAGIC, encode_frame
from tests import frames
from tests.peer_harness import PeerProcess, SchedulerProcess

UNKNOWN_TYPE = 0xEE
#: The attack as found: 12 header bytes (unknown type, stream 1, body of 4) + the body.
HOSTILE_FRAME = struct.pack(">2sBBII", MAGIC, 1, UNKNOWN_TYPE, 1, 4) + b"\x00\x01\x02\x03"


def read_frame(sock: socket.socket):
    header, message = frames.read_frame(sock)
    return header.stream_id, message


def assert_one_error_then_served(port: int) -> None:
    """The hostile frame gets exactly one Error on its stream; the connection is not
    wedged: a Ping sent after it is answered next (a second Error would come first if
    the frame were read again), and so is a Ping on a new connection."""
    assert len(HOSTILE_FRAME) == 16
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(HOSTILE_FRAME + encode_frame(Ping(nonce=7), 3))
        stream, error = read_frame(s)
        assert stream == 1 and isinstance(error, Error), error
        assert error.code == "unknown_message_type"
        assert f"0x{UNKNOWN_TYPE:02x}" in error.message
        assert read_frame(s) == (3, Pong(nonce=7))
    # The attacker left; nothing keeps running on its behalf.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(encode_frame(Ping(nonce=8), 5))
        assert read_frame(s) == (5, Pong(nonce=8))


def test_scheduler_answers_an_unknown_type_once_and_keeps_serving(tmp_path):
    with SchedulerProcess(tmp_path) as scheduler:
        assert_one_error_then_served(scheduler.port)
        assert scheduler.ready(), "/healthy stopped answering"
        assert scheduler.log().count(f"unknown message type 0x{UNKNOWN_TYPE:02x}") == 1
        assert scheduler.proc.poll() is None


def test_piece_port_answers_an_unknown_type_once_and_keeps_serving(tmp_path):
    with PeerProcess(tmp_path) as peer:
        assert_one_error_then_served(peer.piece_port)
        assert peer.healthy(), "/healthy stopped answering"
        assert peer.log().count(f"unknown message type 0x{UNKNOWN_TYPE:02x}") == 1


@pytest.mark.parametrize("target", ["scheduler", "piece_port"])
def test_a_stream_of_bad_frames_is_cut_off(tmp_path, target):
    """Skipping a bad frame is for a peer with one bug, not for a flood: after a few
    bad frames in a row the connection is closed, so the Error answers and the log
    lines one connection can cause are bounded."""
    daemon = SchedulerProcess(tmp_path) if target == "scheduler" else PeerProcess(tmp_path)
    with daemon:
        port = daemon.port if target == "scheduler" else daemon.piece_port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(HOSTILE_FRAME * 1000)
            errors = 0
            with pytest.raises((EOFError, ConnectionResetError)):
                while True:
                    _, message = read_frame(s)
                    assert isinstance(message, Error), message
                    errors += 1
        assert 1 <= errors <= 32, errors
        assert daemon.log().count(f"unknown message type 0x{UNKNOWN_TYPE:02x}") <= 32
        assert daemon.ready()
