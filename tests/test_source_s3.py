"""The s3 source against a real S3 server (moto in server mode, signatures and IAM
policies checked: tests/s3_server.py), in-process and through a real dfdaemon + dfget."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.daemons.sources import (
    ContentChanged,
    RetryPolicy,
    S3Config,
    SourceError,
    SourcePolicy,
    SourceRefused,
    SourceSettings,
    check_url,
    open_source,
)
from d7y.daemons.sources.s3 import resolve_settings
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config, wait_for
from tests.s3_server import MotoS3

BUCKET = "d7y-test"
KEY = "models/a b+c.bin"  # a space and a plus: both must be signed as S3 encodes them
URL = f"s3://{BUCKET}/{KEY}"
DATA = random.Random(7).randbytes(9 * 1024 * 1024 + 123)  # 3 pieces of 4 MiB, the last short
FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.002)
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        server.put(BUCKET, KEY, DATA)
        yield server


@pytest.fixture(scope="module")
def reader(s3):
    """Keys allowed to read the test bucket only."""
    return s3.user("reader", ["s3:GetObject"], f"arn:aws:s3:::{BUCKET}/*")


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch, tmp_path):
    """Each test sees only the AWS settings it sets (and no real ~/.aws)."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def settings(s3: MotoS3, keys: tuple[str, str] | None = None, **extra) -> SourceSettings:
    key_id, secret = keys or ("", "")
    config = S3Config(
        endpoint=extra.pop("endpoint", s3.endpoint),
        access_key_id=key_id,
        secret_access_key=secret,
        **extra,
    )
    return SourceSettings(retry=FAST, s3=config)


def run(url: str, settings: SourceSettings, scenario, policy: SourcePolicy | None = None):
    async def main():
        source = open_source(url, settings=settings, policy=policy)
        try:
            return await scenario(source)
        finally:
            await source.close()

    return asyncio.run(main())


def test_probe_ranges_and_stream_read_the_object(s3, reader):
    async def scenario(source):
        info = await source.probe(URL)
        assert (info.content_length, info.supports_range) == (len(DATA), True)
        assert info.etag == f'"{hashlib.md5(DATA).hexdigest()}"'  # S3's ETag of a simple PUT
        piece = bytearray(4 * 1024 * 1024)
        await source.fetch_range(info.final_url, None, 4 << 20, len(piece), piece, info=info)
        assert piece == DATA[4 << 20 : 8 << 20]
        whole = bytearray()
        async with source.stream(info.final_url) as body:
            async for chunk in body:
                whole += chunk
        assert whole == DATA
        return source.bytes_received

    assert run(URL, settings(s3, reader), scenario) == 4 * 1024 * 1024 + len(DATA)


def test_credentials_come_from_the_environment(s3, reader, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader[1])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")  # the S3-specific one wins
    config = SourceSettings(retry=FAST)  # no source.s3 keys at all

    async def scenario(source):
        return (await source.probe(URL)).content_length

    assert run(URL, config, scenario) == len(DATA)


def test_credentials_and_endpoint_come_from_the_shared_files(s3, reader, monkeypatch, tmp_path):
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(
        f"[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n"
        f"[reader]\naws_access_key_id = {reader[0]}\naws_secret_access_key = {reader[1]}\n"
    )
    (aws / "config").write_text(
        f"[profile reader]\nregion = eu-west-1\nendpoint_url = {s3.endpoint}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "reader")

    resolved = resolve_settings(S3Config(), URL)
    assert resolved.region == "eu-west-1"
    assert resolved.credentials is not None
    assert resolved.credentials.access_key_id == reader[0]

    async def scenario(source):
        return (await source.probe(URL)).content_length

    assert run(URL, SourceSettings(retry=FAST), scenario) == len(DATA)


def test_missing_credentials_say_where_to_set_them(s3):
    async def scenario(source):
        with pytest.raises(SourceError) as excinfo:
            await source.probe(URL)
        return excinfo.value

    error = run(URL, settings(s3), scenario)
    message = str(error)
    assert "no AWS credentials" in message and URL in message
    assert "AWS_ACCESS_KEY_ID" in message and "source.s3.access_key_id" in message
    assert not error.bad_input


def test_half_a_key_pair_is_refused(s3):
    config = settings(s3, ("AKIAONLYTHEID", ""))

    async def scenario(source):
        with pytest.raises(SourceError, match="secret access key is missing"):
            await source.probe(URL)

    run(URL, config, scenario)


@pytest.mark.parametrize(
    ("url", "status", "expected"),
    [
        (f"s3://{BUCKET}/no/such/key", 404, "does not exist (NoSuchKey"),
        # A long key makes a long error document (S3 quotes the key): still read whole.
        (f"s3://{BUCKET}/{'k' * 1000}", 404, "does not exist (NoSuchKey"),
        ("s3://another-bucket/x", 403, "S3 denied access to s3://another-bucket/x (AccessDenied"),
    ],
)
def test_s3_errors_name_the_object_and_the_fix(s3, reader, url, status, expected):
    async def scenario(source):
        with pytest.raises(SourceError) as excinfo:
            await source.probe(url)
        return excinfo.value

    error = run(url, settings(s3, reader), scenario)
    assert error.status == status and not error.retryable
    assert expected in str(error)
    if status == 403:
        assert reader[0] in str(error) and "s3:GetObject" in str(error)


def test_concurrent_failures_each_name_their_own_object(s3, reader):
    # Two probes in flight on one source: each error names its own s3:// URL (the
    # source maps the HTTP URL it requested back to the object), not the HTTP URL.
    urls = [f"s3://{BUCKET}/missing/{name}" for name in ("first", "second")]

    async def scenario(source):
        return await asyncio.gather(*(source.probe(url) for url in urls), return_exceptions=True)

    errors = run(URL, settings(s3, reader), scenario)
    for url, error in zip(urls, errors, strict=True):
        assert isinstance(error, SourceError), error
        assert f"S3 object {url} does not exist" in str(error), str(error)


def test_an_s3_error_without_advice_of_its_own_is_quoted_as_answered():
    # An endpoint (here a plain HTTP server) answering a status S3 gives no code for:
    # the message quotes the answer, not the advice that belongs to another error.
    with ThreadedOriginServer() as origin:
        origin.set_faults(None, fail={"status": 400, "count": -1})
        config = S3Config(endpoint=origin.base_url, anonymous=True)

        async def scenario(source):
            with pytest.raises(SourceError) as excinfo:
                await source.probe(URL)
            return excinfo.value

        error = run(URL, SourceSettings(retry=FAST, s3=config), scenario)
    assert error.status == 400 and not error.retryable
    assert f"S3 answered 400 for {URL}" in str(error), str(error)
    assert "region" not in str(error)


def test_a_wrong_secret_is_a_signature_error(s3, reader):
    async def scenario(source):
        with pytest.raises(SourceError, match="SignatureDoesNotMatch") as excinfo:
            await source.probe(URL)
        return excinfo.value

    assert run(URL, settings(s3, (reader[0], "not-the-secret")), scenario).status == 403


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://Bad_Bucket/key", "invalid S3 bucket name 'Bad_Bucket'"),
        ("s3://ab/key", "invalid S3 bucket name 'ab'"),
        ("s3://192.168.1.1/key", "invalid S3 bucket name '192.168.1.1'"),
        (f"s3://{BUCKET}", "names no object key"),
        (f"s3://{BUCKET}/", "names no object key"),
    ],
)
def test_bad_s3_urls_are_refused_before_any_request(url, problem):
    with pytest.raises(SourceError, match=problem) as excinfo:
        check_url(url)
    assert excinfo.value.bad_input


def test_an_object_overwritten_mid_download_is_detected(s3, reader):
    key = "changing.bin"
    url = f"s3://{BUCKET}/{key}"
    s3.put(BUCKET, key, b"a" * 1000)

    async def scenario(source):
        info = await source.probe(url)
        s3.put(BUCKET, key, b"b" * 1000)  # same length, new ETag
        with pytest.raises(ContentChanged) as excinfo:
            await source.fetch_range(url, None, 0, 100, bytearray(100), info=info)
        return excinfo.value

    assert run(url, settings(s3, reader), scenario).validator == "ETag"


def test_the_fetch_policy_guards_the_s3_endpoint(s3, reader):
    """A download a remote party caused may not reach an endpoint on an internal address
    unless source.allow lists it, as for http."""

    async def refused(source):
        with pytest.raises(SourceRefused, match="loopback"):
            await source.probe(URL)

    run(URL, settings(s3, reader), refused, policy=SourcePolicy())

    async def allowed(source):
        return (await source.probe(URL)).content_length

    policy = SourcePolicy(allow=["127.0.0.0/8"])
    assert run(URL, settings(s3, reader), allowed, policy=policy) == len(DATA)


# -- end to end: dfget s3://... through a real dfdaemon --------------------------------


@pytest.fixture(scope="module")
def s3_peer(s3, reader, tmp_path_factory):
    peer = PeerProcess(tmp_path_factory.mktemp("s3-peer"), source={"s3": {"endpoint": s3.endpoint}})
    peer.env.update(
        {
            "AWS_ACCESS_KEY_ID": reader[0],
            "AWS_SECRET_ACCESS_KEY": reader[1],
            "HOME": str(peer.workdir),  # no ~/.aws of whoever runs the tests
        }
    )
    with peer:
        yield peer


def test_dfget_s3_url_end_to_end(s3_peer, tmp_path):
    output = tmp_path / "out.bin"
    result = s3_peer.dfget(URL, output, "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert output.read_bytes() == DATA
    # The task ID is computed from the URL exactly as for http: the daemon serves the
    # task under it.
    status, body = s3_peer.http_get(task_id(URL), "bytes=0-99")
    assert (status, body) == (206, DATA[:100])


def test_dfget_s3_errors_map_to_exit_codes(s3_peer, tmp_path: Path):
    missing = s3_peer.dfget(f"s3://{BUCKET}/missing", tmp_path / "a", "--no-progress")
    assert missing.returncode == 4, missing.stderr.decode()
    assert "does not exist (NoSuchKey" in missing.stderr.decode()
    bad = s3_peer.dfget("s3://Bad_Bucket/x", tmp_path / "b", "--no-progress")
    assert bad.returncode == 2, bad.stderr.decode()
    assert "invalid S3 bucket name 'Bad_Bucket'" in bad.stderr.decode()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_seed_peer_fetches_from_s3_for_a_peer_without_credentials(s3, reader, tmp_path):
    """P2P with an s3:// URL: the scheduler triggers the seed peer, which fetches from S3
    with its own credentials through the fetch policy (loopback allowed, as in every
    test); the peer has no AWS credentials at all, so every byte it gets came from the
    seed."""
    url = f"s3://{BUCKET}/p2p.bin"
    s3.put(BUCKET, "p2p.bin", DATA)
    endpoint = {"s3": {"endpoint": s3.endpoint}}
    with SchedulerProcess(tmp_path) as scheduler:
        seed = PeerProcess(
            tmp_path, "seed", **peer_config(scheduler, "seed", seed=True, source=endpoint)
        )
        seed.env.update(
            {
                "AWS_ACCESS_KEY_ID": reader[0],
                "AWS_SECRET_ACCESS_KEY": reader[1],
                "HOME": str(tmp_path),
            }
        )
        peer = PeerProcess(tmp_path, "peer", **peer_config(scheduler, "peer", source=endpoint))
        peer.env["HOME"] = str(tmp_path)
        with seed, peer:
            for daemon in (seed, peer):  # else the peer would go back to source itself
                wait_for(
                    lambda d=daemon: "connected to scheduler address=" in d.log(),
                    f"{daemon.name} to connect to the scheduler",
                )
            result = peer.dfget(url, tmp_path / "out.bin", "--no-progress")
            assert result.returncode == 0, result.stderr.decode() + peer.log()[-3000:]
            assert (tmp_path / "out.bin").read_bytes() == DATA
            assert peer.metrics().get("d7y_peer_download_origin_bytes_total", 0) == 0
            assert seed.metrics()["d7y_peer_download_origin_bytes_total"] == len(DATA)
