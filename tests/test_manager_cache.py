"""The manager's Redis response cache (GET /api/v1/clusters), against a real
redis-server: answers come from Redis once cached, every write to a cluster (REST)
drops them at once, and a Redis that goes away leaves the reads to the database."""

from __future__ import annotations

import msgspec
import pytest

from d7y.daemons.manager.response_cache import CachedAnswer
from tests.manager_harness import ManagerProcess
from tests.redis_server import RedisServer

PAT = "d7y_pat_cache-tests"
PREFIX = "c1:"


@pytest.fixture
def private_redis(request, tmp_path):
    """A redis-server of this test's own, to stop mid-test (the shared fixture decides
    whether a missing redis-server skips or fails)."""
    request.getfixturevalue("redis_server")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with RedisServer(workdir) as server:
        yield server


def test_cluster_list_is_served_from_redis_and_dropped_on_every_write(private_redis, tmp_path):
    import redis

    store = redis.Redis(host="127.0.0.1", port=private_redis.port)
    overrides = {"redis": {"address": private_redis.address, "key_prefix": PREFIX}}
    with ManagerProcess(tmp_path, pat=PAT, **overrides) as manager:
        client = manager.client(PAT)
        assert [c["name"] for c in client.get("/api/v1/clusters")] == ["cluster-1"]
        (key,) = store.keys(f"{PREFIX}cache:clusters:*:*")
        assert 0 < store.ttl(key) <= 60  # redis.cache_ttl
        # What Redis holds is what the next read answers (the database is not asked).
        marker = CachedAnswer(b'[{"name": "from-redis"}]', {"X-Total-Count": "7"})
        store.set(key, msgspec.msgpack.encode(marker))
        status, body, headers = client.call("GET", "/api/v1/clusters")
        assert (status, body, headers["X-Total-Count"]) == (200, [{"name": "from-redis"}], "7")
        # Another query is another answer.
        assert client.get("/api/v1/clusters?per_page=1")[0]["name"] == "cluster-1"

        # Create, update, delete: each read after it sees it.
        made = client.ok("POST", "/api/v1/clusters", {"name": "cached-2"}, 201)
        status, body, headers = client.call("GET", "/api/v1/clusters")
        assert [c["name"] for c in body] == ["cluster-1", "cached-2"]
        assert headers["X-Total-Count"] == "2"
        client.get("/api/v1/clusters")  # cached again
        client.ok("PATCH", f"/api/v1/clusters/{made['id']}", {"bio": "edited"})
        assert client.get("/api/v1/clusters")[1]["bio"] == "edited"
        client.ok("DELETE", f"/api/v1/clusters/{made['id']}", status=204)
        assert [c["name"] for c in client.get("/api/v1/clusters")] == ["cluster-1"]
        # A refused write (a name that exists) changes nothing and keeps the cache.
        generation = store.get(f"{PREFIX}cache:clusters:gen")
        assert client.call("POST", "/api/v1/clusters", {"name": "cluster-1"})[0] == 409
        assert store.get(f"{PREFIX}cache:clusters:gen") == generation

        # Redis goes away: reads come from the database, writes still commit.
        private_redis.stop()
        client.ok("POST", "/api/v1/clusters", {"name": "without-redis"}, 201)
        names = [c["name"] for c in client.get("/api/v1/clusters")]
        assert names == ["cluster-1", "without-redis"]
        manager.wait_log("response cache: Redis at")
