"""``d7y sim run``: the files it writes, the summary it prints, its errors."""

import csv
import json
from pathlib import Path

from d7y.sim.cli import find_scenario, main

TINY = """
name: tiny
seed: 5
topology: {kind: flat, hosts: 12}
tasks: [{size: 32MiB}]
policies: [load_aware, client_server, bittorrent]
"""


def test_run_writes_results_and_plots(tmp_path: Path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Kumar-Ross T_min" in printed
    for label in ("load_aware", "client_server", "bittorrent"):
        assert label in printed
    names = {p.name for p in out.iterdir()}
    assert {
        "results.json",
        "summary.csv",
        "tasks.csv",
        "peers.csv",
        "hosts.csv",
        "completion_cdf.png",
        "swarm_progress.png",
    } <= names
    doc = json.loads((out / "results.json").read_text())
    assert doc["scenario"]["name"] == "tiny" and doc["scenario"]["seed"] == 5
    assert [p["label"] for p in doc["policies"]] == ["load_aware", "client_server", "bittorrent"]
    bound = doc["bounds"][0]["t_min"]
    for policy in doc["policies"]:
        assert policy["summary"]["done"] == 12
        assert policy["summary"]["makespan"] >= bound
        assert len(policy["completion_cdf"]) == 12
        assert policy["progress"]["fraction"][-1] == 1.0
    with (out / "peers.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 36 and {r["state"] for r in rows} == {"done"}
    assert (out / "completion_cdf.png").read_bytes()[:4] == b"\x89PNG"


def test_seed_and_policies_override(tmp_path: Path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "o"
    args = [
        "run",
        str(path),
        "--out",
        str(out),
        "--quiet",
        "--no-plots",
        "--seed",
        "9",
        "--policies",
        "random,load_aware:sample_servable_only=true",
    ]
    assert main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["scenario"]["seed"] == 9
    labels = [p["label"] for p in doc["policies"]]
    assert labels == ["random", "load_aware:sample_servable_only=true"]
    assert not (out / "completion_cdf.png").exists()


def test_errors_exit_2(tmp_path: Path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml"), "--quiet"]) == 2
    assert "neither a file nor a shipped scenario" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("topology: {hosts: -1}\n")
    assert main(["run", str(bad), "--quiet"]) == 2
    assert "topology.hosts" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(TINY)
    assert main(["run", str(good), "--quiet", "--policies", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err
    big = tmp_path / "big.yaml"
    big.write_text("topology: {hosts: 3}\ntasks: [{peers: 5}]\n")
    assert main(["run", str(big), "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "peers=5" in capsys.readouterr().err


def test_shipped_scenarios_are_found_by_name(capsys):
    assert find_scenario("flash-crowd-100").name == "flash-crowd-100.yaml"
    assert main(["list"]) == 0
    assert "flash-crowd-100" in capsys.readouterr().out
