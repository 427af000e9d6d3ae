import hashlib
import zlib
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d7y.core.digest import Digest, DigestMismatch, Hasher, digest_of_chunks, verify_chunks

DATA = b"The quick brown fox jumps over the lazy dog"


def test_parse_and_format_round_trip():
    sha = hashlib.sha256(DATA).hexdigest()
    assert str(Digest.parse(f"sha256:{sha}")) == f"sha256:{sha}"
    assert Digest.parse(f"SHA256:{sha.upper()}") == Digest("sha256", sha)
    assert Digest.parse("crc32:0042") == Digest("crc32", "42")
    assert str(Digest.crc32_of(zlib.crc32(DATA))) == f"crc32:{zlib.crc32(DATA)}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deadbeef", "has no algorithm"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "unknown algorithm 'md5'"),
        ("sha256:abc", "64 hex digits"),
        ("sha512:" + "g" * 128, "128 hex digits"),
        ("crc32:-1", "decimal number"),
        ("crc32:4294967296", "decimal number"),
        ("crc32:0x10", "decimal number"),
    ],
)
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        Digest.parse(text)


@pytest.mark.parametrize("algorithm", ["crc32", "sha256", "sha512"])
def test_incremental_digest_matches_one_shot(algorithm):
    chunks = [DATA[:7], memoryview(DATA)[7:20], bytearray(DATA[20:])]
    got = digest_of_chunks(algorithm, chunks)
    if algorithm == "crc32":
        assert got == Digest("crc32", str(zlib.crc32(DATA)))
    else:
        assert got == Digest(algorithm, hashlib.new(algorithm, DATA).hexdigest())


def test_verify_chunks_reports_expected_and_actual():
    good = f"sha256:{hashlib.sha256(DATA).hexdigest()}"
    assert verify_chunks(good, [DATA]) == Digest.parse(good)
    with pytest.raises(DigestMismatch) as info:
        verify_chunks(good, [DATA + b"!"], what="task abc")
    message = str(info.value)
    assert "task abc digest mismatch" in message and good in message
    assert hashlib.sha256(DATA + b"!").hexdigest() in message


def test_hasher_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        Hasher("md5")


@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=5))
def test_crc32_hasher_any_split(data, cuts):
    hasher = Hasher("crc32")
    points = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
    for a, b in pairwise(points):
        hasher.update(data[a:b])
    assert hasher.digest().value == str(zlib.crc32(data))


@pytest.mark.parametrize("value", [0, 0xFFFFFFFF])
def test_crc32_values_at_both_ends_are_accepted(value):
    assert Digest.parse(f"crc32:{value}") == Digest("crc32", str(value))
    assert Digest.crc32_of(value) == Digest("crc32", str(value))


@pytest.mark.parametrize("value", [-1, 0x100000000, True, 1.0, "1"])
def test_crc32_of_refuses_what_is_not_a_crc(value):
    with pytest.raises(ValueError, match=r"crc32 value must be an int in 0\.\.4294967295"):
        Digest.crc32_of(value)


def test_hex_digests_of_the_wrong_length_are_refused_both_ways():
    sha = hashlib.sha256(DATA).hexdigest()
    for text in (f"sha256:{sha}0", f"sha256:{sha[:-1]}"):
        with pytest.raises(ValueError, match="64 hex digits"):
            Digest.parse(text)


def test_verify_refuses_a_different_value_either_side():
    low, high = Digest("crc32", "1"), Digest("crc32", "2")
    for expected, actual in ((low, high), (high, low)):
        with pytest.raises(DigestMismatch):
            expected.verify(actual)
    low.verify(Digest("crc32", "1"))  # equal: no error


def test_hasher_names_its_algorithm():
    assert Hasher("sha512").algorithm == "sha512"
    assert Hasher("crc32").algorithm == "crc32"
