"""Scenario files, units and topologies: defaults, validation, paths."""

import json
import math
from pathlib import Path

import networkx as nx
import pytest

from d7y.sim import scenario as sc
from d7y.sim import topology as topo
from d7y.sim.cli import SCENARIO_DIR
from d7y.sim.units import parse_bandwidth, parse_duration, parse_size

MiB = 1024 * 1024


def test_units():
    assert parse_size("4MiB") == 4 * MiB
    assert parse_size("1GiB") == 1024 * MiB
    assert parse_size("500MB") == 500_000_000
    assert parse_size(123) == 123
    assert parse_bandwidth("1Gbit") == 125e6  # bytes/s
    assert parse_bandwidth("10Gbps") == 1.25e9
    assert parse_bandwidth(8e6) == 1e6  # a number is bits/s
    assert parse_bandwidth("100MiB/s") == 100 * MiB
    assert parse_bandwidth("125MB/s") == 125e6
    assert parse_duration("0.1ms") == pytest.approx(1e-4)
    assert parse_duration("2m") == 120
    assert parse_duration("1d") == 86400
    assert parse_duration("never", allow_inf=True) == math.inf
    for bad, fn in (
        ("4 apples", parse_size),
        ("fast", parse_bandwidth),
        ("-1s", parse_duration),
        (-5, parse_bandwidth),
        (1.5, parse_size),
        ("never", parse_duration),
    ):
        with pytest.raises(ValueError, match=r"write|must be"):
            fn(bad)


def test_defaults():
    s = sc.parse({})
    assert [p.label for p in s.policies] == list(sc.DEFAULT_POLICIES)
    assert s.topology["hosts"] == 100
    assert s.topology["upload"] == 125e6
    task = s.tasks[0]
    assert task.size == 1024 * MiB and task.piece_length == 4 * MiB and task.piece_count == 256
    assert task.arrival.kind == "flash" and task.peers is None
    assert s.seed_count == 1 and s.peer.max_in_flight is None and s.peer.stall_timeout is None
    # None: each policy's own download loop values.
    assert s.download_config(sc.parse_policy("dragonfly")).max_in_flight == 8
    assert s.download_config(sc.parse_policy("d7y")).stall_timeout == 120
    # d7y's slots are fair (0.1 s window), Dragonfly's first come, first served.
    assert s.upload_slots(sc.parse_policy("d7y")) == (8, 32, 0.1)
    assert s.upload_slots(sc.parse_policy("dragonfly")) == (200, 2000, 0.0)
    assert sc.parse({"peer": {"fair_slot_window": "0s"}}).upload_slots(sc.parse_policy("d7y")) == (
        8,
        32,
        0.0,
    )
    assert s.depth == 0 and s.hub_slack == 0.005
    assert s.linger == math.inf and s.churn_rate == 0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"topolgy": {}}, "unknown key"),
        ({"topology": {"hosts": 0}}, "topology.hosts must be >= 1"),
        ({"topology": {"kind": "mesh"}}, "topology.kind"),
        ({"topology": {"kind": "file"}}, "topology.file"),
        ({"topology": {"upload": "lots"}}, "topology.upload"),
        ({"topology": {"classes": [{"share": 0.7}, {"share": 0.6}]}}, "add up"),
        ({"tasks": []}, "non-empty"),
        ({"tasks": [{"size": 0}]}, "size must be > 0"),
        ({"tasks": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"tasks": [{"arrival": {"kind": "burst"}}]}, "arrival.kind"),
        ({"tasks": [{"arival": {}}]}, "unknown key"),
        ({"policies": ["fastest"]}, "unknown"),
        ({"policies": ["load_aware", "load_aware"]}, "twice"),
        ({"policies": ["load_aware:nope=1"]}, "SchedulerConfig field"),
        ({"policies": ["bittorrent:retry_limit=2"]}, "no scheduler"),
        ({"scheduler": {"retry_limit": 0}}, "retry_limit"),
        ({"scheduler": {"retry_limt": 3}}, "unknown key"),
        ({"churn": {"rate": -1}}, "churn.rate"),
        ({"failures": [{"at": "3s"}]}, "both"),
        ({"peer": {"max_in_flight": 0}}, "max_in_flight"),
        ({"model": {"hub_slack": 0.9}}, "hub_slack"),
        ({"until": 0}, "until"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_scenarios_name_the_key(data, message):
    with pytest.raises(sc.ScenarioError, match=message):
        sc.parse(data)


def test_policy_overrides_reach_the_scheduler_config():
    s = sc.parse(
        {
            "policies": [
                "load_aware:sample_servable_only=true,retry_interval=0.2",
                "random",
                "client_server",
            ]
        }
    )
    la, rnd, cs = s.policies
    cfg = s.scheduler_config(la)
    assert cfg.algorithm == "load_aware" and cfg.sample_servable_only and cfg.retry_interval == 0.2
    assert s.scheduler_config(rnd).algorithm == "random"
    assert s.scheduler_config(cs).back_to_source_limit > 10**6
    assert la.uses_scheduler and not sc.parse_policy("bittorrent").uses_scheduler


def test_policy_lists_keep_overrides_together():
    assert sc.split_policies("load_aware:retry_limit=9,retry_interval=1,random, base") == [
        "load_aware:retry_limit=9,retry_interval=1",
        "random",
        "base",
    ]
    label = sc.split_policies("random:back_to_source_limit=0,retry_limit=3")[0]
    assert dict(sc.parse_policy(label).overrides) == {"back_to_source_limit": 0, "retry_limit": 3}


def test_model_depth_is_capped():
    with pytest.raises(sc.ScenarioError, match=r"model\.depth must be <= 3"):
        sc.parse({"model": {"depth": 30}})


def test_shipped_scenarios_parse():
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
    assert "flash-crowd-100" in names and "flash-crowd-1000" in names
    for path in SCENARIO_DIR.glob("*.yaml"):
        s = sc.load(path)
        assert s.name == path.stem
        s.build_topology()


def test_flat_topology_paths():
    t = topo.flat(
        3, upload=1.0, download=2.0, latency=0.001, seeds=1, origin_upload=5.0, origin_latency=0.01
    )
    assert t.hosts == ["h0", "h1", "h2"] and t.seeds == ["seed0"] and t.origin == "origin"
    links, latency = t.path("h0", "h2")
    assert links == () and latency == pytest.approx(0.002)  # two hops
    links, latency = t.path("origin", "h1")
    assert latency == pytest.approx(0.011)


def test_multi_idc_paths_cross_the_shared_links():
    t = topo.multi_idc(
        8,
        idcs=2,
        racks_per_idc=2,
        upload=1.0,
        download=1.0,
        latency=0.001,
        rack_uplink=10.0,
        inter_idc=20.0,
        inter_idc_latency=0.005,
        seeds=2,
        origin_upload=5.0,
    )
    g = t.graph
    # hosts round-robin over idc0-rack0, idc0-rack1, idc1-rack0, idc1-rack1
    assert g.nodes["h0"]["location"] == "region0|idc0|rack0"
    assert g.nodes["h2"]["idc"] == "idc1"
    same_rack = t.path("h0", "h4")
    assert same_rack[0] == () and same_rack[1] == pytest.approx(0.002)
    other_rack = t.path("h0", "h1")
    assert [link.name for link in other_rack[0]] == ["idc0-rack0->idc0", "idc0->idc0-rack1"]
    other_idc = t.path("h0", "h2")
    assert [link.name for link in other_idc[0]] == [
        "idc0-rack0->idc0",
        "idc0->core",
        "core->idc1",
        "idc1->idc1-rack0",
    ]
    assert other_idc[1] == pytest.approx(0.001 * 4 + 0.005 * 2)


def test_host_classes_are_spread_by_share():
    import random

    t = topo.flat(
        10,
        upload=1.0,
        download=1.0,
        origin_upload=1.0,
        classes=[topo.HostClass(0.3, 0.5, 2.0)],
        rng=random.Random(1),
    )
    slow = [h for h in t.hosts if t.node(h)["upload"] == 0.5]
    assert len(slow) == 3 and all(t.node(h)["download"] == 2.0 for h in slow)


def test_topology_files(tmp_path: Path):
    data = {
        "nodes": [
            {"id": "core", "kind": "switch"},
            {"id": "origin", "kind": "origin", "upload": "10Gbit"},
            {"id": "a", "kind": "host", "upload": "1Gbit", "download": "1Gbit", "idc": "x"},
            {"id": "b", "kind": "host", "upload": "100Mbit", "download": "1Gbit"},
        ],
        "links": [
            {"a": "origin", "b": "core", "latency": "2ms", "capacity": "5Gbit"},
            {"a": "a", "b": "core", "latency": "0.1ms"},
            {"a": "b", "b": "core", "latency": "0.1ms"},
        ],
    }
    for name, text in (("t.json", json.dumps(data)), ("t.yaml", json.dumps(data))):
        (tmp_path / name).write_text(text)
        t = topo.load(tmp_path / name)
        assert t.node("b")["upload"] == 12.5e6
        links, latency = t.path("origin", "a")
        assert [link.capacity for link in links] == [625e6] and latency == pytest.approx(0.0021)
    g = nx.Graph()
    g.add_node("core", kind="switch")
    g.add_node("origin", kind="origin", upload="10Gbit")
    g.add_node("a", kind="host", upload="1Gbit", download="1Gbit")
    g.add_edge("origin", "core", latency=0.001)
    g.add_edge("a", "core", latency=0.001)
    nx.write_graphml(g, tmp_path / "t.graphml")
    t = topo.load(tmp_path / "t.graphml")
    assert t.hosts == ["a"] and t.path("a", "origin")[1] == pytest.approx(0.002)
    # a scenario refers to it by a path relative to itself
    (tmp_path / "s.yaml").write_text(
        "topology: {kind: file, file: t.graphml}\npolicies: [random]\n"
    )
    assert sc.load(tmp_path / "s.yaml").build_topology().hosts == ["a"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["links"].append({"a": "a", "b": "b"}), "tree"),
        (lambda d: d["nodes"].append({"id": "c", "kind": "robot"}), "kind"),
        (lambda d: d["nodes"][2].pop("upload"), "upload"),
        (lambda d: d["links"].append({"a": "a", "b": "zz"}), "unknown node"),
        (lambda d: d["links"][0].update(speed=1), "unknown keys"),
        (lambda d: d["nodes"].pop(1), "origin"),
    ],
)
def test_bad_topology_files(mutate, message):
    data = {
        "nodes": [
            {"id": "core", "kind": "switch"},
            {"id": "origin", "kind": "origin", "upload": "10Gbit"},
            {"id": "a", "kind": "host", "upload": "1Gbit", "download": "1Gbit"},
            {"id": "b", "kind": "host", "upload": "1Gbit", "download": "1Gbit"},
        ],
        "links": [{"a": "origin", "b": "core"}, {"a": "a", "b": "core"}, {"a": "b", "b": "core"}],
    }
    mutate(data)
    with pytest.raises(ValueError, match=message):
        topo.from_dict(data)
