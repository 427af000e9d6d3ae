"""The manager as a process: first start and restart, liveness of schedulers, a bad
config, and PostgreSQL going away under load."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import uuid

import pytest

from tests.manager_harness import ManagerProcess
from tests.peer_harness import free_port, wait_for

PAT = "d7y_pat_process-tests"


def test_generated_root_password_is_printed_once_and_state_survives_a_restart(tmp_path):
    manager = ManagerProcess(tmp_path, root_password=None, pat=PAT)
    manager.env["D7Y_INITIAL_ROOT_PASSWORD"] = ""
    with manager:
        match = re.search(r"generated password .*?: (\S+)\n", manager.log())
        assert match, manager.log_tail()
        password = match.group(1)
        root = manager.signin("root", password)
        made = root.ok("POST", "/api/v1/clusters", {"name": "kept"}, 201)
        docs = manager.client().call("GET", "/api/docs")
        assert docs[0] == 200 and "/api/v1/openapi.json" in docs[1]
    assert (manager.data_dir / "manager.db").exists()
    assert (manager.data_dir / "session.key").stat().st_mode & 0o777 == 0o600
    with manager:  # the same data dir: no new root, no second password, nothing lost
        assert manager.log().count("generated password") == 1
        # A session from before the restart still holds: the key is kept in the data dir.
        assert root.get(f"/api/v1/clusters/{made['id']}")["name"] == "kept"
        assert len(root.get("/api/v1/users")) == 1
        assert len(root.get("/api/v1/clusters")) == 2
        assert len([t for t in root.get("/api/v1/personal-access-tokens")]) == 1


def test_a_scheduler_without_keepalives_turns_inactive(tmp_path):
    with ManagerProcess(tmp_path, pat=PAT, keepalive={"timeout": "1s"}) as manager:
        client = manager.client(PAT)
        cluster = client.ok("POST", "/api/v1/clusters", {"name": "live"}, 201)
        body = {"hostname": "s1", "ip": "127.0.0.5", "port": 8002, "cluster_id": cluster["id"]}
        sched = client.ok("POST", "/api/v1/schedulers", body, 201)
        assert client.ok("POST", f"/api/v1/schedulers/{sched['id']}/keepalive")["state"] == (
            "active"
        )
        manager.wait_log(f"scheduler inactive id={sched['id']} hostname=s1")
        assert client.get(f"/api/v1/schedulers/{sched['id']}")["state"] == "inactive"
        search = "/api/v1/schedulers/search?hostname=p&ip=127.0.0.9"
        assert sched["id"] not in [s["id"] for s in client.get(search)]
        # Back with the next keepalive.
        assert client.ok("POST", f"/api/v1/schedulers/{sched['id']}/keepalive")["state"] == (
            "active"
        )
        manager.wait_log(f"scheduler active again id={sched['id']}")
        # Inactive again, its cluster can go (and its scheduler row with it).
        wait_for(
            lambda: client.get(f"/api/v1/schedulers/{sched['id']}")["state"] == "inactive",
            "the scheduler to turn inactive again",
        )
        client.ok("DELETE", f"/api/v1/clusters/{cluster['id']}", status=204)
        assert client.call("GET", f"/api/v1/schedulers/{sched['id']}")[0] == 404


def run_manager(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "manager", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_bad_database_settings_stop_the_start_with_a_clear_message(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text(f"data_dir: {tmp_path}/d\ndatabase:\n  url: mysql://u:hunter2secret@h/db\n")
    result = run_manager("--config", str(config))
    assert result.returncode == 2
    assert "database.url" in result.stderr and "postgresql" in result.stderr
    assert "hunter2secret" not in result.stderr  # the password is not echoed
    port = free_port()  # nothing listens there
    config.write_text(
        f"data_dir: {tmp_path}/d\nserver:\n  port: 0\nmetrics:\n  port: 0\n"
        f"database:\n  url: postgresql://u:secret@127.0.0.1:{port}/db\n"
        "  connect_timeout: 2s\n"
    )
    result = run_manager("--config", str(config))
    assert result.returncode == 1
    assert "cannot open the database" in result.stderr and "check database.url" in result.stderr
    assert "secret" not in result.stderr


def test_postgresql_going_away_under_writes(tmp_path, postgres):
    """Writes run while PostgreSQL stops and comes back: each gets 201 or a clear 503;
    every acknowledged write is there afterwards and whole; the manager serves on."""
    url = postgres.create_database(f"outage_{uuid.uuid4().hex[:8]}")
    with ManagerProcess(tmp_path, database_url=url, pat=PAT) as manager:
        client = manager.client(PAT)
        answers: dict[str, int] = {}
        messages: set[str] = set()
        stop = threading.Event()
        some_written = threading.Event()

        def writer(prefix: str) -> None:
            n = 0
            while not stop.is_set():
                name = f"{prefix}-{n}"
                n += 1
                status, body, _ = client.call("POST", "/api/v1/clusters", {
                    "name": name, "scopes": {"idc": name},
                    "scheduler_cluster_config": {"candidate_parent_limit": 7},
                })  # fmt: skip
                answers[name] = status
                if status == 201:
                    some_written.set()
                else:
                    messages.add(body["message"])

        threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        try:
            assert some_written.wait(30)
            postgres.stop()
            wait_for(lambda: 503 in answers.values(), "a write refused while PostgreSQL is down")
            # Serving on meanwhile: what needs no database still answers.
            assert manager.client().call("GET", "/api/v1/openapi.json")[0] == 200
            assert manager.client().call("GET", "/healthy")[0] == 503
            postgres.start()
            refused = len([s for s in answers.values() if s == 503])
            wait_for(
                lambda: (
                    list(answers.values())[-1] == 201
                    and len([s for s in answers.values() if s == 201]) > refused
                ),
                "writes to succeed again",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert set(answers.values()) <= {201, 503}, answers
        assert messages == {"the database cannot be reached; nothing was changed; retry later"}
        stored = {
            c["name"]: c
            for c in client.get("/api/v1/clusters?per_page=1000")
            if c["name"] != "cluster-1"
        }
        acknowledged = {name for name, status in answers.items() if status == 201}
        assert acknowledged <= set(stored)
        assert set(stored) <= set(answers)
        for name, cluster in stored.items():  # whole rows only
            assert cluster["scopes"]["idc"] == name
            assert cluster["scheduler_cluster_config"]["candidate_parent_limit"] == 7
        assert manager.running
        assert "database unavailable on POST /api/v1/clusters" in manager.log()


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch):
    monkeypatch.delenv("D7Y_INITIAL_ROOT_PASSWORD", raising=False)
    monkeypatch.delenv("D7Y_PAT", raising=False)


def test_a_scheduler_registers_keeps_alive_and_applies_its_cluster_config(tmp_path):
    """The real scheduler daemon with manager.address: it serves while the manager is
    not up yet, registers once it is, applies a changed cluster config without a
    restart, and turns inactive in the manager when it stops."""
    from tests.peer_harness import SchedulerProcess

    manager = ManagerProcess(tmp_path, pat=PAT, keepalive={"timeout": "2s"})
    scheduler = SchedulerProcess(tmp_path, manager={
        "address": f"127.0.0.1:{manager.port}", "token": PAT, "hostname": "sched-e2e",
        "keepalive_interval": "200ms", "config_interval": "500ms",
    })  # fmt: skip
    with scheduler:
        scheduler.wait_log("manager http://127.0.0.1")  # unreachable: it serves on
        with manager:
            client = manager.client(PAT)
            found = wait_for(
                lambda: [
                    s for s in client.get("/api/v1/schedulers") if s["hostname"] == "sched-e2e"
                ],
                "the scheduler to register",
            )
            assert found[0]["state"] == "active" and found[0]["port"] == scheduler.port
            scheduler.wait_log(
                "applied cluster config candidate_parent_limit=4 filter_parent_limit=40"
            )
            client.ok("PATCH", "/api/v1/clusters/1", {"scheduler_cluster_config": {
                "candidate_parent_limit": 6, "filter_parent_limit": 60}})  # fmt: skip
            scheduler.wait_log(
                "applied cluster config candidate_parent_limit=6 filter_parent_limit=60"
            )
            search = client.get("/api/v1/schedulers/search?hostname=peer&ip=127.0.0.1")
            assert [s["hostname"] for s in search] == ["sched-e2e"]
            scheduler.stop()
            manager.wait_log(f"scheduler inactive id={found[0]['id']} hostname=sched-e2e")
            assert client.get("/api/v1/schedulers/search?hostname=peer&ip=127.0.0.1") == []


def test_a_dfdaemon_finds_its_scheduler_through_the_manager_and_switches(tmp_path, origin):
    """dfdaemon with manager.address only: it connects to the first healthy scheduler
    the manager lists, downloads P2P through it, and moves to the other when it dies."""
    from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config

    def scheduler(name: str) -> SchedulerProcess:
        return SchedulerProcess(tmp_path, name, manager={
            "address": f"127.0.0.1:{manager.port}", "token": PAT, "hostname": name,
            "keepalive_interval": "200ms",
        })  # fmt: skip

    with ManagerProcess(tmp_path, pat=PAT) as manager:
        client = manager.client(PAT)
        first = scheduler("sched-first").start()
        try:
            wait_for(
                lambda: any(
                    s["hostname"] == "sched-first" for s in client.get("/api/v1/schedulers")
                ),
                "sched-first to register",
            )
            second = scheduler("sched-second").start()
            try:
                wait_for(
                    lambda: (
                        len(client.get("/api/v1/schedulers/search?hostname=p&ip=127.0.0.1")) == 2
                    ),
                    "both schedulers to be listed",
                )
                config = peer_config(None, "peer-m")
                config["manager"] = {"address": f"127.0.0.1:{manager.port}", "token": PAT,
                                     "refresh_interval": "1s"}  # fmt: skip
                with PeerProcess(tmp_path, "peer-m", **config) as peer:
                    peer.wait_log(f"connected to scheduler address=127.0.0.1:{first.port}")
                    url = origin.add_file("m.bin", size=5 << 20, seed=91)
                    result = peer.dfget(url, tmp_path / "m.out")
                    assert result.returncode == 0, result.stderr
                    assert (tmp_path / "m.out").read_bytes() == origin.content("m.bin")
                    first.stop()
                    peer.wait_log(f"connected to scheduler address=127.0.0.1:{second.port}")
                    assert f"using scheduler 127.0.0.1:{second.port}" in peer.log()
            finally:
                second.stop()
        finally:
            if first.running:
                first.stop()
