import hashlib
import uuid

import pytest

from d7y.core import ids
from d7y.core.pieces import MiB


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Vectors published in Dragonfly's Rust client (dragonfly-client-util id_generator tests);
# each is sha256(canonical url + tag + application + "STANDARD"), which the second
# column re-derives by hand so the vector documents its own construction.
DRAGONFLY_VECTORS = [
    (
        dict(url="https://example.com", tag="foo", application="bar", filtered_query_params=[]),
        "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca",
        "https://example.comfoobarSTANDARD",
    ),
    (
        dict(url="https://example.com", tag="foo", filtered_query_params=[]),
        "3c3f230ef9f191dd2821510346a7bc138e4894bee9aee184ba250a3040701d2a",
        "https://example.comfooSTANDARD",
    ),
    (
        dict(url="https://example.com", application="bar", filtered_query_params=[]),
        "c9f9261b7305c24371244f9f149f5d4589ed601348fdf22d7f6f4b10658fdba2",
        "https://example.combarSTANDARD",
    ),
    (
        # Filtering both parameters leaves "https://example.com" (bare "/" path trimmed).
        dict(url="https://example.com?foo=foo&bar=bar", filtered_query_params=["foo", "bar"]),
        "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776",
        "https://example.comSTANDARD",
    ),
    (
        # z is dropped, a and b sorted by key.
        dict(
            url="https://example.com/file.txt?z=9&b=2&a=1",
            tag="foo",
            application="bar",
            filtered_query_params=["z"],
        ),
        "8b3f6e9b9b8fe20903bced565cfd1d0aaef354a4c17573f0c2c1979210443f9d",
        "https://example.com/file.txt?a=1&b=2foobarSTANDARD",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected", "preimage"), DRAGONFLY_VECTORS)
def test_task_id_matches_dragonfly(kwargs, expected, preimage):
    assert sha(preimage) == expected
    assert ids.task_id(**kwargs) == expected


def test_task_id_with_user_piece_length():
    # Derived by hand: the piece length is appended as a decimal string before the type.
    url = "https://example.com/model.bin"
    expected = sha(url + "tag" + str(8 * MiB) + "STANDARD")
    assert ids.task_id(url, tag="tag", piece_length=8 * MiB, filtered_query_params=[]) == expected
    assert ids.task_id(url, tag="tag", filtered_query_params=[]) != expected


def test_default_filters_drop_s3_signatures():
    # Two pre-signed URLs for the same object differ only in signing parameters; with the
    # default filters they are one task, and the canonical form is the sorted remainder.
    a = (
        "https://bucket.s3.amazonaws.com/blob?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20261127&X-Amz-Date=20261127T000000Z&X-Amz-Expires=3600"
        "&X-Amz-SignedHeaders=host&X-Amz-Signature=aaaa"
    )
    b = a.replace("X-Amz-Signature=aaaa", "X-Amz-Signature=bbbb").replace("T000000Z", "T010000Z")
    assert ids.canonical_url(a) == "https://bucket.s3.amazonaws.com/blob?versionId=3"
    assert (
        ids.task_id(a)
        == ids.task_id(b)
        == sha("https://bucket.s3.amazonaws.com/blob?versionId=3STANDARD")
    )


def test_default_filters_cover_gcs_and_oss():
    url = (
        "https://storage.googleapis.com/b/o?X-Goog-Signature=x&X-Goog-Date=d&alt=media"
        "&OSSAccessKeyId=k&Expires=1&Signature=s&SecurityToken=t"
    )
    assert ids.canonical_url(url) == "https://storage.googleapis.com/b/o?alt=media"


def test_canonical_url_escapes_like_go_query_escape():
    url = "https://example.com/file.txt?k=a b&m=x*y&n=c~d"
    assert ids.canonical_url(url, ["none"]) == "https://example.com/file.txt?k=a+b&m=x%2Ay&n=c~d"


def test_canonical_url_keeps_value_order_and_fragment_and_drops_semicolons():
    assert (
        ids.canonical_url("https://example.com/file.txt?b=2&a=1&b=1", ["c"])
        == "https://example.com/file.txt?a=1&b=2&b=1"
    )
    assert (
        ids.canonical_url("http://www.xx.yy/path?u=f&x=y&m=z&x=s#size", ["x", "m"])
        == "http://www.xx.yy/path?u=f#size"
    )
    assert (
        ids.canonical_url("https://example.com/file.txt?a=1;x&b=2", ["none"])
        == "https://example.com/file.txt?b=2"
    )


def test_empty_filter_list_leaves_url_unchanged():
    url = "https://Example.com/?z=1&a=2"
    assert ids.canonical_url(url, []) == url


def test_tag_and_application_change_the_id():
    url = "https://example.com/x"
    base = ids.task_id(url)
    assert ids.task_id(url, tag="t") != base
    assert ids.task_id(url, application="a") != base
    assert ids.task_id(url, tag="") == base  # empty counts as absent


@pytest.mark.parametrize("bad", ["not a url", "", "/relative/path"])
def test_task_id_rejects_relative_urls(bad):
    with pytest.raises(ValueError, match="not absolute"):
        ids.task_id(bad)


def test_task_id_rejects_bad_types_and_small_piece_length():
    with pytest.raises(TypeError, match="url must be a str"):
        ids.task_id(b"https://example.com")
    with pytest.raises(TypeError, match="tag"):
        ids.task_id("https://example.com", tag=3)
    with pytest.raises(ValueError, match="piece_length 1024 is below"):
        ids.task_id("https://example.com", piece_length=1024)


def test_host_and_peer_ids():
    assert ids.host_id("10.0.0.1", "node-a") == "10.0.0.1-node-a"
    assert ids.host_id("10.0.0.1", "node-a", seed=True) == "10.0.0.1-node-a-seed"
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert ids.peer_id("10.0.0.1", "node-a", u) == f"10.0.0.1-node-a-{u}"
    assert ids.peer_id("10.0.0.1", "node-a", str(u), seed=True) == f"10.0.0.1-node-a-{u}-seed"
    with pytest.raises(ValueError, match="not a UUID"):
        ids.peer_id("10.0.0.1", "node-a", "nope")
    with pytest.raises(ValueError, match="hostname"):
        ids.host_id("10.0.0.1", "")


def test_only_a_bare_slash_path_is_trimmed():
    # Filtering normalises the URL; "https://h/" loses its "/", a directory keeps its own.
    assert ids.canonical_url("https://H/", ["x"]) == "https://h"
    assert ids.canonical_url("https://h/dir/", ["x"]) == "https://h/dir/"
    assert ids.canonical_url("https://h/dir/?b=2&a=1&x=9", ["x"]) == "https://h/dir/?a=1&b=2"


def test_filter_names_must_be_strings():
    with pytest.raises(TypeError, match="filtered query parameter 1 must be a str"):
        ids.canonical_url("https://h/a?x=1", ["x", 1])
