"""Which cluster's schedulers a dfdaemon should use: Dragonfly's scope scoring.

A pure function of the asking host and the clusters' scopes (manager/searcher/searcher.go
in Dragonfly): each cluster scores

    0.3  * (the host's IP is in one of the cluster's CIDRs)
  + 0.3  * (one of the cluster's hostname regular expressions matches the host name)
  + 0.25 * (the host's IDC equals one of the cluster's '|'-separated IDCs)
  + 0.14 * (the location's '|'-separated elements shared as a prefix, of at most 5)
  + 0.01 * (the cluster is the default one)

Only clusters with at least one active scheduler are candidates; they come back best
first (ties: the older cluster first, so the answer is stable).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

CIDR_WEIGHT = 0.3
HOSTNAME_WEIGHT = 0.3
IDC_WEIGHT = 0.25
LOCATION_WEIGHT = 0.14
DEFAULT_CLUSTER_WEIGHT = 0.01
#: Location elements compared at most (Dragonfly's maxElementLen).
MAX_LOCATION_ELEMENTS = 5
SEPARATOR = "|"


@dataclass(frozen=True)
class Host:
    """The host asking: a dfdaemon."""

    hostname: str
    ip: str
    idc: str = ""
    location: str = ""


@dataclass(frozen=True)
class Candidate:
    """A cluster as the searcher sees it."""

    cluster_id: int
    is_default: bool = False
    idc: str = ""
    location: str = ""
    cidrs: Sequence[str] = ()
    hostnames: Sequence[str] = ()
    active_schedulers: int = 0
    extra: dict = field(default_factory=dict, compare=False)


def cidr_score(ip: str, cidrs: Sequence[str]) -> float:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return 0.0
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue  # refused at write time; an old row must not break the search
        if address.version == network.version and address in network:
            return 1.0
    return 0.0


def hostname_score(hostname: str, patterns: Sequence[str]) -> float:
    if not hostname:
        return 0.0
    for pattern in patterns:
        try:
            if re.search(pattern, hostname):  # Go's MatchString: unanchored
                return 1.0
        except re.error:
            continue
    return 0.0


def idc_score(host_idc: str, cluster_idc: str) -> float:
    """1 when the host's IDC is one of the cluster's '|'-separated IDCs (any case)."""
    if not host_idc or not cluster_idc:
        return 0.0
    wanted = host_idc.casefold()
    return 1.0 if any(e.casefold() == wanted for e in cluster_idc.split(SEPARATOR)) else 0.0


def location_score(host_location: str, cluster_location: str) -> float:
    """The share of the first five '|'-separated elements the two locations have in
    common as a prefix; 1 when they are equal (any case)."""
    if not host_location or not cluster_location:
        return 0.0
    if host_location.casefold() == cluster_location.casefold():
        return 1.0
    ours = host_location.split(SEPARATOR)
    theirs = cluster_location.split(SEPARATOR)
    shared = 0
    for a, b in zip(ours[:MAX_LOCATION_ELEMENTS], theirs[:MAX_LOCATION_ELEMENTS], strict=False):
        if a.casefold() != b.casefold():
            break
        shared += 1
    return shared / MAX_LOCATION_ELEMENTS


def score(host: Host, cluster: Candidate) -> float:
    return (
        CIDR_WEIGHT * cidr_score(host.ip, cluster.cidrs)
        + HOSTNAME_WEIGHT * hostname_score(host.hostname, cluster.hostnames)
        + IDC_WEIGHT * idc_score(host.idc, cluster.idc)
        + LOCATION_WEIGHT * location_score(host.location, cluster.location)
        + DEFAULT_CLUSTER_WEIGHT * (1.0 if cluster.is_default else 0.0)
    )


def rank_clusters(host: Host, clusters: Sequence[Candidate]) -> list[tuple[Candidate, float]]:
    """The clusters with active schedulers, best match first, with their scores."""
    scored = [(c, score(host, c)) for c in clusters if c.active_schedulers > 0]
    scored.sort(key=lambda pair: (-pair[1], pair[0].cluster_id))
    return scored
