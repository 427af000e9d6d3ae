"""Scenario files: what to simulate, validated into frozen dataclasses.

A scenario is YAML; every key is optional and has the default shown in
:data:`DEFAULTS` (docs/simulation.md explains each). Unknown keys are errors that name
the key and list the valid ones, so a typo never silently falls back to a default.

Policies are named ``d7y`` (ours, the default), ``dragonfly`` (Dragonfly v2 as it
ships, with its load-aware evaluator; ``load_aware`` is another name for it), ``base``
and ``random`` (Dragonfly's rules with that evaluator), ``client_server`` and
``bittorrent``. A scheduler policy may override SchedulerConfig fields after a colon,
e.g. ``dragonfly:candidate_parent_limit=6`` or ``random:back_to_source_limit=0``, and the
download loop's (DownloadConfig) fields the same way with a ``download.`` prefix, e.g.
``d7y:download.per_parent_limit=2``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from d7y.core.pieces import compute_piece_length
from d7y.core.scheduling import SchedulerConfig
from d7y.core.scheduling.download import DownloadConfig
from d7y.core.scheduling.upload_slots import FAIR_SLOT_WINDOW
from d7y.sim import topology as topo
from d7y.sim.units import parse_bandwidth, parse_duration, parse_size

SCHEDULER_POLICIES = ("d7y", "dragonfly", "load_aware", "base", "random")
POLICIES = (*SCHEDULER_POLICIES, "client_server", "bittorrent")
#: The policies a scenario runs when it names none.
DEFAULT_POLICIES = ("d7y", "dragonfly", "base", "random", "client_server", "bittorrent")
#: policy -> (SchedulerConfig.policy, evaluator, DownloadConfig.policy)
POLICY_RULES = {
    "d7y": ("d7y", "load_aware", "d7y"),
    "dragonfly": ("dragonfly", "load_aware", "dragonfly"),
    "load_aware": ("dragonfly", "load_aware", "dragonfly"),
    "base": ("dragonfly", "base", "dragonfly"),
    "random": ("dragonfly", "random", "dragonfly"),
    "client_server": ("dragonfly", "load_aware", "dragonfly"),
    "bittorrent": ("d7y", "load_aware", "d7y"),
}
_DOWNLOAD_FIELDS = {f.name for f in dataclasses.fields(DownloadConfig)} - {"policy"}
MAX_DEPTH = 3

#: Every key a scenario may set, with its default (None: "not set").
DEFAULTS: dict[str, Any] = {
    "name": None,  # default: the file name without .yaml
    "seed": 1,
    "until": "1d",
    "policies": list(DEFAULT_POLICIES),
    "topology": {
        "kind": "flat",  # flat | racks | multi_idc | file
        "file": None,  # kind file: path (relative to the scenario file)
        "hosts": 100,
        "upload": "1Gbit",
        "download": "1Gbit",
        "latency": "0.1ms",  # one way, per hop (host-switch, switch-switch)
        "racks": 4,  # kind racks: racks in the one IDC
        "idcs": 2,  # kind multi_idc
        "racks_per_idc": 2,  # kind multi_idc
        "rack_uplink": None,  # bandwidth of each rack's uplink (None: unlimited)
        "inter_idc": None,  # bandwidth of each IDC's link to the core (None: unlimited)
        "inter_idc_latency": "5ms",
        "classes": [],  # [{share: 0.2, upload: 100Mbit, download: 1Gbit}, ...]
    },
    "origin": {"upload": "10Gbit", "latency": "1ms"},
    "seed_peers": {"count": 1, "upload": "10Gbit", "download": "10Gbit"},
    "tasks": [{}],
    "task": {  # the defaults of each entry of ``tasks``
        "name": None,  # default task0, task1, ...
        "size": "1GiB",
        "piece_length": None,  # default: DESIGN's rule (1 GiB -> 4 MiB)
        "peers": "all",  # how many hosts download it (a seeded random choice), or all
        "arrival": {
            "kind": "flash",  # flash | poisson | staggered
            "start": 0,
            "rate": 10.0,  # poisson: arrivals per second
            "interval": "100ms",  # staggered: time between two arrivals
        },
    },
    "churn": {"rate": 0.0, "linger": "never"},
    "failures": [],  # [{at: 30s, host: seed0}, ...]
    "scheduler": {},  # SchedulerConfig fields (Dragonfly's defaults otherwise)
    "peer": {
        # None: the policy's own value (core.scheduling.download.DOWNLOAD_POLICY_DEFAULTS)
        "max_in_flight": None,
        "piece_timeout": None,
        "stall_timeout": None,
        "reschedule_interval": None,
        "scheduler_latency": "1ms",
        "endgame": None,
        # d7y: concurrent piece uploads a host serves; more are answered "busy"
        "upload_slots": 8,
        "seed_upload_slots": 32,
        # d7y: a child served within this window yields a free slot to one answered
        # "busy" within it (core/scheduling/upload_slots.py); None: the policy's own
        "fair_slot_window": None,
        # download.cut_through: a piece transfer is modelled as this many blocks in a
        # row, each relayed on once it has landed (docs/simulation.md, "Cut-through")
        "cut_through_blocks": 16,
    },
    "bittorrent": {
        "neighbours": 20,
        "max_connections": 50,
        "reannounce": "5s",
        "unchoke_slots": 4,  # uploads each BitTorrent peer (and the seeder) serves at once
    },
    "model": {"depth": 0, "hub_slack": 0.005},
}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Arrival:
    kind: str
    start: float
    rate: float
    interval: float


@dataclass(frozen=True)
class TaskSpec:
    name: str
    size: int
    piece_length: int
    peers: int | None  # None: every host
    arrival: Arrival

    @property
    def piece_count(self) -> int:
        return -(-self.size // self.piece_length) if self.size else 0


@dataclass(frozen=True)
class Failure:
    at: float
    host: str


@dataclass(frozen=True)
class PeerSpec:
    """Download-loop settings every scheduler policy shares (None: the policy's own)."""

    max_in_flight: int | None
    piece_timeout: float | None
    stall_timeout: float | None
    reschedule_interval: float | None
    scheduler_latency: float
    endgame: bool | None
    upload_slots: int
    seed_upload_slots: int
    fair_slot_window: float | None = None
    cut_through_blocks: int = 16


@dataclass(frozen=True)
class BitTorrentSpec:
    neighbours: int
    max_connections: int
    reannounce: float
    unchoke_slots: int


@dataclass(frozen=True)
class Policy:
    """``name`` is one of POLICIES; ``overrides`` are SchedulerConfig fields."""

    label: str
    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def uses_scheduler(self) -> bool:
        return self.name != "bittorrent"


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    until: float
    policies: tuple[Policy, ...]
    topology: dict[str, Any]
    origin_upload: float
    origin_latency: float
    seed_count: int
    seed_upload: float
    seed_download: float
    tasks: tuple[TaskSpec, ...]
    churn_rate: float
    linger: float
    failures: tuple[Failure, ...]
    scheduler: dict[str, Any]
    peer: PeerSpec
    bittorrent: BitTorrentSpec
    depth: int
    hub_slack: float
    base_dir: Path = field(default=Path("."), compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def scheduler_config(self, policy: Policy) -> SchedulerConfig:
        rules, evaluator, _ = POLICY_RULES[policy.name]
        fields = dict(self.scheduler)
        fields.update((k, v) for k, v in policy.overrides if not k.startswith("download."))
        fields["policy"] = rules
        fields["algorithm"] = evaluator
        if policy.name == "client_server":
            # everyone from the origin: no limit on how many peers may go there
            fields["back_to_source_limit"] = 2**31 - 1
        try:
            return SchedulerConfig(**fields)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"scheduler settings for {policy.label}: {exc}") from None

    def download_config(self, policy: Policy) -> DownloadConfig:
        """The download loop's rules for ``policy``: the policy's defaults, then the
        scenario's ``peer`` keys, then the policy's ``download.`` overrides."""
        _, _, rules = POLICY_RULES[policy.name]
        p = self.peer
        fields: dict[str, Any] = {
            name: getattr(p, name)
            for name in (
                "max_in_flight",
                "piece_timeout",
                "stall_timeout",
                "reschedule_interval",
                "endgame",
            )
            if getattr(p, name) is not None
        }
        if policy.name == "bittorrent":
            # BitTorrent: no origin fallback and no scheduler; an idle peer re-announces
            # to the tracker (AskParents), at most every ``reannounce``.
            # A choked neighbour ("busy") is not asked again for a second; a peer keeps
            # a couple of requests pipelined at each unchoked one.
            fields.update(
                stall_timeout=math.inf,
                reschedule_interval=self.bittorrent.reannounce,
                per_parent_limit=2,
                busy_backoff=1.0,
                min_parents=0,
                top_up_parents=0,
            )
        fields.update(
            (k.removeprefix("download."), v)
            for k, v in policy.overrides
            if k.startswith("download.")
        )
        try:
            return DownloadConfig(policy=rules, **fields)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"download settings for {policy.label}: {exc}") from None

    def upload_slots(self, policy: Policy) -> tuple[int, int, float]:
        """(per peer host, per seed host) concurrent piece uploads (0: no limit), and the
        fair-slot window (0: first come, first served). dragonfly and its variants use
        Dragonfly's limits, first come first served; d7y the scenario's, fair."""
        if policy.name == "bittorrent":
            return self.bittorrent.unchoke_slots, self.bittorrent.unchoke_slots, 0.0
        if policy.name == "d7y":
            window = self.peer.fair_slot_window
            if window is None:
                window = FAIR_SLOT_WINDOW
            return self.peer.upload_slots, self.peer.seed_upload_slots, window
        cfg = self.scheduler_config(policy)
        return cfg.peer_concurrent_upload_limit, cfg.seed_peer_concurrent_upload_limit, 0.0

    def build_topology(self) -> topo.Topology:
        t = self.topology
        rng = random.Random(f"{self.seed}:topology")
        if t["kind"] == "file":
            return topo.load(self.base_dir / t["file"])
        common = dict(
            upload=t["upload"],
            download=t["download"],
            latency=t["latency"],
            seeds=self.seed_count,
            seed_upload=self.seed_upload,
            seed_download=self.seed_download,
            origin_upload=self.origin_upload,
            origin_latency=self.origin_latency,
            classes=t["classes"],
            rng=rng,
        )
        if t["kind"] == "flat":
            return topo.flat(t["hosts"], **common)
        if t["kind"] == "racks":
            return topo.racks(t["hosts"], racks=t["racks"], rack_uplink=t["rack_uplink"], **common)
        return topo.multi_idc(
            t["hosts"],
            idcs=t["idcs"],
            racks_per_idc=t["racks_per_idc"],
            rack_uplink=t["rack_uplink"],
            inter_idc=t["inter_idc"],
            inter_idc_latency=t["inter_idc_latency"],
            **common,
        )

    def with_policies(self, labels: list[str]) -> Scenario:
        return dataclasses.replace(self, policies=tuple(parse_policy(x) for x in labels))

    def with_seed(self, seed: int) -> Scenario:
        return dataclasses.replace(self, seed=seed)


# ---------------------------------------------------------------------- parsing --


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    return parse(data, name=path.stem, base_dir=path.parent)


def parse(data: Any, *, name: str = "scenario", base_dir: Path = Path(".")) -> Scenario:
    """Validate a scenario given as a mapping (the parsed YAML)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"a scenario is a mapping of keys, got {type(data).__name__}")
    top_keys = [k for k in DEFAULTS if k != "task"]
    _check_keys(data, top_keys, "scenario")
    merged = _merge(DEFAULTS, data, skip=("tasks", "task", "failures", "policies"))
    seed = _int(merged["seed"], "seed", 0)
    until = _dur(merged["until"], "until")
    if until <= 0:
        raise ScenarioError("until must be > 0")
    policies = data.get("policies", DEFAULTS["policies"])
    if not isinstance(policies, list) or not policies:
        raise ScenarioError(f"policies must be a non-empty list, e.g. {list(POLICIES)}")
    parsed_policies = tuple(parse_policy(p) for p in policies)
    labels = [p.label for p in parsed_policies]
    if len(set(labels)) != len(labels):
        raise ScenarioError(f"policies lists one twice: {labels}")

    t = merged["topology"]
    _check_keys(t, list(DEFAULTS["topology"]), "topology")
    kind = t["kind"]
    if kind not in ("flat", "racks", "multi_idc", "file"):
        raise ScenarioError(f"topology.kind {kind!r} is unknown: use flat, racks, multi_idc, file")
    topology: dict[str, Any] = {"kind": kind}
    if kind == "file":
        if not t["file"]:
            raise ScenarioError("topology.kind file needs topology.file (a path)")
        topology["file"] = str(t["file"])
    topology["hosts"] = _int(t["hosts"], "topology.hosts", 1)
    topology["upload"] = _bw(t["upload"], "topology.upload")
    topology["download"] = _bw(t["download"], "topology.download")
    topology["latency"] = _dur(t["latency"], "topology.latency")
    topology["racks"] = _int(t["racks"], "topology.racks", 1)
    topology["idcs"] = _int(t["idcs"], "topology.idcs", 1)
    topology["racks_per_idc"] = _int(t["racks_per_idc"], "topology.racks_per_idc", 1)
    topology["rack_uplink"] = (
        None if t["rack_uplink"] is None else _bw(t["rack_uplink"], "topology.rack_uplink")
    )
    topology["inter_idc"] = (
        None if t["inter_idc"] is None else _bw(t["inter_idc"], "topology.inter_idc")
    )
    topology["inter_idc_latency"] = _dur(t["inter_idc_latency"], "topology.inter_idc_latency")
    classes = t["classes"]
    if not isinstance(classes, list):
        raise ScenarioError("topology.classes must be a list of {share, upload, download}")
    parsed_classes = []
    total_share = 0.0
    for i, c in enumerate(classes):
        where = f"topology.classes[{i}]"
        if not isinstance(c, dict):
            raise ScenarioError(f"{where} must be a mapping with share, upload, download")
        _check_keys(c, ["share", "upload", "download"], where)
        share = c.get("share")
        if not isinstance(share, int | float) or not 0 < share <= 1:
            raise ScenarioError(f"{where}.share must be a fraction in (0, 1], got {share!r}")
        total_share += share
        parsed_classes.append(
            topo.HostClass(
                float(share),
                _bw(c.get("upload", t["upload"]), f"{where}.upload"),
                _bw(c.get("download", t["download"]), f"{where}.download"),
            )
        )
    if total_share > 1 + 1e-9:
        raise ScenarioError(f"topology.classes shares add up to {total_share:g} > 1")
    topology["classes"] = tuple(parsed_classes)

    o = merged["origin"]
    _check_keys(o, list(DEFAULTS["origin"]), "origin")
    sp = merged["seed_peers"]
    _check_keys(sp, list(DEFAULTS["seed_peers"]), "seed_peers")

    raw_tasks = data.get("tasks", DEFAULTS["tasks"])
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ScenarioError("tasks must be a non-empty list (each entry may be {})")
    tasks = []
    for i, raw in enumerate(raw_tasks):
        tasks.append(_task(raw if raw is not None else {}, i))
    names = [x.name for x in tasks]
    if len(set(names)) != len(names):
        raise ScenarioError(f"task names must be unique, got {names}")

    ch = merged["churn"]
    _check_keys(ch, list(DEFAULTS["churn"]), "churn")
    churn_rate = ch["rate"]
    if not isinstance(churn_rate, int | float) or isinstance(churn_rate, bool) or churn_rate < 0:
        raise ScenarioError(
            f"churn.rate must be a number >= 0 (leaves per second), got {churn_rate!r}"
        )
    linger = _dur(ch["linger"], "churn.linger", allow_inf=True)

    raw_failures = data.get("failures", [])
    if not isinstance(raw_failures, list):
        raise ScenarioError("failures must be a list of {at, host}")
    failures = []
    for i, f in enumerate(raw_failures):
        where = f"failures[{i}]"
        if not isinstance(f, dict):
            raise ScenarioError(f"{where} must be a mapping {{at: 30s, host: seed0}}")
        _check_keys(f, ["at", "host"], where)
        if "host" not in f or "at" not in f:
            raise ScenarioError(f"{where} needs both 'at' and 'host'")
        failures.append(Failure(_dur(f["at"], f"{where}.at"), str(f["host"])))

    sched = merged["scheduler"]
    if not isinstance(sched, dict):
        raise ScenarioError("scheduler must be a mapping of SchedulerConfig fields")
    valid = [f.name for f in dataclasses.fields(SchedulerConfig)]
    _check_keys(sched, valid, "scheduler")
    try:
        SchedulerConfig(**sched)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"scheduler: {exc}") from None

    p = merged["peer"]
    _check_keys(p, list(DEFAULTS["peer"]), "peer")
    peer = PeerSpec(
        max_in_flight=_opt(_int, p["max_in_flight"], "peer.max_in_flight", 1),
        piece_timeout=_opt(_dur, p["piece_timeout"], "peer.piece_timeout"),
        stall_timeout=_opt(_dur, p["stall_timeout"], "peer.stall_timeout", allow_inf=True),
        reschedule_interval=_opt(_dur, p["reschedule_interval"], "peer.reschedule_interval"),
        scheduler_latency=_dur(p["scheduler_latency"], "peer.scheduler_latency"),
        endgame=_opt(_bool, p["endgame"], "peer.endgame"),
        upload_slots=_int(p["upload_slots"], "peer.upload_slots", 0),
        seed_upload_slots=_int(p["seed_upload_slots"], "peer.seed_upload_slots", 0),
        fair_slot_window=_opt(_dur, p["fair_slot_window"], "peer.fair_slot_window"),
        cut_through_blocks=_int(p["cut_through_blocks"], "peer.cut_through_blocks", 1),
    )
    if peer.piece_timeout is not None and peer.piece_timeout <= 0:
        raise ScenarioError("peer.piece_timeout must be > 0")
    bt = merged["bittorrent"]
    _check_keys(bt, list(DEFAULTS["bittorrent"]), "bittorrent")
    bittorrent = BitTorrentSpec(
        neighbours=_int(bt["neighbours"], "bittorrent.neighbours", 1),
        max_connections=_int(bt["max_connections"], "bittorrent.max_connections", 1),
        reannounce=_dur(bt["reannounce"], "bittorrent.reannounce"),
        unchoke_slots=_int(bt["unchoke_slots"], "bittorrent.unchoke_slots", 1),
    )
    m = merged["model"]
    _check_keys(m, list(DEFAULTS["model"]), "model")
    hub_slack = m["hub_slack"]
    if not isinstance(hub_slack, int | float) or not 0 <= hub_slack < 0.5:
        raise ScenarioError(f"model.hub_slack must be a fraction in [0, 0.5), got {hub_slack!r}")
    return Scenario(
        name=str(merged["name"] or name),
        seed=seed,
        until=until,
        policies=parsed_policies,
        topology=topology,
        origin_upload=_bw(o["upload"], "origin.upload"),
        origin_latency=_dur(o["latency"], "origin.latency"),
        seed_count=_int(sp["count"], "seed_peers.count", 0),
        seed_upload=_bw(sp["upload"], "seed_peers.upload"),
        seed_download=_bw(sp["download"], "seed_peers.download"),
        tasks=tuple(tasks),
        churn_rate=float(churn_rate),
        linger=linger,
        failures=tuple(failures),
        scheduler=dict(sched),
        peer=peer,
        bittorrent=bittorrent,
        depth=_depth(m["depth"]),
        hub_slack=float(hub_slack),
        base_dir=base_dir,
        raw=copy.deepcopy(data),
    )


def split_policies(text: str) -> list[str]:
    """A comma-separated list of policies, where a policy's own overrides are also
    comma-separated: ``load_aware:retry_limit=9,retry_interval=1,random`` is two
    policies (a part with ``=`` but no ``:`` continues the previous one)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and out:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


def parse_policy(text: object) -> Policy:
    """``name`` or ``name:field=value,field=value`` (scheduler policies only)."""
    if not isinstance(text, str) or not text:
        raise ScenarioError(f"a policy is a name like 'load_aware', got {text!r}")
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in POLICIES:
        raise ScenarioError(f"policy {name!r} is unknown: use one of {list(POLICIES)}")
    overrides: list[tuple[str, Any]] = []
    if rest:
        if name == "bittorrent":
            raise ScenarioError("the bittorrent policy has no scheduler settings to override")
        valid = {f.name for f in dataclasses.fields(SchedulerConfig)} - {"algorithm", "policy"}
        valid |= {f"download.{name}" for name in _DOWNLOAD_FIELDS}
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in valid:
                raise ScenarioError(
                    f"policy {text!r}: {part!r} is not field=value with a SchedulerConfig "
                    f"field or download.<DownloadConfig field> ({sorted(valid)})"
                )
            overrides.append((key, yaml.safe_load(value.strip())))
        rules, _, download_rules = POLICY_RULES[name]
        sched = {k: v for k, v in overrides if not k.startswith("download.")}
        down = {k.removeprefix("download."): v for k, v in overrides if k.startswith("download.")}
        try:
            SchedulerConfig(policy=rules, **sched)
            DownloadConfig(policy=download_rules, **down)
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"policy {text!r}: {exc}") from None
    return Policy(text.replace(" ", ""), name, tuple(overrides))


def _task(raw: Any, i: int) -> TaskSpec:
    where = f"tasks[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} must be a mapping (size, piece_length, peers, arrival)")
    _check_keys(raw, list(DEFAULTS["task"]), where)
    t = _merge(DEFAULTS["task"], raw)
    size = _size(t["size"], f"{where}.size")
    if size <= 0:
        raise ScenarioError(f"{where}.size must be > 0 bytes")
    if t["piece_length"] is None:
        piece_length = compute_piece_length(size)
    else:
        piece_length = _size(t["piece_length"], f"{where}.piece_length")
        if piece_length <= 0:
            raise ScenarioError(f"{where}.piece_length must be > 0 bytes")
    peers = None if t["peers"] == "all" else _int(t["peers"], f"{where}.peers", 1)
    a = t["arrival"]
    if not isinstance(a, dict):
        raise ScenarioError(f"{where}.arrival must be a mapping (kind, start, rate, interval)")
    _check_keys(a, list(DEFAULTS["task"]["arrival"]), f"{where}.arrival")
    kind = a["kind"]
    if kind not in ("flash", "poisson", "staggered"):
        raise ScenarioError(f"{where}.arrival.kind {kind!r} is unknown: flash, poisson, staggered")
    rate = a["rate"]
    if not isinstance(rate, int | float) or not rate > 0:
        raise ScenarioError(f"{where}.arrival.rate must be > 0 arrivals per second, got {rate!r}")
    return TaskSpec(
        name=str(t["name"] or f"task{i}"),
        size=size,
        piece_length=piece_length,
        peers=peers,
        arrival=Arrival(
            kind,
            _dur(a["start"], f"{where}.arrival.start"),
            float(rate),
            _dur(a["interval"], f"{where}.arrival.interval"),
        ),
    )


def _merge(defaults: dict, data: dict, skip: tuple[str, ...] = ()) -> dict:
    out = {}
    for key, default in defaults.items():
        if key in skip:
            continue
        value = data.get(key, default) if isinstance(data, dict) else default
        if isinstance(default, dict) and default and value is not None:
            if not isinstance(value, dict):
                raise ScenarioError(f"{key} must be a mapping, got {value!r}")
            merged = dict(default)
            merged.update(value)
            value = merged
        out[key] = value
    return out


def _check_keys(data: dict, valid: list[str], where: str) -> None:
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ScenarioError(f"{what} must be >= {minimum}, got {value}")
    return value


def _depth(value: Any) -> int:
    depth = _int(value, "model.depth", 0)
    if depth > MAX_DEPTH:
        raise ScenarioError(
            f"model.depth must be <= {MAX_DEPTH}, got {depth}: each level re-solves the "
            f"neighbours of the last, and on a dense swarm the cost grows steeply (0 or 1 "
            f"are the useful settings; see docs/simulation.md)"
        )
    return depth


def _opt(check, value: Any, what: str, *args, **kw):
    """None (the policy's own value) or the checked value."""
    return None if value is None else check(value, what, *args, **kw)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{what} must be true or false, got {value!r}")
    return value


def _wrap(fn, value: Any, what: str, **kw):
    try:
        return fn(value, what, **kw)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def _bw(value: Any, what: str) -> float:
    return _wrap(parse_bandwidth, value, what)


def _dur(value: Any, what: str, allow_inf: bool = False) -> float:
    result = _wrap(parse_duration, value, what, allow_inf=allow_inf)
    if not allow_inf and not math.isfinite(result):
        raise ScenarioError(f"{what} must be finite")
    return result


def _size(value: Any, what: str) -> int:
    return _wrap(parse_size, value, what)
