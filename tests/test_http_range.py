import pytest
from hypothesis import given
from hypothesis import strategies as st

from d7y.core.http_range import ByteRange, RangeError, parse_range


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        ("bytes=0-99", 1000, ByteRange(0, 100)),
        ("bytes=0-0", 1000, ByteRange(0, 1)),
        ("bytes=500-", 1000, ByteRange(500, 500)),
        ("bytes=-100", 1000, ByteRange(900, 100)),
        ("bytes=-5000", 1000, ByteRange(0, 1000)),  # suffix longer than content: all
        ("bytes=900-5000", 1000, ByteRange(900, 100)),  # end clamped
        ("BYTES = 1 - 2 ", 10, ByteRange(1, 2)),  # case and whitespace tolerated
        ("bytes=999-999", 1000, ByteRange(999, 1)),
    ],
)
def test_parse_range(header, length, expected):
    assert parse_range(header, length) == expected


def test_content_range_and_pieces():
    r = parse_range("bytes=5-14", 100)
    assert r.end == 14
    assert r.content_range(100) == "bytes 5-14/100"
    assert r.pieces(4) == range(1, 4)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("bytes=0-1,5-6", "several ranges"),
        ("items=0-1", "not a byte range"),
        ("0-1", "not a byte range"),
        ("bytes=abc", "malformed"),
        ("bytes=-", "malformed"),
        ("bytes=5-1", "last byte 1 < first 5"),
        ("bytes=1-2-3", "malformed"),
    ],
)
def test_malformed_ranges(header, message):
    with pytest.raises(RangeError, match=message) as info:
        parse_range(header, 1000)
    assert not info.value.unsatisfiable


@pytest.mark.parametrize(
    ("header", "length"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=-1", 0),
    ],
)
def test_unsatisfiable_ranges(header, length):
    with pytest.raises(RangeError) as info:
        parse_range(header, length)
    assert info.value.unsatisfiable


def test_bad_argument_types():
    with pytest.raises(TypeError):
        parse_range(b"bytes=0-1", 10)
    with pytest.raises(ValueError, match="content_length must be >= 0"):
        parse_range("bytes=0-1", -1)


@given(st.integers(1, 10**6), st.data())
def test_ranges_stay_inside_the_content(length, data):
    first = data.draw(st.integers(0, length - 1))
    last = data.draw(st.integers(first, length * 2))
    r = parse_range(f"bytes={first}-{last}", length)
    assert r.start == first and r.length >= 1 and r.start + r.length <= length


@pytest.mark.parametrize("length", [True, 10.0, "10", None])
def test_content_length_must_be_a_real_int(length):
    with pytest.raises(TypeError, match="content_length must be an int"):
        parse_range("bytes=0-1", length)


def test_range_spec_is_resolved_once_the_length_is_known():
    from d7y.core.http_range import RangeSpec, parse_range_spec

    assert parse_range_spec("bytes=5-14") == RangeSpec(5, 14)
    assert parse_range_spec("bytes=5-") == RangeSpec(5, None)
    assert parse_range_spec("bytes=-7") == RangeSpec(None, None, 7)
    for header in ("bytes=5-14", "bytes=5-", "bytes=-7", "bytes=90-200"):
        spec = parse_range_spec(header)
        assert spec.resolve(100) == parse_range(header, 100)
        assert parse_range_spec(spec.header()) == spec
    with pytest.raises(RangeError) as info:
        parse_range_spec("bytes=100-").resolve(100)
    assert info.value.unsatisfiable
    with pytest.raises(RangeError, match="several ranges"):
        parse_range_spec("bytes=0-1,2-3")
