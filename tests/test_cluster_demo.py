"""The README's main job, `d7y cluster demo`, run as a user would: a manager, a scheduler
that registers with it, and peers that find the scheduler through it."""

import re
import subprocess
import sys

import yaml


def run_demo(workdir, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "cluster", "demo", "--peers", "2",
         "--size", "24MiB", "--workdir", str(workdir), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def table_row(out: str, name: str) -> list[str]:
    """The columns of ``name``'s row in the demo's table."""
    match = re.search(rf"^{name} +(.*)$", out, re.M)
    assert match, out
    return match.group(1).split()


def test_cluster_demo_goes_p2p_with_the_manager_in_the_loop(tmp_path):
    out = run_demo(tmp_path)
    assert "all outputs match the origin's SHA-256" in out
    egress = float(out.split("the file size")[0].rsplit("=", 1)[1].strip().rstrip("x"))
    assert egress <= 1.05
    scheduler_port = yaml.safe_load((tmp_path / "scheduler.yaml").read_text())["server"]["port"]
    manager_port = yaml.safe_load((tmp_path / "manager.yaml").read_text())["server"]["port"]
    assert f"manager console: http://127.0.0.1:{manager_port}/ " in out
    assert re.search(r"user root, password \S{12,} +\(generated now; shown once\)", out), out
    # The manager's REST API listed the scheduler, registered and alive.
    row = re.search(rf"^ +(\d+) +scheduler +127\.0\.0\.1:{scheduler_port} +1 +(\w+) ", out, re.M)
    assert row and row.group(2) == "active", out
    assert "scheduler registered id=" in (tmp_path / "manager.log").read_text()
    # Every daemon was told only where the manager is, and took its scheduler from it.
    for name in ("seed", "peer0", "peer1"):
        config = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        assert "scheduler" not in config and config["manager"]["address"].endswith(
            f":{manager_port}"
        )
    assert (
        f"seed, peer0, peer1 found scheduler 127.0.0.1:{scheduler_port} through the manager" in out
    ), out
    # And the downloads went P2P: the seed fetched the file once, the peers got all of it
    # from peers and nothing from the origin.
    assert table_row(out, "seed")[1] == "24.0"
    for name in ("peer0", "peer1"):
        _, origin_mib, peers_mib, _, verdict = table_row(out, name)
        assert (origin_mib, peers_mib, verdict) == ("0.0", "24.0", "ok"), out


def test_cluster_demo_keeps_its_manager_state_in_the_workdir(tmp_path):
    """A second demo in the same work dir reuses the manager's database and token: root
    keeps its password (not printed again) and the scheduler re-registers in its row."""
    first = run_demo(tmp_path, "--size", "4MiB")
    assert "(generated now; shown once)" in first
    token = (tmp_path / "manager.token").read_text()
    assert (tmp_path / "manager.token").stat().st_mode & 0o077 == 0
    second = run_demo(tmp_path, "--size", "4MiB")
    assert "(generated now; shown once)" not in second
    assert "password printed when this work dir was first used" in second
    assert (tmp_path / "manager.token").read_text() == token
    # One scheduler row, active again on this run's port (the same hostname, ip and
    # cluster update it), and the daemons found it there, not where the first run had it.
    port = yaml.safe_load((tmp_path / "scheduler.yaml").read_text())["server"]["port"]
    rows = re.findall(r"^ +\d+ +scheduler +127\.0\.0\.1:(\d+) +1 +(\w+) ", second, re.M)
    assert rows == [(str(port), "active")], second
    assert f"seed, peer0, peer1 found scheduler 127.0.0.1:{port} through the manager" in second
