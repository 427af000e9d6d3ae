"""Cluster topologies as networkx trees: IDCs -> racks -> hosts, plus the origin.

Nodes carry ``kind``: ``host`` (a normal peer host), ``seed`` (a seed peer host),
``origin`` (the origin server) or ``switch`` (anything else: a rack or IDC switch, the
core). Host-like nodes carry ``upload`` and ``download`` (bytes/s; the origin only
``upload``), ``idc`` and ``location`` (for the evaluators' affinity scores). Edges carry
``latency`` (seconds, one way) and optionally ``capacity`` (bytes/s, each direction on
its own): a finite capacity makes the link a shared resource every flow crossing it
competes for; no capacity means the link never limits (host NICs are modelled by the
hosts' own upload/download).

The graph must be a tree (a hierarchical data-centre network at flow level): the path
between two hosts is the unique one through their lowest common switch.

Generators: :func:`flat` (every host on one switch), :func:`racks` (hosts in racks
with an uplink each), :func:`multi_idc` (IDCs joined by inter-IDC links, each with
racks). :func:`load` reads a file: YAML or JSON (``nodes`` and ``links`` lists, see
docs/simulation.md) or GraphML (the same attributes on nodes and edges).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from d7y.sim.units import parse_bandwidth, parse_duration

HOST_KINDS = ("host", "seed", "origin")
ORIGIN = "origin"


@dataclass(frozen=True, slots=True)
class HostClass:
    """A share of the hosts with their own capacities (heterogeneous clusters)."""

    share: float
    upload: float
    download: float


@dataclass(frozen=True, slots=True)
class Link:
    """One direction of a capacity-limited edge: ``a`` -> ``b``."""

    a: str
    b: str
    capacity: float

    @property
    def name(self) -> str:
        return f"{self.a}->{self.b}"


class Topology:
    """A validated tree with fast path queries (parent pointers, cached per pair)."""

    def __init__(self, graph: nx.Graph) -> None:
        self.graph = graph
        _validate(graph)
        kinds = nx.get_node_attributes(graph, "kind")
        self.hosts = [n for n in graph.nodes if kinds[n] == "host"]
        self.seeds = [n for n in graph.nodes if kinds[n] == "seed"]
        origins = [n for n in graph.nodes if kinds[n] == "origin"]
        if len(origins) != 1:
            raise ValueError(
                f"a topology needs exactly one node of kind 'origin', found {len(origins)}"
            )
        self.origin = origins[0]
        if not self.hosts:
            raise ValueError("a topology needs at least one node of kind 'host'")
        # Root the tree at the origin's switch (any root works; this one is stable).
        root = self.origin
        self._parent: dict[str, str | None] = {root: None}
        self._depth: dict[str, int] = {root: 0}
        for a, b in nx.bfs_edges(graph, root):
            self._parent[b] = a
            self._depth[b] = self._depth[a] + 1
        self._cache: dict[tuple[str, str], tuple[tuple[Link, ...], float]] = {}

    def node(self, name: str) -> dict[str, Any]:
        return self.graph.nodes[name]

    def path(self, src: str, dst: str) -> tuple[tuple[Link, ...], float]:
        """The capacity-limited links from ``src`` to ``dst`` (in order) and the path's
        one-way latency (sum of the edges' latencies)."""
        key = (src, dst)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        up: list[str] = [src]
        down: list[str] = [dst]
        a, b = src, dst
        depth = self._depth
        parent = self._parent
        while depth[a] > depth[b]:
            a = parent[a]  # type: ignore[assignment]
            up.append(a)
        while depth[b] > depth[a]:
            b = parent[b]  # type: ignore[assignment]
            down.append(b)
        while a != b:
            a = parent[a]  # type: ignore[assignment]
            b = parent[b]  # type: ignore[assignment]
            up.append(a)
            down.append(b)
        nodes = up + down[-2::-1]
        links: list[Link] = []
        latency = 0.0
        edges = self.graph.edges
        for u, v in itertools.pairwise(nodes):
            attrs = edges[u, v]
            latency += attrs.get("latency", 0.0)
            cap = attrs.get("capacity")
            if cap is not None:
                links.append(Link(u, v, cap))
        result = (tuple(links), latency)
        self._cache[key] = result
        return result


def _validate(graph: nx.Graph) -> None:
    if graph.is_directed():
        raise ValueError("a topology is an undirected tree; got a directed graph")
    for name, attrs in graph.nodes(data=True):
        kind = attrs.get("kind")
        if kind not in (*HOST_KINDS, "switch"):
            raise ValueError(
                f"node {name!r}: kind {kind!r} is unknown: use host, seed, origin or switch"
            )
        if kind in HOST_KINDS:
            for key in ("upload", "download") if kind != "origin" else ("upload",):
                value = attrs.get(key)
                if not isinstance(value, int | float) or not value > 0:
                    raise ValueError(f"node {name!r}: {key} must be a bandwidth > 0")
    if graph.number_of_nodes() == 0 or not nx.is_tree(graph):
        raise ValueError(
            "a topology must be a tree (connected, no cycles): hosts hang off switches, "
            "switches off their parent switch"
        )
    for name, attrs in graph.nodes(data=True):
        if attrs["kind"] in HOST_KINDS and graph.degree(name) != 1:
            raise ValueError(f"node {name!r}: a {attrs['kind']} must hang off exactly one switch")
    for a, b, attrs in graph.edges(data=True):
        lat = attrs.get("latency", 0.0)
        if not isinstance(lat, int | float) or not (lat >= 0 and math.isfinite(lat)):
            raise ValueError(f"link {a}-{b}: latency must be >= 0 seconds, got {lat!r}")
        cap = attrs.get("capacity")
        if cap is not None and not (isinstance(cap, int | float) and cap > 0):
            raise ValueError(f"link {a}-{b}: capacity must be a bandwidth > 0, got {cap!r}")


# ------------------------------------------------------------------- generators --


def _host_caps(
    count: int, upload: float, download: float, classes: Iterable[HostClass], rng: random.Random
) -> list[tuple[float, float]]:
    """Capacities for ``count`` hosts: each class gets round(share * count) hosts (the
    rest the defaults), spread over the hosts in a seeded random order."""
    caps = [(upload, download)] * count
    order = list(range(count))
    rng.shuffle(order)
    at = 0
    for cls in classes:
        n = round(cls.share * count)
        for i in order[at : at + n]:
            caps[i] = (cls.upload, cls.download)
        at += n
    return caps


def _add_host(g: nx.Graph, name: str, kind: str, switch: str, latency: float, **attrs) -> None:
    g.add_node(name, kind=kind, **attrs)
    g.add_edge(name, switch, latency=latency)


def flat(
    hosts: int,
    *,
    upload: float,
    download: float,
    latency: float = 0.0,
    seeds: int = 0,
    seed_upload: float | None = None,
    seed_download: float | None = None,
    origin_upload: float,
    origin_latency: float = 0.0,
    classes: Iterable[HostClass] = (),
    rng: random.Random | None = None,
) -> Topology:
    """Every host, seed and the origin on one switch ``core``; ``latency`` per hop."""
    g = nx.Graph()
    g.add_node("core", kind="switch")
    caps = _host_caps(hosts, upload, download, classes, rng or random.Random(0))
    _add_host(g, ORIGIN, "origin", "core", origin_latency, upload=origin_upload)
    for i in range(seeds):
        _add_host(
            g,
            f"seed{i}",
            "seed",
            "core",
            latency,
            upload=seed_upload or upload,
            download=seed_download or download,
            idc="idc0",
            location="region0|idc0",
        )
    for i, (up, down) in enumerate(caps):
        _add_host(
            g,
            f"h{i}",
            "host",
            "core",
            latency,
            upload=up,
            download=down,
            idc="idc0",
            location="region0|idc0",
        )
    return Topology(g)


def multi_idc(
    hosts: int,
    *,
    idcs: int = 1,
    racks_per_idc: int = 1,
    upload: float,
    download: float,
    latency: float = 0.0,
    rack_uplink: float | None = None,
    inter_idc: float | None = None,
    inter_idc_latency: float = 0.0,
    seeds: int = 0,
    seed_upload: float | None = None,
    seed_download: float | None = None,
    origin_upload: float,
    origin_latency: float = 0.0,
    classes: Iterable[HostClass] = (),
    rng: random.Random | None = None,
) -> Topology:
    """``idcs`` IDC switches under a ``core`` (edge: ``inter_idc`` capacity and latency),
    each with ``racks_per_idc`` rack switches (edge: ``rack_uplink``), hosts spread
    round-robin over all racks; seeds round-robin over the IDCs (on the IDC switch);
    the origin on the core. Host locations read ``region0|idcI|rackJ``."""
    if idcs < 1 or racks_per_idc < 1:
        raise ValueError("idcs and racks_per_idc must be >= 1")
    g = nx.Graph()
    g.add_node("core", kind="switch")
    _add_host(g, ORIGIN, "origin", "core", origin_latency, upload=origin_upload)
    racks = []
    for i in range(idcs):
        idc = f"idc{i}"
        g.add_node(idc, kind="switch")
        edge: dict[str, float] = {"latency": inter_idc_latency if idcs > 1 else latency}
        if inter_idc is not None and idcs > 1:
            edge["capacity"] = inter_idc
        g.add_edge("core", idc, **edge)
        for j in range(racks_per_idc):
            rack = f"{idc}-rack{j}"
            g.add_node(rack, kind="switch")
            edge = {"latency": latency}
            if rack_uplink is not None:
                edge["capacity"] = rack_uplink
            g.add_edge(idc, rack, **edge)
            racks.append((i, j, rack))
    for s in range(seeds):
        i = s % idcs
        _add_host(
            g,
            f"seed{s}",
            "seed",
            f"idc{i}",
            latency,
            upload=seed_upload or upload,
            download=seed_download or download,
            idc=f"idc{i}",
            location=f"region0|idc{i}",
        )
    caps = _host_caps(hosts, upload, download, classes, rng or random.Random(0))
    for h, (up, down) in enumerate(caps):
        i, j, rack = racks[h % len(racks)]
        _add_host(
            g,
            f"h{h}",
            "host",
            rack,
            latency,
            upload=up,
            download=down,
            idc=f"idc{i}",
            location=f"region0|idc{i}|rack{j}",
        )
    return Topology(g)


def racks(hosts: int, *, racks: int, **kwargs) -> Topology:
    """One IDC with ``racks`` racks (see :func:`multi_idc`)."""
    return multi_idc(hosts, idcs=1, racks_per_idc=racks, **kwargs)


# ------------------------------------------------------------------------ files --


def load(path: str | Path) -> Topology:
    """A topology from a file: ``.graphml``, or ``.yaml``/``.yml``/``.json`` with::

        nodes: [{id: h0, kind: host, upload: 1Gbit, download: 1Gbit, idc: a,
                 location: "r|a|k1"}, {id: core, kind: switch}, ...]
        links: [{a: h0, b: core, latency: 0.1ms, capacity: 10Gbit}, ...]

    Bandwidths and latencies take the scenario spellings (``1Gbit``, ``0.5ms``) or
    numbers (bits/s, seconds)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".graphml":
        raw = nx.read_graphml(path)
        g = nx.Graph()
        for name, attrs in raw.nodes(data=True):
            g.add_node(str(name), **_node_attrs(str(name), dict(attrs)))
        for a, b, attrs in raw.edges(data=True):
            g.add_edge(str(a), str(b), **_edge_attrs(str(a), str(b), dict(attrs)))
        return Topology(g)
    if suffix in (".yaml", ".yml", ".json"):
        text = path.read_text()
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        return from_dict(data, str(path))
    raise ValueError(f"topology file {path}: use a .yaml, .yml, .json or .graphml file")


def from_dict(data: Any, where: str = "topology") -> Topology:
    if not isinstance(data, dict) or set(data) - {"nodes", "links"}:
        raise ValueError(f"{where}: expected a mapping with 'nodes' and 'links' lists")
    nodes = data.get("nodes") or []
    links = data.get("links") or []
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise ValueError(f"{where}: 'nodes' and 'links' must be lists")
    g = nx.Graph()
    for item in nodes:
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"{where}: every node needs an 'id', got {item!r}")
        attrs = dict(item)
        name = str(attrs.pop("id"))
        if name in g:
            raise ValueError(f"{where}: node {name!r} appears twice")
        g.add_node(name, **_node_attrs(name, attrs))
    for item in links:
        if not isinstance(item, dict) or "a" not in item or "b" not in item:
            raise ValueError(f"{where}: every link needs 'a' and 'b', got {item!r}")
        attrs = dict(item)
        a, b = str(attrs.pop("a")), str(attrs.pop("b"))
        for end in (a, b):
            if end not in g:
                raise ValueError(f"{where}: link {a}-{b} names unknown node {end!r}")
        g.add_edge(a, b, **_edge_attrs(a, b, attrs))
    return Topology(g)


def _node_attrs(name: str, attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": attrs.pop("kind", "switch")}
    for key in ("upload", "download"):
        if key in attrs:
            out[key] = parse_bandwidth(attrs.pop(key), f"node {name} {key}")
    for key in ("idc", "location"):
        if key in attrs:
            out[key] = str(attrs.pop(key))
    if attrs:
        raise ValueError(
            f"node {name}: unknown keys {sorted(attrs)}: use kind, upload, download, idc, location"
        )
    return out


def _edge_attrs(a: str, b: str, attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "latency" in attrs:
        out["latency"] = parse_duration(attrs.pop("latency"), f"link {a}-{b} latency")
    if "capacity" in attrs:
        out["capacity"] = parse_bandwidth(attrs.pop("capacity"), f"link {a}-{b} capacity")
    if attrs:
        raise ValueError(f"link {a}-{b}: unknown keys {sorted(attrs)}: use latency, capacity")
    return out
