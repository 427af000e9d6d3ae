"""HTML forms to and from the API's request bodies.

A form is turned into the JSON body the REST API would get and decoded with the API's own
decoder (api.decode_body), so the console validates with the same types and says the same
words; the error's field (``scheduler_cluster_config.candidate_parent_limit``,
``scopes.cidrs[2]``) is mapped back to the input it came from. Form inputs are named by
their JSON path. Numbers that do not parse are passed on as text, so the API's message
("must be an integer in 1..20, got \"ten\"") is what the operator reads.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from d7y.daemons.manager.api import decode_body
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import Cluster

#: The API's prefix on body errors: a form has no "request body" to speak of.
_BODY_PREFIX = "invalid request body: "
_INDEX = re.compile(r"\[\d+\]$")

CLUSTER_NUMBERS = (
    "scheduler_cluster_config.candidate_parent_limit",
    "scheduler_cluster_config.filter_parent_limit",
    "scheduler_cluster_config.job_rate_limit",
    "seed_peer_cluster_config.load_limit",
    "peer_cluster_config.load_limit",
)
CLUSTER_LISTS = ("scopes.cidrs", "scopes.hostnames", "peer_cluster_config.block_list")
CLUSTER_TEXTS = ("name", "bio", "scopes.idc", "scopes.location")


class FormInvalid(ApiError):
    """A form the API's types refused (422): ``errors`` maps input names to messages."""

    def __init__(self, exc: ApiError) -> None:
        super().__init__(exc.status, exc.error, message_of(exc), exc.field)
        self.errors = {input_of(exc.field): self.message}


def message_of(exc: ApiError) -> str:
    return exc.message.removeprefix(_BODY_PREFIX)


def input_of(field: str | None) -> str:
    """The input an API field path belongs to (a list item belongs to its list)."""
    return _INDEX.sub("", field or "") or "_form"


def errors_of(exc: ApiError) -> dict[str, str]:
    """Input name -> message, for showing an error next to its input."""
    return {input_of(exc.field): message_of(exc)}


def decode(body: dict[str, Any], kind: type) -> Any:
    """``body`` as the API's request type; FormInvalid naming the input otherwise."""
    try:
        return decode_body(msgspec.json.encode(body), kind)
    except ApiError as exc:
        raise FormInvalid(exc) from None


def number(text: str) -> int | str:
    try:
        return int(text.strip())
    except ValueError:
        return text  # the API's decoder names the field and says what it wants


def lines(text: str) -> list[str]:
    """One item per line (or comma), blanks dropped."""
    return [item.strip() for item in re.split(r"[\n,]", text) if item.strip()]


def _put(body: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if rest:
        _put(body.setdefault(head, {}), rest, value)
    else:
        body[head] = value


def cluster_body(form: dict[str, str]) -> dict[str, Any]:
    """The JSON body of POST/PATCH /api/v1/clusters for the cluster form."""
    body: dict[str, Any] = {"is_default": form.get("is_default") == "on"}
    for name in CLUSTER_TEXTS:
        _put(body, name, form.get(name, "").strip())
    for name in CLUSTER_NUMBERS:
        _put(body, name, number(form.get(name, "")))
    for name in CLUSTER_LISTS:
        _put(body, name, lines(form.get(name, "")))
    return body


def cluster_values(cluster: Cluster | None) -> dict[str, str]:
    """The cluster form filled in: a stored cluster's values, or the API's defaults."""
    from d7y.daemons.manager import schemas as s

    if cluster is None:
        source: dict[str, Any] = msgspec.to_builtins(s.ClusterCreate(name=""))
    else:
        source = {
            "name": cluster.name, "bio": cluster.bio, "is_default": cluster.is_default,
            "scopes": cluster.scopes, "scheduler_cluster_config": cluster.scheduler_cluster_config,
            "seed_peer_cluster_config": cluster.seed_peer_cluster_config,
            "peer_cluster_config": cluster.peer_cluster_config,
        }  # fmt: skip
    values: dict[str, str] = {}
    for name in (*CLUSTER_TEXTS, *CLUSTER_NUMBERS, *CLUSTER_LISTS):
        value: Any = source
        for part in name.split("."):
            value = (value or {}).get(part, "")
        values[name] = "\n".join(value) if isinstance(value, list) else str(value)
    values["is_default"] = "on" if source.get("is_default") else ""
    return values
