"""The manager's console in a real headless Chromium (tests/cdp.py) against a real manager
process: each test does what an operator would (type, click) and then checks both what
the page shows and what the API and the database hold afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

from d7y.core import ids
from tests.cdp import CHROMIUM, Browser, Chromium, Page
from tests.manager_harness import ROOT_PASSWORD, ManagerProcess, start_managed_cluster

# Skipped without Chromium, except in CI (D7Y_REQUIRE_TOOLS), where that is a failure.
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("D7Y_REQUIRE_TOOLS"),
    reason="needs Debian's chromium (apt-get install chromium)",
)
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    with ManagerProcess(tmp_path_factory.mktemp("console")) as proc:
        yield proc


@pytest.fixture(scope="module")
def root(manager):
    return manager.signin()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    ws_url = browser.start()
    yield ws_url
    browser.stop()


def in_browser(ws_url: str, scenario: Callable[[Page], Awaitable[None]]) -> None:
    """Run ``scenario`` on a fresh tab (its own cookies) of the module's browser."""

    async def run() -> None:
        async with Browser(ws_url) as browser:
            page = await browser.new_page()
            try:
                await scenario(page)
            finally:
                await page.close()

    asyncio.run(run())


async def sign_in(page: Page, manager: ManagerProcess, name: str, password: str) -> None:
    await page.goto(f"{manager.url}/signin")
    await page.fill("#f-name", name)
    await page.fill("#f-password", password)
    await page.click_and_load("#signin-form button[type=submit]")


def audits_since(root, first_id: int) -> list[dict]:
    return [a for a in root.get("/api/v1/audits?per_page=200") if a["id"] > first_id]


def last_audit_id(root) -> int:
    rows = root.get("/api/v1/audits?per_page=1")
    return rows[0]["id"] if rows else 0


def test_sign_in_sets_a_strict_http_only_session_and_sign_out_ends_it(manager, chromium):
    async def scenario(page: Page) -> None:
        await page.goto(f"{manager.url}/clusters")
        assert (await page.url()).startswith(f"{manager.url}/signin?next=")
        await sign_in(page, manager, "root", "not-the-password")
        assert await page.text("#e-_form") == "wrong user name or password"
        assert await page.evaluate("location.pathname") == "/signin"

        await page.fill("#f-password", ROOT_PASSWORD)
        await page.click_and_load("#signin-form button[type=submit]")
        assert await page.evaluate("location.pathname") == "/clusters"
        assert "root" in await page.text("#signed-in-as")
        assert "cluster-1" in await page.text("#clusters")
        cookies = {c["name"]: c for c in (await page.call("Network.getAllCookies"))["cookies"]}
        for name in ("d7y_session", "d7y_csrf"):
            assert cookies[name]["httpOnly"] is True, cookies[name]
            assert cookies[name]["sameSite"] == "Strict", cookies[name]
        # The page's scripts cannot read the session (HttpOnly).
        assert "d7y_session" not in await page.evaluate("document.cookie")
        # The cookie is the API's own session token: the API accepts it as a bearer token.
        status, me, _ = manager.client(cookies["d7y_session"]["value"]).call(
            "GET", "/api/v1/users/me"
        )
        assert (status, me["name"]) == (200, "root")

        await page.click_and_load("#signout")
        assert await page.evaluate("location.pathname") == "/signin"
        await page.goto(f"{manager.url}/tokens")
        assert await page.evaluate("location.pathname") == "/signin"

    in_browser(chromium, scenario)


def test_create_cluster_shows_the_apis_validation_errors_then_saves(manager, root, chromium):
    name = unique("web")
    before = last_audit_id(root)

    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.click_and_load("#new-cluster")
        assert await page.evaluate("location.pathname") == "/clusters/new"
        # The form starts with the API's defaults.
        assert (
            await page.evaluate(
                "document.querySelector('#f-scheduler_cluster_config\\\\.candidate_parent_limit')"
                ".value"
            )
            == "4"
        )

        # A name the API refuses: the error is next to the name input, in the API's words.
        await page.fill("#f-name", "has space")
        await page.click_and_load("#save-cluster")
        api_status, api_error, _ = root.call("POST", "/api/v1/clusters", {"name": "has space"})
        assert api_status == 422 and api_error["field"] == "name"
        shown = await page.text("#e-name")
        assert api_error["message"] == "invalid request body: " + shown
        assert (
            await page.evaluate("document.querySelector('#f-name').getAttribute('aria-invalid')")
            == "true"
        )
        assert await page.evaluate("document.querySelector('#f-name').value") == "has space"

        # A good name, a limit out of range: now the limit is what is marked.
        await page.fill("#f-name", name)
        await page.fill("#f-scheduler_cluster_config\\.candidate_parent_limit", "50")
        await page.fill("#f-scopes\\.cidrs", "10.0.0.0/8\n192.168.7.0/24")
        await page.click_and_load("#save-cluster")
        shown = await page.text("#e-scheduler_cluster_config\\.candidate_parent_limit")
        assert "1..20" in shown and "50" in shown, shown
        assert not await page.exists("#e-name")
        assert root.get(f"/api/v1/clusters?name={name}") == []  # nothing was saved

        await page.fill("#f-scheduler_cluster_config\\.candidate_parent_limit", "7")
        await page.fill("#f-scopes\\.idc", "idc-web")
        await page.click_and_load("#save-cluster")
        assert await page.text("#cluster-name") == name
        assert await page.text("#notice") == "Cluster created."
        assert "idc-web" in await page.text("#scopes")
        assert "10.0.0.0/8, 192.168.7.0/24" in await page.text("#scopes")

    in_browser(chromium, scenario)
    [stored] = root.get(f"/api/v1/clusters?name={name}")
    assert stored["scheduler_cluster_config"]["candidate_parent_limit"] == 7
    assert stored["scopes"]["idc"] == "idc-web"
    assert stored["scopes"]["cidrs"] == ["10.0.0.0/8", "192.168.7.0/24"]
    assert stored["is_default"] is False
    # Each submit is audited: two refused (422), then the one that created it.
    posts = [
        (a["path"], a["status_code"], a["actor_name"])
        for a in audits_since(root, before)
        if a["path"] == "/clusters/new"
    ]
    assert sorted(posts) == [
        ("/clusters/new", 303, "root"),
        ("/clusters/new", 422, "root"),
        ("/clusters/new", 422, "root"),
    ]


def test_cluster_detail_shows_members_refuses_delete_and_edit_saves(manager, root, chromium):
    cluster = root.ok("POST", "/api/v1/clusters", {"name": unique("members")}, status=201)
    cid = cluster["id"]
    scheduler = root.ok(
        "POST", "/api/v1/schedulers",
        {"hostname": "sched-a", "ip": "10.1.0.1", "port": 8002, "cluster_id": cid, "idc": "i1"},
        status=201,
    )  # fmt: skip
    root.ok(
        "POST", "/api/v1/seed-peers",
        {"hostname": "seed-a", "ip": "10.1.0.2", "port": 65000, "download_port": 65001,
         "cluster_id": cid},
        status=201,
    )  # fmt: skip

    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/clusters")
        row = await page.text(f"tr[data-cluster-id='{cid}']")
        assert "1 active" in row, row
        await page.click_and_load(f"tr[data-cluster-id='{cid}'] a")
        scheduler_row = await page.text(f"#schedulers tr[data-id='{scheduler['id']}']")
        assert "sched-a" in scheduler_row and "10.1.0.1:8002" in scheduler_row
        assert "active" in scheduler_row and "s ago" in scheduler_row
        seed_row = await page.text("#seed-peers tbody tr")
        assert "seed-a" in seed_row and "download 65001" in seed_row and "active" in seed_row

        # Deleting it while its members are alive is refused with the API's 409.
        await page.accept_dialogs()
        await page.goto(f"{manager.url}/clusters/{cid}")
        await page.click_and_load("#delete-cluster")
        assert (await page.evaluate("document.title")).startswith("Conflict")
        assert "has active members: scheduler" in await page.text("#error-message")

        await page.goto(f"{manager.url}/clusters/{cid}")
        await page.click_and_load("#edit-cluster")
        await page.fill("#f-scopes\\.location", "asia|beijing")
        await page.fill("#f-peer_cluster_config\\.block_list", "bad-host-1\nbad-host-2")
        await page.click_and_load("#save-cluster")
        assert await page.text("#notice") == "Cluster saved."
        assert "asia|beijing" in await page.text("#scopes")

    in_browser(chromium, scenario)
    stored = root.get(f"/api/v1/clusters/{cid}")
    assert stored["scopes"]["location"] == "asia|beijing"
    assert stored["peer_cluster_config"]["block_list"] == ["bad-host-1", "bad-host-2"]
    # Unchanged fields kept their values (the form sends them all back).
    assert stored["name"] == cluster["name"]
    assert stored["scheduler_cluster_config"] == cluster["scheduler_cluster_config"]


def test_token_is_shown_once_works_and_revoking_it_locks_it_out(manager, root, chromium):
    token_name = unique("ci")
    seen: dict[str, str] = {}

    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/tokens")
        await page.fill("#f-name", token_name)
        await page.click_and_load("#create-token")
        value = await page.text("#token-value")
        assert value.startswith("d7y_pat_")
        seen["token"] = value
        token_id = await page.evaluate(
            f"[...document.querySelectorAll('#tokens tr[data-token-id]')].find("
            f"r => r.innerText.includes({token_name!r})).dataset.tokenId"
        )
        seen["id"] = token_id
        # It works against the API while the page still shows it active.
        status, _, _ = manager.client(value).call("GET", "/api/v1/clusters")
        assert status == 200
        row = f"#tokens tr[data-token-id='{token_id}']"
        assert await page.text(f"{row} .token-state") == "active"

        await page.goto(f"{manager.url}/tokens")
        assert not await page.exists("#token-value")  # never shown again
        assert value not in await page.evaluate("document.documentElement.outerHTML")

        await page.click_and_load(f"{row} button.revoke")
        assert await page.text("#notice") == f"Revoked token {token_id}."
        assert await page.text(f"{row} .token-state") == "inactive"

    in_browser(chromium, scenario)
    status, body, _ = manager.client(seen["token"]).call("GET", "/api/v1/clusters")
    assert status == 403 and body["error"] == "token_inactive", body
    assert root.get(f"/api/v1/personal-access-tokens/{seen['id']}")["state"] == "inactive"


def test_token_form_errors_name_the_field(manager, root, chromium):
    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/tokens")
        await page.fill("#f-name", unique("noscope"))
        await page.click("input[name=scopes][value=cluster]")  # uncheck the default scope
        await page.click_and_load("#create-token")
        shown = await page.text("#e-scopes")
        assert "scopes" in shown and "at least 1" in shown, shown
        assert not await page.exists("#token-value")

    before = len(root.get("/api/v1/personal-access-tokens?per_page=1000"))
    in_browser(chromium, scenario)
    assert len(root.get("/api/v1/personal-access-tokens?per_page=1000")) == before


def test_guest_reads_everything_and_every_write_is_refused(manager, root, chromium):
    guest, password = unique("guest"), "guest-password-1"
    name = unique("by-guest")

    async def as_root(page: Page) -> None:
        # root creates the guest through the users page.
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/users")
        await page.fill("#user-form #f-name", guest)
        await page.fill("#user-form #f-password", password)
        await page.click_and_load("#create-user")
        assert await page.text("#notice") == f"Created user {guest}."

    async def as_guest(page: Page) -> None:
        await sign_in(page, manager, guest, password)
        assert await page.evaluate("location.pathname") == "/clusters"
        assert "cluster-1" in await page.text("#clusters")
        assert await page.exists("#readonly-banner")
        assert not await page.exists("#new-cluster")
        await page.goto(f"{manager.url}/clusters/1")
        assert not await page.exists("#edit-cluster")
        await page.goto(f"{manager.url}/tokens")
        assert not await page.exists("#token-form")
        await page.goto(f"{manager.url}/users")
        assert guest in await page.text("#users")
        assert not await page.exists("#user-form")

        await page.goto(f"{manager.url}/clusters/new")
        assert (await page.evaluate("document.title")).startswith("Not allowed")
        assert "may only read" in await page.text("#error-message")

        # A form submitted anyway (with the page's valid CSRF token): 403, nothing saved.
        await page.goto(f"{manager.url}/clusters")
        await page.evaluate(
            "(() => { const f = document.createElement('form'); f.method = 'post';"
            " f.action = '/clusters/new'; f.id = 'forged';"
            " for (const [k, v] of [['csrf_token', document.querySelector("
            "'input[name=csrf_token]').value], ['name', " + repr(name) + "]]) {"
            " const i = document.createElement('input'); i.name = k; i.value = v;"
            " f.appendChild(i); }"
            " const b = document.createElement('button'); b.id = 'forged-submit';"
            " f.appendChild(b); document.body.appendChild(f); })()"
        )
        await page.click_and_load("#forged-submit")
        assert (await page.evaluate("document.title")).startswith("Not allowed")
        assert "role 'guest' may only read" in await page.text("#error-message")

    in_browser(chromium, as_root)
    in_browser(chromium, as_guest)
    [user] = [u for u in root.get("/api/v1/users") if u["name"] == guest]
    assert user["role"] == "guest"
    assert root.get(f"/api/v1/clusters?name={name}") == []
    refused = [a for a in root.get("/api/v1/audits?per_page=50") if a["actor_name"] == guest]
    assert [(a["path"], a["status_code"]) for a in refused if a["method"] == "POST"][:1] == [
        ("/clusters/new", 403)
    ]


def test_root_changes_a_role_but_cannot_demote_the_last_root(manager, root, chromium):
    name = unique("ops")
    user = root.ok(
        "POST", "/api/v1/users", {"name": name, "password": "ops-password-1"}, status=201
    )
    row = f"#users tr[data-user-id='{user['id']}']"

    async def set_role(page: Page, row: str, role: str) -> None:
        await page.evaluate(
            f"document.querySelector({row + ' select[name=role]'!r}).value = {role!r}"
        )
        await page.click_and_load(f"{row} button[type=submit]")

    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/users")
        await set_role(page, row, "root")
        assert await page.text("#notice") == f"Saved user {name}."
        assert root.get(f"/api/v1/users/{user['id']}")["role"] == "root"
        await set_role(page, row, "guest")
        # root (user 1) is now the only root: demoting it is refused, with the reason.
        await set_role(page, "#users tr[data-user-id='1']", "guest")
        assert (await page.evaluate("document.title")).startswith("Conflict")
        assert "is the last enabled root" in await page.text("#error-message")

    in_browser(chromium, scenario)
    assert root.get(f"/api/v1/users/{user['id']}")["role"] == "guest"
    assert root.get("/api/v1/users/1")["role"] == "root"


def test_a_form_without_the_csrf_token_is_refused(manager, root, chromium):
    name = unique("csrf")

    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/clusters/new")
        await page.evaluate(
            "document.querySelector('#cluster-form input[name=csrf_token]').value = 'forged'"
        )
        await page.fill("#f-name", name)
        await page.click_and_load("#save-cluster")
        assert (await page.evaluate("document.title")).startswith("Not allowed")
        assert "stale or came from another site" in await page.text("#error-message")

    in_browser(chromium, scenario)
    assert root.get(f"/api/v1/clusters?name={name}") == []


# -- preheat: a real scheduler, seed peer and registry -------------------------------------

PAT = "d7y_pat_console-preheat-token"


@pytest.fixture(scope="module")
def preheat_cluster(tmp_path_factory):
    from tests.peer_harness import wait_for
    from tests.registry_server import Registry

    missing = shutil.which("skopeo") is None or shutil.which("docker-registry") is None
    if missing and not os.environ.get("D7Y_REQUIRE_TOOLS"):
        pytest.skip("needs skopeo and docker-registry (scripts/test.sh installs them)")
    work = tmp_path_factory.mktemp("console-preheat")
    with contextlib.ExitStack() as stack:
        manager, scheduler, seed = start_managed_cluster(
            stack, work, pat=PAT, hostname="sched-console"
        )
        seed_host = ids.host_id("127.0.0.1", "seed", seed=True)
        scheduler.wait_log(f"host announced host={seed_host} type=seed")
        client = manager.client(PAT)
        wait_for(
            lambda: any(s["state"] == "active" for s in client.get("/api/v1/schedulers")),
            "the scheduler to register with the manager",
        )
        registry_dir = work / "registry"
        registry_dir.mkdir()
        registry = stack.enter_context(Registry(registry_dir))
        yield SimpleNamespace(
            work=work, manager=manager, seed=seed, seed_host=seed_host, client=client,
            registry=registry,
        )  # fmt: skip


def test_preheat_an_image_from_the_console_reaches_success(preheat_cluster, chromium):
    from tests.test_preheat_e2e import REPO, push_image

    cluster = preheat_cluster
    manager, registry = cluster.manager, cluster.registry
    layers = push_image(cluster.work, registry, "console", seed=31)
    url = f"{registry.base}/v2/{REPO}/manifests/console"
    seen: dict[str, int] = {}

    async def scenario(page: Page) -> None:
        await sign_in(page, manager, "root", ROOT_PASSWORD)
        await page.goto(f"{manager.url}/preheat")
        await page.click_and_load("#new-preheat")
        # A blob URL is not a manifest: refused next to the URL input, nothing started.
        await page.fill("#f-args\\.url", url.replace("/manifests/console", "/blobs/sha256:00"))
        await page.click_and_load("#start-preheat")
        assert "is not a manifest URL" in await page.text("#e-args\\.url")

        await page.fill("#f-args\\.url", url)
        await page.click_and_load("#start-preheat")
        path = await page.evaluate("location.pathname")
        assert path.startswith("/preheat/"), path
        seen["id"] = int(path.rsplit("/", 1)[1])
        # The page reloads itself until the job ends; each load is re-checked.
        await page.wait_until(
            "['SUCCESS', 'FAILURE'].includes("
            "document.querySelector('#job-state').innerText.trim())",
            timeout=90,
        )
        assert await page.text("#job-state") == "SUCCESS"
        assert await page.texts("#tasks .task-state") == ["SUCCESS"] * 4
        assert not await page.exists("#refreshing")
        await page.goto(f"{manager.url}/preheat")
        row = await page.text(f"#jobs tr[data-job-id='{seen['id']}']")
        assert "SUCCESS" in row and "4 / 4 done" in row, row

    in_browser(chromium, scenario)
    job = cluster.client.get(f"/api/v1/jobs/{seen['id']}")
    assert job["state"] == "SUCCESS" and job["args"]["url"] == url
    tasks = job["result"]["tasks"]
    assert [t["url"] for t in tasks[1:]] == [f"{registry.base}/v2/{REPO}/blobs/{d}" for d in layers]
    assert all(t["seed_peer"] == cluster.seed_host for t in tasks)
    # The seed peer holds every layer whole.
    for task, digest in zip(tasks[1:], layers, strict=True):
        status, body = cluster.seed.http_get(task["task_id"])
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    # Only the one job started: the refused form created none.
    assert [j["id"] for j in cluster.client.get("/api/v1/jobs")] == [seen["id"]]
