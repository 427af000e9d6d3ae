"""Preheat jobs end to end, on both job queues (SQL, and a real redis-server).

A real manager, scheduler, seed peer and peer (processes), and Debian's docker-registry
holding an image this test builds (an OCI layout pushed with skopeo). A preheat through
the REST API makes the seed peer fetch the image's config and layers; then a peer's
download of a layer takes nothing from the registry (its access log). Failures (404,
wrong credentials, an unreachable registry) end the job in FAILURE with an error that
names the URL and the cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from d7y.core import ids
from tests.manager_harness import ManagerProcess, start_managed_cluster
from tests.peer_harness import PeerProcess, free_port, peer_config, wait_for
from tests.registry_server import (
    OCI_INDEX,
    OCI_MANIFEST,
    REGISTRY_USER,
    Registry,
    TokenService,
)
from tests.test_registry_mirror_e2e import write_oci_layout

pytestmark = pytest.mark.skipif(
    shutil.which("skopeo") is None or shutil.which("docker-registry") is None,
    reason="needs skopeo and docker-registry (scripts/test.sh installs them)",
)

PAT = "d7y_pat_preheat-tests-token"
REPO = "d7y/preheat"
LAYER_SIZES = [3 << 20, 1 << 20, 300_000]


def push_image(work: Path, registry: Registry, tag: str, seed: int) -> list[str]:
    """A 3-layer image built here, pushed with skopeo; its layer digests."""
    layout = work / f"layout-{tag}"
    layers = write_oci_layout(layout, tag, LAYER_SIZES, seed=seed)
    policy = work / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    command = ["skopeo", "--policy", str(policy), "copy", "--dest-tls-verify=false"]
    if registry.auth is not None:
        command += ["--dest-creds", ":".join(REGISTRY_USER)]
    command += [f"oci:{layout}:{tag}", f"docker://{registry.host}/{REPO}:{tag}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return layers


def peer_bytes(peer: PeerProcess) -> tuple[float, float]:
    """(bytes the peer fetched from origins, bytes it fetched from other peers)."""
    metrics = peer.metrics()
    return (
        metrics.get("d7y_peer_download_origin_bytes_total", 0.0),
        metrics.get("d7y_peer_download_peer_bytes_total", 0.0),
    )


def blob_gets(registry: Registry) -> int:
    """GETs of blobs the registry answered so far (its access log)."""
    return len(re.findall(rf'"GET /v2/{REPO}/blobs/sha256:', registry.log_path.read_text()))


@pytest.fixture(scope="module", params=["sql", "redis"])
def cluster(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"preheat-{request.param}")
    overrides = {}
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        overrides["redis"] = {"address": redis.address, "key_prefix": f"t{uuid.uuid4().hex[:8]}:"}
    with contextlib.ExitStack() as stack:
        manager, scheduler, seed = start_managed_cluster(
            stack, work, pat=PAT, hostname="sched-preheat", **overrides
        )
        peer = stack.enter_context(PeerProcess(work, "peer", **peer_config(scheduler, "peer")))
        seed_host = ids.host_id("127.0.0.1", "seed", seed=True)
        scheduler.wait_log(f"host announced host={seed_host} type=seed")
        assert f"job_queue={request.param}" in manager.log()  # the backend under test
        client = manager.client(PAT)
        wait_for(
            lambda: any(s["state"] == "active" for s in client.get("/api/v1/schedulers")),
            "the scheduler to register with the manager",
        )
        registry = stack.enter_context(Registry(_mkdir(work / "registry-anon")))
        yield SimpleNamespace(
            backend=request.param, work=work, manager=manager, scheduler=scheduler,
            seed=seed, peer=peer, seed_host=seed_host, client=client, registry=registry,
        )  # fmt: skip


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def preheat(client, args: dict, clusters=(1,)) -> dict:
    return client.ok(
        "POST",
        "/api/v1/jobs",
        {"type": "preheat", "args": args, "scheduler_cluster_ids": list(clusters)},
        201,
    )


def finished(client, job_id: int, timeout: float = 90.0) -> dict:
    def done():
        job = client.get(f"/api/v1/jobs/{job_id}")
        return job if job["state"] in ("SUCCESS", "FAILURE") else None

    return wait_for(done, f"job {job_id} to finish", timeout=timeout)


def test_image_preheat_fills_the_seed_peer_and_a_later_pull_is_p2p(cluster, tmp_path):
    registry, client = cluster.registry, cluster.client
    tag = f"v{cluster.backend}"
    layers = push_image(tmp_path, registry, tag, seed=11)
    before = blob_gets(registry)
    url = f"{registry.base}/v2/{REPO}/manifests/{tag}"
    job = preheat(client, {"type": "image", "url": url})
    assert job["state"] == "PENDING" and job["args"]["url"] == url
    job = finished(client, job["id"])
    assert job["state"] == "SUCCESS", job
    tasks = job["result"]["tasks"]
    blob_urls = [t["url"] for t in tasks]
    # The config blob, then the three layers, each with dfget's task ID for its URL.
    assert blob_urls[1:] == [f"{registry.base}/v2/{REPO}/blobs/{d}" for d in layers]
    assert len(tasks) == 4
    for task in tasks:
        assert task["state"] == "SUCCESS" and task["error"] == ""
        assert task["seed_peer"] == cluster.seed_host
        assert task["task_id"] == ids.task_id(task["url"])
    assert blob_gets(registry) > before  # the seed peer fetched them
    # The seed peer holds every layer, whole (sha256 of its content is the digest).
    for task, digest in zip(tasks[1:], layers, strict=True):
        status, body = cluster.seed.http_get(task["task_id"])
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    # A peer's download of a layer is P2P: the registry serves no blob for it.
    fetched = blob_gets(registry)
    origin_before, peers_before = peer_bytes(cluster.peer)
    out = tmp_path / "layer.out"
    result = cluster.peer.dfget(tasks[1]["url"], out)
    assert result.returncode == 0, result.stderr
    assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == layers[0]
    assert blob_gets(registry) == fetched, "the peer's download reached the registry"
    origin_after, peers_after = peer_bytes(cluster.peer)
    assert origin_after == origin_before  # 0 bytes from the registry, by its own count
    assert peers_after - peers_before == out.stat().st_size  # all of it from the seed
    # Preheating the same image again finds it on the seed peer: no blob is fetched.
    again = finished(client, preheat(client, {"type": "image", "url": url})["id"])
    assert again["state"] == "SUCCESS" and blob_gets(registry) == fetched


def test_an_index_is_narrowed_to_the_platform(cluster, tmp_path):
    """A multi-platform OCI index: linux/amd64 by default, linux/arm64 when asked."""
    registry, client = cluster.registry, cluster.client
    amd64 = push_image(tmp_path, registry, f"amd64-{cluster.backend}", seed=21)
    arm_digest, arm_layers = registry.push_artifact(REPO, f"arm-{cluster.backend}", [b"arm" * 999])
    status, _, body = registry.request(
        "GET", f"/v2/{REPO}/manifests/amd64-{cluster.backend}", headers={"Accept": OCI_MANIFEST}
    )
    assert status == 200
    amd_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": 1,
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": OCI_MANIFEST, "digest": amd_digest, "size": len(body),
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]}  # fmt: skip
    index["manifests"][0]["size"] = len(
        registry.request("GET", f"/v2/{REPO}/manifests/{arm_digest}",
                         headers={"Accept": OCI_MANIFEST})[2]
    )  # fmt: skip
    tag = f"multi-{cluster.backend}"
    registry.push_manifest(REPO, tag, index, OCI_INDEX)
    url = f"{registry.base}/v2/{REPO}/manifests/{tag}"
    default = finished(client, preheat(client, {"type": "image", "url": url})["id"])
    assert default["state"] == "SUCCESS", default
    assert [t["url"].rsplit("/", 1)[1] for t in default["result"]["tasks"][1:]] == amd64
    arm = finished(client, preheat(client, {"type": "image", "url": url,
                                           "platform": "linux/arm64"})["id"])  # fmt: skip
    assert arm["state"] == "SUCCESS", arm
    assert [t["url"].rsplit("/", 1)[1] for t in arm["result"]["tasks"][1:]] == arm_layers
    missing = finished(client, preheat(client, {"type": "image", "url": url,
                                               "platform": "linux/s390x"})["id"])  # fmt: skip
    assert missing["state"] == "FAILURE"
    error = missing["result"]["tasks"][0]["error"]
    assert "linux/s390x" in error and "linux/amd64" in error and "linux/arm64" in error


def test_failures_name_the_url_and_the_cause(cluster):
    registry, client = cluster.registry, cluster.client
    no_tag = f"{registry.base}/v2/{REPO}/manifests/no-such-tag"
    no_blob = f"{registry.base}/v2/{REPO}/blobs/sha256:{'0' * 64}"
    closed = f"http://127.0.0.1:{free_port()}/v2/{REPO}/manifests/latest"
    jobs = {
        "manifest 404": preheat(client, {"type": "image", "url": no_tag}),
        "blob 404": preheat(client, {"type": "file", "url": no_blob}),
        "unreachable": preheat(client, {"type": "image", "url": closed}),
    }
    results = {name: finished(client, job["id"]) for name, job in jobs.items()}
    for name, job in results.items():
        assert job["state"] == "FAILURE", (name, job)
        (task,) = job["result"]["tasks"]
        assert task["state"] == "FAILURE" and task["error"], (name, task)
    manifest_error = results["manifest 404"]["result"]["tasks"][0]["error"]
    assert "404" in manifest_error and no_tag in manifest_error
    blob_task = results["blob 404"]["result"]["tasks"][0]
    assert "404" in blob_task["error"] and no_blob in blob_task["error"]
    assert blob_task["seed_peer"] == cluster.seed_host  # the seed peer tried and said why
    unreachable = results["unreachable"]["result"]["tasks"][0]["error"]
    assert "unreachable" in unreachable and closed in unreachable
    # The manager and the cluster go on serving: a good preheat still succeeds.
    ok = finished(
        client,
        preheat(
            client,
            {
                "type": "file",
                "url": no_blob.replace(
                    "sha256:" + "0" * 64, registry.push_blob(REPO, b"still serving" * 100)
                ),
            },
        )["id"],
    )
    assert ok["state"] == "SUCCESS", ok


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_registry_credentials(cluster, tmp_path, auth):
    """A registry behind Basic auth, and one behind a token service (Bearer): the right
    credentials preheat (the seed peer gets the credential that worked), wrong ones
    fail the job naming the user and the URL."""
    with contextlib.ExitStack() as stack:
        realm = ""
        if auth == "token":
            tokens = stack.enter_context(TokenService(require=REGISTRY_USER))
            realm = tokens.realm
        registry = stack.enter_context(Registry(_mkdir(tmp_path / "reg"), auth=auth,
                                                token_realm=realm))  # fmt: skip
        layers = push_image(tmp_path, registry, "secret", seed=31)
        url = f"{registry.base}/v2/{REPO}/manifests/secret"
        user, password = REGISTRY_USER
        client = cluster.client
        good = preheat(client, {"type": "image", "url": url, "username": user,
                                "password": password})  # fmt: skip
        bad = preheat(client, {"type": "image", "url": url, "username": user,
                               "password": "wrong"})  # fmt: skip
        assert good["args"]["password"] == "******"  # never shown
        good, bad = finished(client, good["id"]), finished(client, bad["id"])
        assert good["state"] == "SUCCESS", good
        assert [t["url"].rsplit("/", 1)[1] for t in good["result"]["tasks"][1:]] == layers
        assert bad["state"] == "FAILURE"
        error = bad["result"]["tasks"][0]["error"]
        assert f"user '{user}'" in error and "wrong username or password" in error
        assert url in error
        out = tmp_path / "layer.out"
        fetched = blob_gets(registry)
        # The peer pulls P2P without any credential: the seed peer has the bytes.
        result = cluster.peer.dfget(good["result"]["tasks"][1]["url"], out)
        assert result.returncode == 0, result.stderr
        assert blob_gets(registry) == fetched
        assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == layers[0]


def test_jobs_api_validation_auth_and_audit(cluster):
    manager = cluster.manager
    root = manager.signin()
    url = "http://127.0.0.1:9/file.bin"

    def refused(body, status=422, field=None, words=()):
        got, answer, _ = root.call("POST", "/api/v1/jobs", body)
        assert got == status, answer
        if field is not None:
            assert answer["field"] == field, answer
        for word in words:
            assert word in answer["message"], answer
        return answer

    refused({"type": "sync", "args": {"type": "file", "url": url}}, field="type")
    refused({"type": "preheat", "args": {"type": "disk", "url": url}}, field="args.type")
    refused({"type": "preheat", "args": {"type": "file"}}, field="args.url")
    refused({"type": "preheat", "args": {"type": "file", "url": "ftp://h/x"}},
            field="args.url", words=["ftp://h/x"])  # fmt: skip
    refused({"type": "preheat", "args": {"type": "image", "url": url}},
            field="args.url", words=["manifest URL"])  # fmt: skip
    refused({"type": "preheat", "args": {"type": "file", "url": url, "speed": 1}},
            field="args.speed", words=["unknown field"])  # fmt: skip
    refused({"type": "preheat", "args": {"type": "file", "url": url, "headers": {"a b": "c"}}},
            field="args.headers")  # fmt: skip
    refused(
        {
            "type": "preheat",
            "args": {
                "type": "image",
                "url": url.replace("file.bin", "v2/r/manifests/t"),
                "platform": "amd64",
            },
        },
        field="args.platform",
    )
    refused({"type": "preheat", "args": {"type": "file", "url": url},
             "scheduler_cluster_ids": [1, 999999]}, field="scheduler_cluster_ids[1]",
            words=["999999"])  # fmt: skip
    refused({"type": "preheat", "args": {"type": "file", "url": url},
             "scheduler_cluster_ids": [0]}, field="scheduler_cluster_ids[0]")  # fmt: skip
    got, answer, _ = root.call("POST", "/api/v1/jobs", raw=b"{not json")
    assert got == 400, answer
    # Scopes: a cluster-only token may not; a job token may; a guest may only read.
    cluster_only = root.ok("POST", "/api/v1/personal-access-tokens",
                           {"name": f"c-{uuid.uuid4().hex[:6]}", "scopes": ["cluster"],
                            "expires_in": 600}, 201)["token"]  # fmt: skip
    job_token = root.ok("POST", "/api/v1/personal-access-tokens",
                        {"name": f"j-{uuid.uuid4().hex[:6]}", "scopes": ["job"],
                         "expires_in": 600}, 201)["token"]  # fmt: skip
    body = {"type": "preheat", "args": {"type": "file", "url": url,
            "headers": {"Authorization": "Bearer secret"}}}  # fmt: skip
    status, answer, _ = manager.client(cluster_only).call("POST", "/api/v1/jobs", body)
    assert status == 403 and "job" in answer["message"], answer
    job = manager.client(job_token).ok("POST", "/api/v1/jobs", body, 201)
    assert job["args"]["headers"] == {"Authorization": "******"}  # a credential: redacted
    assert job["scheduler_cluster_ids"] == []  # every cluster
    name = f"g-{uuid.uuid4().hex[:6]}"
    root.ok("POST", "/api/v1/users", {"name": name, "password": "guest-password"}, 201)
    guest = manager.signin(name, "guest-password")
    assert guest.get(f"/api/v1/jobs/{job['id']}")["id"] == job["id"]
    assert guest.call("POST", "/api/v1/jobs", body)[0] == 403
    # Listing: paginated like the other lists, newest first, filtered by state.
    _, listed, headers = root.call("GET", "/api/v1/jobs?per_page=1")
    assert len(listed) == 1 and int(headers["X-Total-Count"]) >= 2
    assert listed[0]["id"] >= job["id"]
    assert root.call("GET", "/api/v1/jobs?state=DONE")[0] == 422
    assert root.call("GET", "/api/v1/jobs?per_page=0")[0] == 422
    # Delete: gone, and audited with the actor.
    assert root.call("DELETE", f"/api/v1/jobs/{job['id']}")[0] == 204
    assert root.call("GET", f"/api/v1/jobs/{job['id']}")[0] == 404
    audits = root.get("/api/v1/audits?per_page=20")
    paths = [(a["method"], a["path"], a["state"]) for a in audits]
    assert ("DELETE", f"/api/v1/jobs/{job['id']}", "success") in paths
    assert ("POST", "/api/v1/jobs", "failure") in paths  # the guest's refusal
    creator = [a for a in audits if a["method"] == "POST" and a["path"] == "/api/v1/jobs"
               and a["actor_type"] == "token"]  # fmt: skip
    assert creator, audits


def test_a_cluster_without_a_scheduler_fails_at_once(cluster):
    client = cluster.client
    empty = client.ok("POST", "/api/v1/clusters", {"name": f"empty-{uuid.uuid4().hex[:6]}"}, 201)
    job = finished(client, preheat(client, {"type": "file", "url": "http://127.0.0.1:9/x"},
                                   clusters=[empty["id"]])["id"])  # fmt: skip
    assert job["state"] == "FAILURE"
    error = job["result"]["tasks"][0]["error"]
    assert f"scheduler cluster {empty['id']} has no active scheduler" in error


def test_job_rate_limit_caps_the_tasks_a_cluster_gets_per_second(cluster):
    """job_rate_limit 1: however many tasks a scheduler asks for, each claim (one per
    second's window) gets one, until all are handed out."""
    client = cluster.client
    name = f"slow-{uuid.uuid4().hex[:6]}"
    slow = client.ok(
        "POST",
        "/api/v1/clusters",
        {"name": name, "scheduler_cluster_config": {"job_rate_limit": 1}},
        201,
    )
    sched = client.ok("POST", "/api/v1/schedulers", {"hostname": name, "ip": "127.0.0.77",
                      "port": 8002, "cluster_id": slow["id"]}, 201)  # fmt: skip
    jobs = [preheat(client, {"type": "file", "url": f"http://127.0.0.1:9/r{i}"},
                    clusters=[slow["id"]]) for i in range(3)]  # fmt: skip
    wait_for(
        lambda: all(client.get(f"/api/v1/jobs/{j['id']}")["result"]["tasks"] for j in jobs),
        "the jobs' tasks to be queued",
    )
    claimed = []
    while len(claimed) < 3:
        got = client.ok("POST", f"/api/v1/schedulers/{sched['id']}/jobs/claim",
                        {"max_tasks": 10, "wait": 10})  # fmt: skip
        assert len(got) == 1, got
        claimed += got
    assert sorted(t["url"] for t in claimed) == [f"http://127.0.0.1:9/r{i}" for i in range(3)]
    for job in jobs:
        assert client.get(f"/api/v1/jobs/{job['id']}")["state"] == "RUNNING"


@pytest.mark.parametrize("backend", ["sql", "redis"])
def test_a_stopped_scheduler_s_task_goes_to_another_and_a_late_job_times_out(
    request, tmp_path, backend
):
    """Schedulers are played through the API here (register, keepalive, claim, report):
    a task held by a scheduler whose keepalives stop is handed to another one, the old
    holder's late report is ignored; a task nobody finishes fails the job at its
    deadline."""
    overrides: dict = {"keepalive": {"timeout": "1s"}, "job": {"preheat_timeout": "4s"}}
    if backend == "redis":
        redis = request.getfixturevalue("redis_server")
        overrides["redis"] = {"address": redis.address, "key_prefix": f"s{uuid.uuid4().hex[:8]}:"}
    with ManagerProcess(tmp_path, pat=PAT, **overrides) as manager:
        client = manager.client(PAT)

        def register(name: str) -> int:
            body = {"hostname": name, "ip": "127.0.0.1", "port": 8002, "cluster_id": 1}
            return client.ok("POST", "/api/v1/schedulers", body, 201)["id"]

        def claim(sched: int) -> list:
            client.ok("POST", f"/api/v1/schedulers/{sched}/keepalive")
            return client.ok("POST", f"/api/v1/schedulers/{sched}/jobs/claim", {"wait": 0.2})

        first = register("first")
        job = preheat(client, {"type": "file", "url": "http://127.0.0.1:9/lost"})
        (task,) = wait_for(lambda: claim(first), "the first scheduler to get the task")
        second = register("second")
        # The first sends no keepalive from now on: the task moves to the second.
        (again,) = wait_for(lambda: claim(second), "the task to be handed out again")
        assert again["id"] == task["id"]
        manager.wait_log(f"preheat task requeued id={task['id']}")
        late = {"tasks": [{"id": task["id"], "state": "FAILURE", "error": "late"}]}
        assert client.ok("POST", f"/api/v1/schedulers/{first}/jobs/report", late) == {
            "recorded": 0, "ignored": 1}  # fmt: skip
        done = {"tasks": [{"id": task["id"], "state": "SUCCESS", "seed_peer": "s2"}]}
        assert client.ok("POST", f"/api/v1/schedulers/{second}/jobs/report", done)["recorded"] == 1
        assert finished(client, job["id"])["state"] == "SUCCESS"
        # Claimed and never reported (the scheduler lives on): the deadline fails it.
        slow = preheat(client, {"type": "file", "url": "http://127.0.0.1:9/slow"})
        wait_for(lambda: claim(second), "the second scheduler to take the slow task")
        ended = wait_for(
            lambda: (lambda j: j if j["state"] != "RUNNING" else claim(second) and None)(
                client.get(f"/api/v1/jobs/{slow['id']}")
            ),
            "the slow job to time out",
        )
        assert ended["state"] == "FAILURE"
        assert "timed out: not done within 4s" in ended["result"]["tasks"][0]["error"]
        # A job's own timeout replaces job.preheat_timeout, and its error says which.
        short = preheat(client, {"type": "file", "url": "http://127.0.0.1:9/short",
                                 "timeout": 1})  # fmt: skip
        short = finished(client, short["id"])
        assert short["state"] == "FAILURE"
        assert "not done within 1s (args.timeout)" in short["result"]["tasks"][0]["error"]


def test_file_preheat_with_tag_filtered_params_and_headers_serves_dfget_p2p(
    cluster, origin, tmp_path
):
    """A file preheat's task ID is dfget's: the same tag, the same filtered query
    parameter (with another value: a new signature) finds the seed peer's copy, and the
    origin serves nothing more. The headers reached the origin with the seed's fetch."""
    client = cluster.client
    name = f"signed-{cluster.backend}.bin"
    base = origin.add_file(name, size=6 << 20, seed=41)
    job = preheat(client, {"type": "file", "url": f"{base}?sig=first&keep=1", "tag": "t1",
                           "filtered_query_params": "sig&Expires",
                           "headers": {"X-Preheat": "yes"}})  # fmt: skip
    job = finished(client, job["id"])
    assert job["state"] == "SUCCESS", job
    (task,) = job["result"]["tasks"]
    names = ["sig", "Expires"]
    assert task["task_id"] == ids.task_id(
        f"{base}?sig=other&keep=1", tag="t1", filtered_query_params=names
    )
    stats = origin.stats(f"/{name}")
    assert stats["requests"] >= 1
    assert all(h.get("X-Preheat") == "yes" for h in stats["headers"])
    served = stats["bytes_sent"]
    out = tmp_path / "signed.out"
    result = cluster.peer.dfget(
        f"{base}?sig=other&keep=1", out, "--tag", "t1",
        "--filtered-query-param", "sig", "--filtered-query-param", "Expires",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == origin.content(name)
    assert origin.stats(f"/{name}")["bytes_sent"] == served, "dfget reached the origin"


def test_all_seed_peers_and_all_peers_fill_every_host(cluster, origin):
    """Scope all_seed_peers: each of two seed peers downloads the task (one result row
    each) and holds it whole; its application and piece length are in the task ID.
    Scope all_peers: the ordinary peer downloads it too, from the seed peers (P2P: no
    byte from the origin), with a row of its own."""
    client, name = cluster.client, f"scoped-{cluster.backend}"
    seed2_host = ids.host_id("127.0.0.1", name, seed=True)
    peer_host = ids.host_id("127.0.0.1", "peer")
    with PeerProcess(
        cluster.work, name, **peer_config(cluster.scheduler, name, seed=True)
    ) as seed2:
        cluster.scheduler.wait_log(f"host announced host={seed2_host} type=seed")
        url = origin.add_file(f"{name}.bin", size=5 << 20, seed=43)
        job = preheat(client, {"type": "file", "url": url, "scope": "all_seed_peers",
                               "application": "app-x", "piece_length": 4 << 20})  # fmt: skip
        assert job["args"]["scope"] == "all_seed_peers"
        job = finished(client, job["id"])
        assert job["state"] == "SUCCESS", job
        tasks = job["result"]["tasks"]
        assert sorted(t["seed_peer"] for t in tasks) == sorted([cluster.seed_host, seed2_host])
        task_id = ids.task_id(url, application="app-x", piece_length=4 << 20)
        content = origin.content(f"{name}.bin")
        for task in tasks:
            assert (task["state"], task["task_id"], task["url"]) == ("SUCCESS", task_id, url)
        for holder in (cluster.seed, seed2):
            status, body = holder.http_get(task_id)
            assert status == 200 and body == content, holder.name
        assert cluster.peer.http_get(task_id)[0] != 200  # not preheated there
        served = origin.stats(f"/{name}.bin")["bytes_sent"]
        origin_before, peers_before = peer_bytes(cluster.peer)

        job = finished(client, preheat(client, {"type": "file", "url": url, "scope": "all_peers",
                                                "application": "app-x",
                                                "piece_length": 4 << 20})["id"])  # fmt: skip
        assert job["state"] == "SUCCESS", job
        hosts = sorted(t["seed_peer"] for t in job["result"]["tasks"])
        assert hosts == sorted([cluster.seed_host, seed2_host, peer_host])
        status, body = cluster.peer.http_get(task_id)
        assert status == 200 and body == content
        origin_after, peers_after = peer_bytes(cluster.peer)
        assert origin_after == origin_before and peers_after - peers_before == len(content)
        assert origin.stats(f"/{name}.bin")["bytes_sent"] == served  # the seeds had it
    cluster.scheduler.wait_log(f"host left host={seed2_host}")


def test_a_file_preheat_of_several_urls(cluster, origin):
    """``urls``: one task per file, each with its own task ID, each on the seed peer."""
    client, names = cluster.client, [f"many-{cluster.backend}-{i}.bin" for i in range(2)]
    urls = [origin.add_file(n, size=(1 << 20) + i, seed=50 + i) for i, n in enumerate(names)]
    job = finished(client, preheat(client, {"type": "file", "urls": urls, "tag": "t2"})["id"])
    assert job["state"] == "SUCCESS", job
    tasks = job["result"]["tasks"]
    assert [t["url"] for t in tasks] == urls
    for task, name in zip(tasks, names, strict=True):
        assert task["seed_peer"] == cluster.seed_host
        assert task["task_id"] == ids.task_id(task["url"], tag="t2")
        status, body = cluster.seed.http_get(task["task_id"])
        assert status == 200 and body == origin.content(name)
