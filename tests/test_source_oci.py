"""The oci source against a real registry (Debian's docker-registry, started by the
fixtures: tests/registry_server.py), with blobs pushed through its upload API;
in-process and through a real dfdaemon + dfget."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil

import pytest

from d7y.core.ids import task_id
from d7y.daemons.sources import (
    OciConfig,
    RetryPolicy,
    SourceError,
    SourcePolicy,
    SourceRefused,
    SourceSettings,
    check_url,
    open_source,
)
from tests.peer_harness import PeerProcess
from tests.registry_server import (
    OCI_INDEX,
    REGISTRY_BINARY,
    REGISTRY_USER,
    Registry,
    TokenService,
    digest_of,
)

# Without the registry these tests are skipped, except in CI (.ci/run sets
# D7Y_REQUIRE_TOOLS), where a missing install is a failure, not a silent skip.
pytestmark = pytest.mark.skipif(
    shutil.which(REGISTRY_BINARY) is None and not os.environ.get("D7Y_REQUIRE_TOOLS"),
    reason="docker-registry is not installed (scripts/test.sh installs it as root: apt-get "
    "install -y docker-registry)",
)

REPO = "team/model"
LAYER = random.Random(3).randbytes(5 * 1024 * 1024 + 77)  # 2 pieces of 4 MiB
FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.002)


@pytest.fixture(scope="module")
def tokens():
    with TokenService() as service:
        yield service


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tokens):
    """A registry that asks for a token (the real Bearer challenge) for everything."""
    with Registry(
        tmp_path_factory.mktemp("registry"), auth="token", token_realm=tokens.realm
    ) as server:
        manifest, (layer,) = server.push_artifact(REPO, "v1", [LAYER])
        server.pushed = {"manifest": manifest, "layer": layer}
        server.push_artifact(REPO, "two-layers", [b"first layer", b"second layer"])
        yield server


def fetch_all(url: str, settings: SourceSettings | None = None, policy=None):
    """Probe ``url`` and read it piece by piece (1 MiB ranges); (info, bytes, source)."""

    async def main():
        source = open_source(url, settings=settings or SourceSettings(retry=FAST), policy=policy)
        try:
            info = await source.probe(url)
            data = bytearray(info.content_length)
            step = 1024 * 1024
            for offset in range(0, len(data), step):
                view = memoryview(data)[offset : offset + step]
                await source.fetch_range(info.final_url, None, offset, len(view), view, info=info)
            return info, bytes(data), source
        finally:
            await source.close()

    return asyncio.run(main())


def probe_error(url: str, settings: SourceSettings | None = None, policy=None) -> SourceError:
    async def main():
        source = open_source(url, settings=settings or SourceSettings(retry=FAST), policy=policy)
        try:
            with pytest.raises(SourceError) as excinfo:
                await source.probe(url)
            return excinfo.value
        finally:
            await source.close()

    return asyncio.run(main())


def test_a_tag_resolves_to_its_single_layer_after_the_token_challenge(registry, tokens):
    before = len(tokens.requests)
    info, data, source = fetch_all(f"oci://{registry.host}/{REPO}:v1")
    assert data == LAYER
    assert info.digest == registry.pushed["layer"] == digest_of(LAYER)
    # Every piece reads the blob by digest, whatever the tag names later.
    assert info.final_url == f"oci://{registry.host}/{REPO}@{digest_of(LAYER)}"
    # One challenge, one token, reused for the manifest and every piece of the repo.
    asked = tokens.requests[before:]
    assert [query for query, _ in asked] == [
        {"scope": f"repository:{REPO}:pull", "service": "d7y-test-registry"}
    ]
    assert asked[0][1] == ""  # no credentials configured: anonymous token request
    assert source.auth.token_requests == 1


def test_a_blob_digest_and_a_manifest_digest_both_name_the_layer(registry):
    by_blob = fetch_all(f"oci://{registry.host}/{REPO}@{registry.pushed['layer']}")[1]
    by_manifest = fetch_all(f"oci://{registry.host}/{REPO}@{registry.pushed['manifest']}")[1]
    assert by_blob == by_manifest == LAYER


def test_configured_credentials_go_to_the_token_service(registry, tokens):
    settings = SourceSettings(retry=FAST, oci=OciConfig(username="alice", password="pw"))
    before = len(tokens.requests)
    fetch_all(f"oci://{registry.host}/{REPO}:v1", settings)
    (_query, authorization), *_ = tokens.requests[before:]
    assert authorization == "Basic " + base64.b64encode(b"alice:pw").decode()


def test_docker_config_json_credentials_are_used(registry, tokens, tmp_path, monkeypatch):
    auth = base64.b64encode(b"bob:from-docker-login").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    before = len(tokens.requests)
    fetch_all(f"oci://{registry.host}/{REPO}:v1")
    assert tokens.requests[before][1] == f"Basic {auth}"


def test_a_token_service_that_refuses_says_what_to_set(tmp_path):
    with (
        TokenService(require=("alice", "right")) as strict,
        Registry(tmp_path, auth="token", token_realm=strict.realm) as server,
    ):
        server.push_artifact(REPO, "v1", [b"x" * 100])
        url = f"oci://{server.host}/{REPO}:v1"
        error = probe_error(url)
        assert error.status == 401
        assert "anonymous access" in str(error) and "source.oci.username" in str(error)
        wrong = SourceSettings(retry=FAST, oci=OciConfig(username="alice", password="wrong"))
        assert "check source.oci.username" in str(probe_error(url, wrong))
        right = SourceSettings(retry=FAST, oci=OciConfig(username="alice", password="right"))
        assert fetch_all(url, right)[1] == b"x" * 100


def test_a_token_answer_that_arrives_in_parts_is_read_whole(tmp_path):
    with (
        TokenService(split=True) as slow,
        Registry(tmp_path, auth="token", token_realm=slow.realm) as server,
    ):
        server.push_artifact(REPO, "v1", [b"x" * 100])
        assert fetch_all(f"oci://{server.host}/{REPO}:v1")[1] == b"x" * 100


def test_an_oversized_token_answer_is_not_read_whole(tmp_path):
    # A token answer is a few KiB; one of 2 MiB is read only up to the 1 MiB limit and
    # refused (never held whole in memory).
    with (
        TokenService(padding=2 * 1024 * 1024) as bloated,
        Registry(tmp_path, auth="token", token_realm=bloated.realm) as server,
    ):
        server.push_artifact(REPO, "v1", [b"x" * 100])
        error = probe_error(f"oci://{server.host}/{REPO}:v1")
        assert "answered more than 1048576 bytes" in str(error), str(error)
        assert len(bloated.requests) == 1


def test_basic_auth_registry(tmp_path):
    with Registry(tmp_path, auth="basic") as server:
        server.push_artifact(REPO, "v1", [LAYER[:1000]])
        url = f"oci://{server.host}/{REPO}:v1"
        anonymous = probe_error(url)
        assert anonymous.status == 401
        assert f"registry {server.host} refused anonymous access to {REPO}" in str(anonymous)
        user, password = REGISTRY_USER
        settings = SourceSettings(retry=FAST, oci=OciConfig(username=user, password=password))
        assert fetch_all(url, settings)[1] == LAYER[:1000]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("team/model:nope", "has no manifest nope in team/model (MANIFEST_UNKNOWN)"),
        (
            "team/model@sha256:" + "0" * 64,
            "has neither a blob nor a manifest sha256:" + "0" * 64,
        ),
    ],
)
def test_missing_tags_and_digests_are_named(registry, reference, expected):
    error = probe_error(f"oci://{registry.host}/{reference}")
    assert error.status == 404 and expected in str(error)


def test_multi_layer_manifests_and_indexes_are_refused_with_the_fix(registry):
    error = probe_error(f"oci://{registry.host}/{REPO}:two-layers")
    assert "manifest of 2 layers, not a single-layer artifact" in str(error)
    assert f"oci://{registry.host}/{REPO}@sha256:<digest>" in str(error)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": registry.pushed["manifest"],
                "size": 1,
            }
        ],
    }
    registry.push_manifest(REPO, "multi", index, OCI_INDEX)
    assert "is an image index of 1 manifests" in str(
        probe_error(f"oci://{registry.host}/{REPO}:multi")
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("oci://registry.example/Team/Model:v1", "is not a repository name"),
        ("oci://registry.example/team/model@sha256:abc", "is not a digest"),
        ("oci://registry.example/team/model:bad tag", "is not a tag"),
        ("oci://registry.example", "names no repository"),
        ("oci://bad host/x:v1", "is not a registry host"),
    ],
)
def test_bad_oci_urls_are_refused_before_any_request(url, problem):
    with pytest.raises(SourceError, match=problem) as excinfo:
        check_url(url)
    assert excinfo.value.bad_input


def test_the_fetch_policy_guards_the_registry_and_its_token_service(tmp_path):
    """A download a remote party caused may reach neither a registry nor a token realm
    on an internal address unless source.allow lists it."""
    with (
        TokenService(host="127.0.0.2") as realm,
        Registry(tmp_path, auth="token", token_realm=realm.realm) as server,
    ):
        server.push_artifact(REPO, "v1", [b"y" * 10])
        url = f"oci://{server.host}/{REPO}:v1"
        with pytest.raises(SourceRefused, match="loopback"):
            raise probe_error(url, policy=SourcePolicy())
        registry_only = SourcePolicy(allow=["127.0.0.1"])
        with pytest.raises(SourceRefused, match=r"127\.0\.0\.2"):
            raise probe_error(url, policy=registry_only)
        assert realm.requests == []  # refused before any connection
        both = SourcePolicy(allow=["127.0.0.0/8"])
        assert fetch_all(url, policy=both)[1] == b"y" * 10


# -- end to end: dfget oci://... through a real dfdaemon -------------------------------


def test_dfget_oci_url_end_to_end(registry, tmp_path):
    url = f"oci://{registry.host}/{REPO}:v1"
    with PeerProcess(tmp_path) as peer:
        result = peer.dfget(url, tmp_path / "layer.bin", "--no-progress")
        assert result.returncode == 0, result.stderr.decode()
        assert (tmp_path / "layer.bin").read_bytes() == LAYER
        # The task ID is computed from the URL as for http: the daemon serves it under it.
        status, body = peer.http_get(task_id(url), "bytes=0-9")
        assert (status, body) == (206, LAYER[:10])

        missing = peer.dfget(f"oci://{registry.host}/{REPO}:gone", tmp_path / "x", "--no-progress")
        assert missing.returncode == 4 and "MANIFEST_UNKNOWN" in missing.stderr.decode()
        bad = peer.dfget(f"oci://{registry.host}/Bad:v1", tmp_path / "y", "--no-progress")
        assert bad.returncode == 2 and "is not a repository name" in bad.stderr.decode()
        layers = peer.dfget(
            f"oci://{registry.host}/{REPO}:two-layers", tmp_path / "z", "--no-progress"
        )
        assert layers.returncode == 2, layers.stderr.decode()
        assert "not a single-layer artifact" in layers.stderr.decode()
        assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def test_a_blob_that_does_not_match_its_digest_fails_the_download(registry, tmp_path):
    """The registry's stored bytes are damaged (same length): every piece arrives fine,
    but the whole does not hash to the digest the blob is named by."""
    blob = random.Random(11).randbytes(300_000)
    _, (digest,) = registry.push_artifact(REPO, "damaged", [blob])
    hexdigest = digest.split(":", 1)[1]
    stored = (
        registry.workdir / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest
    ) / "data"
    damaged = bytearray(stored.read_bytes())
    damaged[1000] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    with PeerProcess(tmp_path) as peer:
        result = peer.dfget(
            f"oci://{registry.host}/{REPO}:damaged", tmp_path / "out", "--no-progress"
        )
        assert result.returncode == 6, result.stderr.decode()
        assert digest in result.stderr.decode()
        assert not (tmp_path / "out").exists()
