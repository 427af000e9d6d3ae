"""The manager's pure parts: the scope searcher (Dragonfly's weights), passwords and
session tokens, validation messages, and the OpenAPI document against the real router."""

from __future__ import annotations

import msgspec
import pytest

from d7y.daemons.manager import auth, schemas, searcher
from d7y.daemons.manager.searcher import Candidate, Host, rank_clusters, score
from d7y.daemons.manager.validation import explain

HOST = Host(hostname="edge-7.fra", ip="10.2.3.4", idc="idc-b", location="eu|de|fra|r1|h2|x")


def only(**scopes) -> Candidate:
    return Candidate(cluster_id=1, active_schedulers=1, **scopes)


# -- the searcher ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        ({}, 0.0),
        ({"cidrs": ["10.2.0.0/16"]}, 0.3),
        ({"cidrs": ["10.3.0.0/16", "10.2.3.4/32"]}, 0.3),
        ({"cidrs": ["10.3.0.0/16"]}, 0.0),
        ({"cidrs": ["not-a-cidr", "10.0.0.0/8"]}, 0.3),  # a bad entry is skipped
        ({"cidrs": ["::/0"]}, 0.0),  # an IPv4 host is in no IPv6 network
        ({"hostnames": ["^edge-\\d+"]}, 0.3),
        ({"hostnames": ["fra$"]}, 0.3),  # unanchored, like Go's MatchString
        ({"hostnames": ["^fra"]}, 0.0),
        ({"hostnames": ["(broken", "edge"]}, 0.3),
        ({"idc": "idc-a|IDC-B"}, 0.25),  # one of the '|' list, any case
        ({"idc": "idc-b-2"}, 0.0),
        ({"location": "eu|de|fra|r1|h2|x"}, 0.14),  # equal: the whole weight
        ({"location": "EU|DE|fra|r1|h2|y"}, 0.14),  # five elements at most count
        ({"location": "eu|de|fra"}, 0.14 * 3 / 5),
        ({"location": "eu|fr"}, 0.14 * 1 / 5),
        ({"location": "us|de"}, 0.0),  # a prefix, not any shared element
        ({"is_default": True}, 0.01),
        (
            {"cidrs": ["10.0.0.0/8"], "hostnames": ["edge"], "idc": "idc-b",
             "location": "eu|de|fra|r1|h2|x", "is_default": True},
            1.0,
        ),
    ],
)  # fmt: skip
def test_scope_weights(scopes, expected):
    assert score(HOST, only(**scopes)) == pytest.approx(expected)


def test_empty_host_fields_score_nothing():
    bare = Host(hostname="", ip="", idc="", location="")
    full = only(cidrs=["0.0.0.0/0"], hostnames=[".*"], idc="a", location="a")
    assert score(bare, full) == 0.0


def test_ranking_best_first_and_only_clusters_with_active_schedulers():
    clusters = [
        Candidate(cluster_id=1, is_default=True, active_schedulers=2),
        Candidate(cluster_id=2, idc="idc-b", active_schedulers=1),
        Candidate(cluster_id=3, cidrs=["10.0.0.0/8"], idc="idc-b", active_schedulers=0),
        Candidate(cluster_id=4, location="eu|de", active_schedulers=1),
        Candidate(cluster_id=5, location="eu|de", active_schedulers=3),
    ]
    ranked = rank_clusters(HOST, clusters)
    # 3 would win but has no active scheduler; 4 and 5 tie and the older comes first.
    assert [c.cluster_id for c, _ in ranked] == [2, 4, 5, 1]
    assert [round(s, 3) for _, s in ranked] == [0.25, 0.056, 0.056, 0.01]


def test_weights_are_dragonflys():
    assert (searcher.CIDR_WEIGHT, searcher.HOSTNAME_WEIGHT, searcher.IDC_WEIGHT) == (
        0.3,
        0.3,
        0.25,
    )
    assert (searcher.LOCATION_WEIGHT, searcher.DEFAULT_CLUSTER_WEIGHT) == (0.14, 0.01)


# -- passwords and sessions --------------------------------------------------------------


def test_password_hash_is_salted_scrypt_and_verifies():
    one, two = auth.hash_password("s3cret-pass"), auth.hash_password("s3cret-pass")
    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert auth.verify_password("s3cret-pass", one)
    assert not auth.verify_password("s3cret-pasS", one)
    assert not auth.verify_password("s3cret-pass", "md5$whatever")
    assert not auth.verify_password("s3cret-pass", "garbage")


def test_session_tokens_are_signed_and_expire():
    key, other = b"k" * 32, b"o" * 32
    token = auth.issue_session(key, 42, ttl=60, now=1000.0)
    assert auth.read_session(key, token, now=1059.0) == 42
    with pytest.raises(auth.SessionInvalid) as expired:
        auth.read_session(key, token, now=1060.0)
    assert expired.value.expired
    with pytest.raises(auth.SessionInvalid):
        auth.read_session(other, token, now=1000.0)
    # Another user's ID in the payload breaks the signature.
    forged = auth.issue_session(key, 43, ttl=60, now=1000.0).split(".")[1]
    parts = token.split(".")
    with pytest.raises(auth.SessionInvalid):
        auth.read_session(key, f"{parts[0]}.{forged}.{parts[2]}", now=1000.0)


def test_session_key_is_made_once_and_private(tmp_path):
    path = tmp_path / "sub" / "session.key"
    key = auth.load_or_create_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert auth.load_or_create_key(path) == key


def test_token_scopes_and_roles():
    root_token = auth.Principal(1, "root", "root", token_id=5, token_scopes=("cluster",))
    assert root_token.may("DELETE", "clusters") is None
    assert "scope 'job'" in root_token.may("GET", "jobs")
    assert root_token.may("GET", "users") is not None
    guest = auth.Principal(2, "g", "guest")
    assert guest.may("GET", "clusters") is None
    assert "may only read" in guest.may("PATCH", "clusters")


# -- validation messages -------------------------------------------------------------------


def message_for(kind: type, body: bytes) -> tuple[str, str | None]:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=kind)
    return explain(caught.value, kind, body)


def test_range_errors_name_field_range_and_value():
    text, field = message_for(
        schemas.ClusterCreate,
        b'{"name": "x", "scheduler_cluster_config": {"filter_parent_limit": 1001}}',
    )
    assert field == "scheduler_cluster_config.filter_parent_limit"
    assert text == f"`{field}` must be an integer in 10..1000, got 1001"
    text, field = message_for(schemas.TokenCreate, b'{"name": "t", "scopes": ["root"], '
                              b'"expires_in": 60}')  # fmt: skip
    assert field == "scopes[0]" and 'one of "cluster", "job"' in text and 'got "root"' in text
    text, field = message_for(schemas.ClusterCreate, b'{"name": "has space"}')
    assert field == "name" and "matching" in text


# -- the OpenAPI document -------------------------------------------------------------------


def test_openapi_document_validates_and_lists_every_route():
    from aiohttp import web
    from openapi_spec_validator import validate

    from d7y.daemons.manager.api import ManagerApi
    from d7y.daemons.manager.console import console_routes
    from d7y.daemons.manager.openapi import build_document, openapi_path
    from d7y.daemons.manager.service import build_application

    api = ManagerApi(None, b"k" * 32, session_ttl=60, keepalive_timeout=15)
    app = build_application(api, max_body=1024)
    document = build_document(api.routes, "test")
    validate(document)
    # The console's HTML pages (and its stylesheet) are not API routes.
    console = {
        (d.method.lower(), openapi_path(d.path))
        if isinstance(d, web.RouteDef)
        else ("get", d.prefix)
        for d in console_routes(api)
    }
    served = {
        (route.method.lower(), openapi_path(route.resource.canonical))
        for route in app.router.routes()
        if route.method != "HEAD"
    } - console
    assert ("get", "/api/v1/clusters") in served
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented
    # The bodies' ranges are in the document, from the same types that validate them.
    limits = document["components"]["schemas"]["SchedulerClusterConfig"]["properties"]
    assert limits["candidate_parent_limit"]["minimum"] == 1
    assert limits["candidate_parent_limit"]["maximum"] == 20


# -- migrations -------------------------------------------------------------------------------


def test_the_migrations_build_exactly_the_models_schema(tmp_path):
    """alembic's comparison of the migrated database with models.py finds nothing: a
    model changed without a migration fails here."""
    import asyncio

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from d7y.daemons.manager.db import create_engine, migrate
    from d7y.daemons.manager.models import Base

    async def run() -> list:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
        await migrate(engine)
        await migrate(engine)  # again: a no-op
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
        await engine.dispose()
        return diff

    assert asyncio.run(run()) == []
