"""The manager's REST API against a real manager process, on SQLite and on PostgreSQL.

Every test here runs twice: the module's manager uses the embedded SQLite default, then
a database in a real PostgreSQL server (tests/postgres_server.py).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest

from tests.manager_harness import ROOT_PASSWORD, ManagerProcess

PAT = "d7y_pat_seeded-token-for-the-tests"
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def manager(request, tmp_path_factory):
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"api_{uuid.uuid4().hex[:8]}")
    with ManagerProcess(tmp_path_factory.mktemp("manager"), database_url=url, pat=PAT) as proc:
        proc.backend = request.param
        yield proc


@pytest.fixture(scope="module")
def root(manager):
    return manager.signin()


def run_sql(manager: ManagerProcess, statement: str) -> None:
    """Change a row behind the manager's back (to make a token expire now)."""
    from sqlalchemy import text

    from d7y.daemons.manager.config import load_manager_config
    from d7y.daemons.manager.db import create_engine

    config = load_manager_config(manager.config_path)

    async def run() -> None:
        engine = create_engine(config.database_url())
        async with engine.begin() as conn:
            await conn.execute(text(statement))
        await engine.dispose()

    asyncio.run(run())


def audit_count(root) -> int:
    _, _, headers = root.call("GET", "/api/v1/audits?per_page=1")
    return int(headers["X-Total-Count"])


# -- first start ----------------------------------------------------------------------


def test_first_start_seeds_the_default_cluster_root_and_the_token(manager, root):
    clusters = root.get("/api/v1/clusters?name=cluster-1")
    assert len(clusters) == 1 and clusters[0]["is_default"] is True
    assert clusters[0]["scheduler_cluster_config"]["candidate_parent_limit"] == 4
    me = root.get("/api/v1/users/me")
    assert me["name"] == "root" and me["role"] == "root"
    # The token from $D7Y_PAT works, with both scopes, as root.
    with_pat = manager.client(PAT)
    assert with_pat.get("/api/v1/clusters")[0]["name"] == "cluster-1"
    tokens = root.get("/api/v1/personal-access-tokens")
    seeded = [t for t in tokens if t["name"] == "d7y-pat"]
    assert seeded and seeded[0]["scopes"] == ["job", "cluster"] and "token" not in seeded[0]


def test_signin_with_a_wrong_password_is_401_and_audited(manager, root):
    before = audit_count(root)
    status, body, _ = manager.client().call(
        "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD + "x"}
    )
    assert status == 401 and body["message"] == "wrong user name or password"
    newest = root.get("/api/v1/audits?per_page=1")[0]
    assert audit_count(root) == before + 1
    assert (newest["path"], newest["status_code"], newest["state"]) == (
        "/api/v1/users/signin",
        401,
        "failure",
    )


def test_health_unknown_routes_big_bodies_and_metrics(manager, root):
    client = manager.client()
    assert client.call("GET", "/healthy")[:2] == (200, "ok")
    status, body, _ = client.call("GET", "/api/v1/nothing-here")
    assert status == 404 and "no route GET /api/v1/nothing-here" in body["message"]
    status, body, _ = root.call(
        "POST", "/api/v1/clusters", raw=b" " * ((1 << 20) + 100)
    )  # all sent before the refusal
    assert status == 413 and body["error"] == "http"  # over server.max_body (1 MiB)
    assert root.get("/api/v1/clusters")  # and serving on
    counted = manager.metrics()
    key = 'd7y_manager_requests_total{method="GET",route="/api/v1/clusters",status="200"}'
    assert counted[key] >= 1
    assert (
        counted['d7y_manager_requests_total{method="POST",route="/api/v1/clusters",status="413"}']
        == 1
    )


# -- clusters --------------------------------------------------------------------------


def test_cluster_create_read_update_delete(root):
    name = unique("c")
    created = root.ok("POST", "/api/v1/clusters", {
        "name": name,
        "scopes": {"idc": "idc-a|idc-b", "location": "cn|hz", "cidrs": ["10.1.0.0/16"],
                   "hostnames": ["^edge-"]},
        "scheduler_cluster_config": {"candidate_parent_limit": 20, "filter_parent_limit": 10},
        "peer_cluster_config": {"load_limit": 2000, "block_list": ["bad-host"]},
    }, status=201)  # fmt: skip
    ident = created["id"]
    assert created["scheduler_cluster_config"] == {
        "candidate_parent_limit": 20,
        "filter_parent_limit": 10,
        "job_rate_limit": 10,
    }
    assert root.get(f"/api/v1/clusters/{ident}") == created
    changed = root.ok(
        "PATCH", f"/api/v1/clusters/{ident}", {"seed_peer_cluster_config": {"load_limit": 7}}
    )
    assert changed["seed_peer_cluster_config"] == {"load_limit": 7}
    assert changed["scopes"] == created["scopes"]  # untouched fields stay
    root.ok("DELETE", f"/api/v1/clusters/{ident}", status=204)
    status, body, _ = root.call("GET", f"/api/v1/clusters/{ident}")
    assert status == 404 and f"cluster {ident} does not exist" in body["message"]


def test_one_default_cluster(root):
    made = root.ok("POST", "/api/v1/clusters", {"name": unique("d"), "is_default": True}, 201)
    defaults = [c for c in root.get("/api/v1/clusters?per_page=1000") if c["is_default"]]
    assert [c["id"] for c in defaults] == [made["id"]]
    first = root.get("/api/v1/clusters?name=cluster-1")[0]
    root.ok("PATCH", f"/api/v1/clusters/{first['id']}", {"is_default": True})
    defaults = [c for c in root.get("/api/v1/clusters?per_page=1000") if c["is_default"]]
    assert [c["id"] for c in defaults] == [first["id"]]


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"scheduler_cluster_config": {"candidate_parent_limit": 21}}, 422,
         "scheduler_cluster_config.candidate_parent_limit", ["integer in 1..20", "got 21"]),
        ({"scheduler_cluster_config": {"candidate_parent_limit": 0}}, 422,
         "scheduler_cluster_config.candidate_parent_limit", ["1..20", "got 0"]),
        ({"scheduler_cluster_config": {"filter_parent_limit": 9}}, 422,
         "scheduler_cluster_config.filter_parent_limit", ["10..1000", "got 9"]),
        ({"peer_cluster_config": {"load_limit": 2001}}, 422,
         "peer_cluster_config.load_limit", ["1..2000", "got 2001"]),
        ({"scheduler_cluster_config": {"candidate_parent_limit": "3"}}, 422,
         "scheduler_cluster_config.candidate_parent_limit", ["integer", 'got "3"']),
        ({"scopes": {"cidrs": ["10.0.0.0/33"]}}, 422, "scopes.cidrs[0]", ["not a CIDR"]),
        ({"scopes": {"hostnames": ["(unclosed"]}}, 422, "scopes.hostnames[0]",
         ["not a regular expression"]),
        ({"scopes": {"zone": "x"}}, 422, "scopes.zone",
         ["unknown field", "idc, location, cidrs, hostnames"]),
        ({"colour": "blue"}, 422, "colour", ["unknown field", "scheduler_cluster_config"]),
    ],
)  # fmt: skip
def test_bad_cluster_values_are_refused_by_field_and_range(root, body, status, field, words):
    before = len(root.get("/api/v1/clusters?per_page=1000"))
    audits = audit_count(root)
    got, answer, _ = root.call("POST", "/api/v1/clusters", {"name": unique("bad"), **body})
    assert got == status, answer
    assert answer["field"] == field
    for word in words:
        assert word in answer["message"], answer["message"]
    assert len(root.get("/api/v1/clusters?per_page=1000")) == before  # nothing written
    assert audit_count(root) == audits + 1  # the refusal is audited


def test_missing_name_and_malformed_json(root):
    status, body, _ = root.call("POST", "/api/v1/clusters", {"bio": "no name"})
    assert status == 422 and body["field"] == "name" and "`name` is required" in body["message"]
    status, body, _ = root.call("POST", "/api/v1/clusters", raw=b'{"name": "x",')
    assert status == 400 and body["error"] == "malformed"
    assert "not valid JSON" in body["message"]
    status, body, _ = root.call("POST", "/api/v1/clusters", raw=b"[1, 2]")
    assert status == 422 and "must be an object" in body["message"]


def test_duplicate_cluster_name_is_409_and_changes_nothing(root):
    name = unique("dup")
    first = root.ok("POST", "/api/v1/clusters", {"name": name}, 201)
    status, body, _ = root.call("POST", "/api/v1/clusters", {"name": name, "bio": "second"})
    assert status == 409 and body["field"] == "name"
    assert f"{name!r} exists (id {first['id']})" in body["message"]
    assert root.get(f"/api/v1/clusters?name={name}") == [first]
    other = root.ok("POST", "/api/v1/clusters", {"name": unique("dup")}, 201)
    status, body, _ = root.call("PATCH", f"/api/v1/clusters/{other['id']}", {"name": name})
    assert status == 409
    assert root.get(f"/api/v1/clusters/{other['id']}")["name"] == other["name"]


def test_bad_query_parameters(root):
    status, body, _ = root.call("GET", "/api/v1/clusters?per_page=5000")
    assert status == 422 and "1..1000" in body["message"] and body["field"] == "per_page"
    status, body, _ = root.call("GET", "/api/v1/clusters?sort=name")
    assert status == 422 and "sort" in body["message"]


# -- users, roles, tokens ------------------------------------------------------------------


def test_guest_reads_but_cannot_write(manager, root):
    name = unique("guest")
    user = root.ok("POST", "/api/v1/users", {"name": name, "password": "guest-password"}, 201)
    assert user["role"] == "guest"
    guest = manager.signin(name, "guest-password")
    assert guest.get("/api/v1/clusters")
    status, body, _ = guest.call("POST", "/api/v1/clusters", {"name": unique("g")})
    assert status == 403 and "may only read" in body["message"]
    status, _, _ = guest.call("DELETE", f"/api/v1/users/{user['id']}")
    assert status == 403
    # ... except their own password, with the old one.
    path = f"/api/v1/users/{user['id']}/reset_password"
    status, body, _ = guest.call("POST", path, {"old_password": "wrong", "new_password": "x" * 8})
    assert status == 403 and body["field"] == "old_password"
    guest.ok("POST", path, {"old_password": "guest-password", "new_password": "new-pass-1"}, 204)
    manager.signin(name, "new-pass-1")
    # Disabling the user ends their sessions.
    root.ok("PATCH", f"/api/v1/users/{user['id']}", {"state": "disable"})
    assert guest.call("GET", "/api/v1/clusters")[0] == 401
    assert root.get("/api/v1/roles")[0]["name"] == "root"


def test_the_last_root_stays(root):
    me = root.get("/api/v1/users/me")
    status, body, _ = root.call("PATCH", f"/api/v1/users/{me['id']}", {"role": "guest"})
    assert status == 409 and "last enabled root" in body["message"]
    assert root.get("/api/v1/users/me")["role"] == "root"


def test_personal_access_tokens_scopes_expiry_revocation(manager, root):
    tokens = "/api/v1/personal-access-tokens"
    made = root.ok("POST", tokens, {"name": unique("t"), "scopes": ["cluster"],
                                    "expires_in": 3600}, 201)  # fmt: skip
    token = made.pop("token")
    assert token.startswith("d7y_pat_") and made["state"] == "active"
    # Shown once: never again.
    assert "token" not in root.get(f"/api/v1/personal-access-tokens/{made['id']}")
    with_token = manager.client(token)
    assert with_token.get("/api/v1/clusters")
    with_token.ok("POST", "/api/v1/clusters", {"name": unique("by-token")}, 201)
    # The scope does not cover users or tokens.
    status, body, _ = with_token.call("GET", "/api/v1/users")
    assert status == 403 and "do not cover users" in body["message"]
    job_only = root.ok("POST", tokens, {"name": unique("j"), "scopes": ["job"],
                                        "expires_in": 3600}, 201)  # fmt: skip
    status, body, _ = manager.client(job_only["token"]).call("GET", "/api/v1/clusters")
    assert status == 403 and "scope 'cluster'" in body["message"]
    # Unknown: 401.
    status, body, _ = manager.client("d7y_pat_no-such-token").call("GET", "/api/v1/clusters")
    assert status == 401 and "unknown token" in body["message"]
    # Revoked: 403, and back when reactivated.
    root.ok("PATCH", f"/api/v1/personal-access-tokens/{made['id']}", {"state": "inactive"})
    status, body, _ = with_token.call("GET", "/api/v1/clusters")
    assert status == 403 and body["error"] == "token_inactive"
    root.ok("PATCH", f"/api/v1/personal-access-tokens/{made['id']}", {"state": "active"})
    assert with_token.get("/api/v1/clusters")
    # Expired: 403.
    run_sql(manager, f"UPDATE personal_access_tokens SET expires_at = 1 WHERE id = {made['id']}")
    status, body, _ = with_token.call("GET", "/api/v1/clusters")
    assert status == 403 and body["error"] == "token_expired"
    assert root.get(f"/api/v1/personal-access-tokens/{made['id']}")["state"] == "expired"
    # Deleted: unknown.
    root.ok("DELETE", f"/api/v1/personal-access-tokens/{made['id']}", status=204)
    assert with_token.call("GET", "/api/v1/clusters")[0] == 401


def test_bad_tokens_and_sessions(manager, root):
    client = manager.client()
    status, body, _ = client.call("GET", "/api/v1/clusters")
    assert status == 401 and "Authorization: Bearer" in body["message"]
    forged = root.token[:-4] + ("AAAA" if not root.token.endswith("AAAA") else "BBBB")
    status, body, _ = manager.client(forged).call("GET", "/api/v1/clusters")
    assert status == 401 and "sign in again" in body["message"]
    status, _, _ = root.call(
        "POST", "/api/v1/personal-access-tokens", {"name": "x", "scopes": [], "expires_in": 60}
    )
    assert status == 422


# -- schedulers, seed peers, search, config ------------------------------------------------


def register(client, cluster_id: int, hostname: str, ip: str, **extra) -> dict:
    body = {"hostname": hostname, "ip": ip, "port": 8002, "cluster_id": cluster_id, **extra}
    status, answer, _ = client.call("POST", "/api/v1/schedulers", body)
    assert status in (200, 201), answer
    return answer


def test_scheduler_register_keepalive_and_search(manager, root):
    pat = manager.client(PAT)  # what a scheduler would use: a token with scope cluster
    near = root.ok("POST", "/api/v1/clusters", {
        "name": unique("near"),
        "scopes": {"idc": "idc-9", "location": "eu|de|fra", "cidrs": ["10.9.0.0/16"]},
    }, 201)  # fmt: skip
    far = root.ok("POST", "/api/v1/clusters", {
        "name": unique("far"), "scopes": {"location": "eu|de", "hostnames": ["^nomatch$"]},
    }, 201)  # fmt: skip
    a = register(pat, near["id"], "sched-a", "127.0.0.11", idc="idc-9", location="eu|de|fra")
    assert a["state"] == "active" and a["last_keepalive_at"]
    again = register(pat, near["id"], "sched-a", "127.0.0.11", port=9000)
    assert again["id"] == a["id"] and again["port"] == 9000  # re-registration, not a copy
    b = register(pat, far["id"], "sched-b", "127.0.0.12")
    alive = pat.ok("POST", f"/api/v1/schedulers/{b['id']}/keepalive")
    assert alive["state"] == "active"
    assert pat.call("POST", "/api/v1/schedulers/999999/keepalive")[0] == 404
    found = pat.get(
        "/api/v1/schedulers/search?hostname=peer-1&ip=10.9.3.4&idc=IDC-9&location=eu|de|fra|x"
    )
    ours = [s for s in found if s["cluster_id"] in (near["id"], far["id"])]
    assert [s["hostname"] for s in ours] == ["sched-a", "sched-b"]
    # 0.3 CIDR + 0.25 IDC + 0.14 * 3/5 of the location.
    assert ours[0]["score"] == pytest.approx(0.3 + 0.25 + 0.14 * 3 / 5)
    assert ours[1]["score"] == pytest.approx(0.14 * 2 / 5)
    status, body, _ = pat.call("GET", "/api/v1/schedulers/search?hostname=p&ip=not-an-ip")
    assert status == 422 and body["field"] == "ip"
    # A cluster with active schedulers cannot go; nothing is deleted.
    status, body, _ = root.call("DELETE", f"/api/v1/clusters/{near['id']}")
    assert status == 409 and "sched-a" in body["message"]
    assert root.get(f"/api/v1/schedulers/{a['id']}")["cluster_id"] == near["id"]
    assert root.get(f"/api/v1/clusters/{near['id']}")
    listed = root.get(f"/api/v1/schedulers?cluster_id={near['id']}")
    assert [s["id"] for s in listed] == [a["id"]]


def test_register_needs_a_real_cluster_and_valid_values(manager):
    pat = manager.client(PAT)
    status, body, _ = pat.call(
        "POST", "/api/v1/schedulers",
        {"hostname": "h", "ip": "127.0.0.1", "port": 8002, "cluster_id": 999999},
    )  # fmt: skip
    assert status == 422 and body["field"] == "cluster_id"
    status, body, _ = pat.call(
        "POST", "/api/v1/schedulers", {"hostname": "h", "ip": "1.2.3", "port": 8002,
                                       "cluster_id": 1},
    )  # fmt: skip
    assert status == 422 and body["field"] == "ip"
    status, body, _ = pat.call(
        "POST", "/api/v1/schedulers", {"hostname": "h", "ip": "1.2.3.4", "port": 70000,
                                       "cluster_id": 1},
    )  # fmt: skip
    assert status == 422 and "1..65535" in body["message"] and "got 70000" in body["message"]


def test_cluster_config_for_schedulers(manager, root):
    pat = manager.client(PAT)
    cluster = root.ok("POST", "/api/v1/clusters", {
        "name": unique("cfg"),
        "scheduler_cluster_config": {"candidate_parent_limit": 6, "filter_parent_limit": 60},
        "peer_cluster_config": {"block_list": ["evil"]},
    }, 201)  # fmt: skip
    seed = pat.ok("POST", "/api/v1/seed-peers", {
        "hostname": "seed-1", "ip": "127.0.0.21", "port": 65000, "download_port": 65002,
        "cluster_id": cluster["id"],
    }, 201)  # fmt: skip
    config = pat.get(f"/api/v1/clusters/{cluster['id']}/config")
    assert config["scheduler_cluster_config"]["candidate_parent_limit"] == 6
    assert config["peer_cluster_config"]["block_list"] == ["evil"]
    assert [p["id"] for p in config["seed_peers"]] == [seed["id"]]
    assert pat.ok("POST", f"/api/v1/seed-peers/{seed['id']}/keepalive")["state"] == "active"
    status, body, _ = root.call("DELETE", f"/api/v1/clusters/{cluster['id']}")
    assert status == 409 and "seed peer" in body["message"]


# -- audits ------------------------------------------------------------------------------


def test_every_write_is_audited_with_its_actor(manager, root):
    before = audit_count(root)
    made = root.ok("POST", "/api/v1/clusters", {"name": unique("aud")}, 201)
    manager.client(PAT).ok("PATCH", f"/api/v1/clusters/{made['id']}", {"bio": "by token"})
    root.get("/api/v1/clusters")  # reads are not audited
    root.ok("DELETE", f"/api/v1/clusters/{made['id']}", status=204)
    newest = root.get("/api/v1/audits?per_page=3")
    assert audit_count(root) == before + 3
    assert [(a["method"], a["actor_type"], a["state"]) for a in newest] == [
        ("DELETE", "user", "success"),
        ("PATCH", "token", "success"),
        ("POST", "user", "success"),
    ]
    assert newest[1]["actor_name"].startswith("root/token-")


# -- the OpenAPI document against real answers ---------------------------------------------


def test_every_answer_matches_its_documented_schema(manager, root):
    """Real answers, checked against the served document's response schemas (which
    forbid extra fields): the document says what the handlers send."""
    from jsonschema import Draft202012Validator

    from d7y.daemons.manager.openapi import openapi_path

    document = manager.client().get("/api/v1/openapi.json")
    checked: set[tuple[str, str]] = set()

    def call(method: str, path: str, body=None, status: int = 200, template: str = ""):
        got, answer, _ = root.call(method, path, body)
        assert got == status, answer
        key = openapi_path(template or path.split("?")[0])
        schema = document["paths"][key][method.lower()]["responses"][str(status)]
        schema = schema["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": document["components"]}).validate(answer)
        checked.add((method, key))
        return answer

    ident = "/api/v1/{id}"
    signed = manager.client().call(
        "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD}
    )[1]
    schema = document["paths"]["/api/v1/users/signin"]["post"]["responses"]["200"]
    schema = {
        **schema["content"]["application/json"]["schema"],
        "components": document["components"],
    }
    Draft202012Validator(schema).validate(signed)
    with pytest.raises(Exception, match="Additional properties"):  # the check can fail
        Draft202012Validator(schema).validate({**signed, "extra": 1})
    call("GET", "/api/v1/users/me")
    user = call("POST", "/api/v1/users", {"name": unique("u"), "password": "password-1"}, 201)
    call("GET", f"/api/v1/users/{user['id']}", template=ident.replace("v1", "v1/users"))
    call("PATCH", f"/api/v1/users/{user['id']}", {"email": "u@example.org"},
         template=ident.replace("v1", "v1/users"))  # fmt: skip
    call("GET", "/api/v1/users")
    call("GET", "/api/v1/roles")
    token = call("POST", "/api/v1/personal-access-tokens",
                 {"name": unique("t"), "scopes": ["job"], "expires_in": 600}, 201)  # fmt: skip
    tokens = ident.replace("v1", "v1/personal-access-tokens")
    call("GET", f"/api/v1/personal-access-tokens/{token['id']}", template=tokens)
    call("PATCH", f"/api/v1/personal-access-tokens/{token['id']}", {"bio": "b"}, template=tokens)
    call("GET", "/api/v1/personal-access-tokens")
    cluster = call("POST", "/api/v1/clusters", {"name": unique("s")}, 201)
    clusters = ident.replace("v1", "v1/clusters")
    call("GET", f"/api/v1/clusters/{cluster['id']}", template=clusters)
    call("PATCH", f"/api/v1/clusters/{cluster['id']}", {"bio": "x"}, template=clusters)
    call("GET", "/api/v1/clusters")
    sched = call("POST", "/api/v1/schedulers", {"hostname": unique("h"), "ip": "127.0.0.31",
                 "port": 8002, "cluster_id": cluster["id"]}, 201)  # fmt: skip
    scheds = ident.replace("v1", "v1/schedulers")
    call("GET", f"/api/v1/schedulers/{sched['id']}", template=scheds)
    call("POST", f"/api/v1/schedulers/{sched['id']}/keepalive", template=scheds + "/keepalive")
    call("GET", "/api/v1/schedulers")
    call("GET", "/api/v1/schedulers/search?hostname=h&ip=127.0.0.1")
    seed_body = {"hostname": unique("sp"), "ip": "127.0.0.32", "port": 65000,
                 "download_port": 65002, "cluster_id": cluster["id"]}  # fmt: skip
    seed = call("POST", "/api/v1/seed-peers", seed_body, 201)
    seeds = ident.replace("v1", "v1/seed-peers")
    call("GET", f"/api/v1/seed-peers/{seed['id']}", template=seeds)
    call("POST", f"/api/v1/seed-peers/{seed['id']}/keepalive", template=seeds + "/keepalive")
    call("GET", "/api/v1/seed-peers")
    call("GET", f"/api/v1/clusters/{cluster['id']}/config", template=clusters + "/config")
    call("GET", "/api/v1/audits")
    jobs = ident.replace("v1", "v1/jobs")
    job = call("POST", "/api/v1/jobs", {"type": "preheat", "args": {
        "type": "file", "url": "http://127.0.0.1:9/f.bin"},
        "scheduler_cluster_ids": [cluster["id"]]}, 201)  # fmt: skip
    assert job["state"] == "PENDING" and job["result"] == {"tasks": []}
    call("GET", f"/api/v1/jobs/{job['id']}", template=jobs)
    call("GET", "/api/v1/jobs")
    # Dragonfly's open API paths: the same operations.
    oapi = call("POST", "/oapi/v1/jobs", {"type": "preheat", "args": {
        "type": "file", "url": "http://127.0.0.1:9/o.bin"},
        "scheduler_cluster_ids": [cluster["id"]]}, 201)  # fmt: skip
    assert (
        call("GET", f"/oapi/v1/jobs/{oapi['id']}", template="/oapi/v1/jobs/{id}")["id"]
        == (oapi["id"])
    )
    assert oapi["id"] in [j["id"] for j in call("GET", "/oapi/v1/jobs")]
    # The scheduler registered above is active: its cluster's tasks are queued for it
    # (the two jobs' tasks may come in one answer or in two).
    claimed: list = []
    while len(claimed) < 2:
        got = call("POST", f"/api/v1/schedulers/{sched['id']}/jobs/claim", {"wait": 10},
                   template=scheds + "/jobs/claim")  # fmt: skip
        assert got, "no task within the claim's wait"
        claimed += got
    assert sorted(t["url"] for t in claimed) == [
        "http://127.0.0.1:9/f.bin", "http://127.0.0.1:9/o.bin"]  # fmt: skip
    claimed = [t for t in claimed if t["url"] == "http://127.0.0.1:9/f.bin"]
    call("POST", f"/api/v1/schedulers/{sched['id']}/jobs/report",
         {"tasks": [{"id": claimed[0]["id"], "state": "SUCCESS", "seed_peer": "s"}]},
         template=scheds + "/jobs/report")  # fmt: skip
    done = call("GET", f"/api/v1/jobs/{job['id']}", template=jobs)
    assert done["state"] == "SUCCESS" and done["result"]["tasks"][0]["seed_peer"] == "s"
    # Every operation that answers JSON was checked.
    with_json = {
        (method.upper(), path)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        for code, response in op["responses"].items()
        if code.startswith("2") and "content" in response and path != "/api/v1/openapi.json"
    }
    assert with_json - checked == {("POST", "/api/v1/users/signin")}


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_writes_all_land_and_a_name_race_has_one_winner(manager, root):
    """Writers at once: distinct names all get 201; the same name, exactly one 201 and
    409 for the rest (the unique constraint backs the check a racing request passed)."""
    from concurrent.futures import ThreadPoolExecutor

    def create(name: str) -> int:
        return root.call("POST", "/api/v1/clusters", {"name": name})[0]

    prefix = unique("many")
    with ThreadPoolExecutor(8) as pool:
        distinct = list(pool.map(create, [f"{prefix}-{i}" for i in range(16)]))
        same_name = unique("race")
        raced = list(pool.map(create, [same_name] * 8))
    assert distinct == [201] * 16
    assert sorted(raced) == [201] + [409] * 7, raced
    assert len(root.get(f"/api/v1/clusters?name={same_name}")) == 1
