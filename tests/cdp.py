"""A small Chrome DevTools Protocol client: headless Chromium as a real process, driven
over its DevTools websocket (aiohttp), for the console's browser tests and its
screenshot script.

- :class:`Chromium` starts ``chromium --headless --remote-debugging-port=0`` on the
  project's process manager; it is ready when it logs its DevTools URL.
- :class:`Browser` is the websocket: commands answered by ID, events delivered to whoever
  said beforehand that they wait for one (so an event cannot slip by between an action
  and the wait for its effect).
- :class:`Page` is one tab in its own browser context (its own cookies): navigate, type,
  click, read the DOM, screenshot. Every wait is on an event (a page load) or a DOM
  condition re-checked at each load, with a timeout only as the failure bound.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from d7y.daemons.procman import ServiceProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
READY_LINE = "DevTools listening on "
#: How long one step (a load, a command) may take before the test fails.
STEP_TIMEOUT = 20.0


class CdpError(RuntimeError):
    """A command the browser refused, or a page that did not do what was waited for."""


class Chromium:
    """The browser process: headless, no sandbox (tests run as root), its own profile."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.profile = self.workdir / "chromium-profile"
        self.log_path = self.workdir / "chromium.log"
        self.process: ServiceProcess | None = None

    def start(self) -> str:
        """Start it; its browser websocket URL."""
        self.profile.mkdir(parents=True, exist_ok=True)
        argv = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--disable-default-apps", "--mute-audio",
            "--hide-scrollbars", "--password-store=basic", "about:blank",
        ]  # fmt: skip
        self.process = ServiceProcess(
            "chromium", argv, log_path=self.log_path, ready_log=READY_LINE
        ).start(timeout=60)
        match = re.search(re.escape(READY_LINE) + r"(ws://\S+)", self.process.log())
        if match is None:
            raise CdpError(f"chromium did not print its DevTools URL:\n{self.process.log_tail()}")
        return match.group(1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=10)


class Browser:
    """The DevTools websocket of the whole browser; pages are attached (flat) sessions."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._waiters: list[tuple[str | None, str, asyncio.Future]] = []
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Browser:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.ws_url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CdpError(f"{data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            session, method = data.get("sessionId"), data.get("method")
            for waiter in list(self._waiters):
                if waiter[0] == session and waiter[1] == method:
                    self._waiters.remove(waiter)
                    if not waiter[2].done():
                        waiter[2].set_result(data.get("params", {}))
        for future in self._pending.values():  # the browser went away
            if not future.done():
                future.set_exception(CdpError("the browser closed its DevTools connection"))

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        assert self._ws is not None
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        try:
            return await asyncio.wait_for(future, STEP_TIMEOUT)
        except TimeoutError:
            raise CdpError(f"{method}: no answer in {STEP_TIMEOUT}s") from None

    def expect(self, method: str, session: str | None = None) -> asyncio.Future:
        """A future of the next ``method`` event (register before causing it)."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((session, method, future))
        return future

    async def new_page(self, width: int = 1280, height: int = 860) -> Page:
        """A tab in a fresh browser context: no cookies shared with other pages."""
        context = (await self.call("Target.createBrowserContext"))["browserContextId"]
        target = (
            await self.call("Target.createTarget", url="about:blank", browserContextId=context)
        )["targetId"]
        session = (await self.call("Target.attachToTarget", targetId=target, flatten=True))[
            "sessionId"
        ]
        page = Page(self, session, context)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        return page


class Page:
    def __init__(self, browser: Browser, session: str, context: str) -> None:
        self.browser, self.session, self.context = browser, session, context

    async def call(self, method: str, **params: Any) -> dict:
        return await self.browser.call(method, self.session, **params)

    async def _loaded(self, future: asyncio.Future, what: str) -> None:
        try:
            await asyncio.wait_for(future, STEP_TIMEOUT)
        except TimeoutError:
            raise CdpError(f"{what}: the page did not load in {STEP_TIMEOUT}s") from None

    async def goto(self, url: str) -> None:
        loaded = self.browser.expect("Page.loadEventFired", self.session)
        answer = await self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise CdpError(f"navigate to {url}: {answer['errorText']}")
        await self._loaded(loaded, f"goto {url}")

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]}: {text}")
        return answer["result"].get("value")

    async def _element(self, selector: str) -> None:
        found = await self.evaluate(f"document.querySelector({json.dumps(selector)}) !== null")
        if not found:
            raise CdpError(f"no element {selector!r} on {await self.url()}")

    async def fill(self, selector: str, text: str) -> None:
        """Focus the input, select what it holds, and type ``text`` over it (real input
        events, as a person typing)."""
        await self._element(selector)
        await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus();"
            " if (e.select) e.select(); })()"
        )
        if text:
            await self.call("Input.insertText", text=text)
        else:
            await self.call("Input.dispatchKeyEvent", type="keyDown", key="Delete", code="Delete",
                            windowsVirtualKeyCode=46)  # fmt: skip
            await self.call("Input.dispatchKeyEvent", type="keyUp", key="Delete", code="Delete",
                            windowsVirtualKeyCode=46)  # fmt: skip

    async def click(self, selector: str) -> None:
        """A mouse click at the middle of the element (scrolled into view)."""
        await self._element(selector)
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def click_and_load(self, selector: str) -> None:
        """Click (a submit button, a link) and wait for the page it leads to."""
        loaded = self.browser.expect("Page.loadEventFired", self.session)
        await self.click(selector)
        await self._loaded(loaded, f"click {selector}")

    async def accept_dialogs(self) -> None:
        """Make every confirm() on later pages answer OK (the delete buttons ask; a
        headless browser has nobody to click the dialog)."""
        await self.call(
            "Page.addScriptToEvaluateOnNewDocument", source="window.confirm = () => true;"
        )

    async def text(self, selector: str) -> str:
        await self._element(selector)
        return await self.evaluate(
            f"document.querySelector({json.dumps(selector)}).innerText.trim()"
        )

    async def texts(self, selector: str) -> list[str]:
        return await self.evaluate(
            f"Array.from(document.querySelectorAll({json.dumps(selector)}))"
            ".map(e => e.innerText.trim())"
        )

    async def exists(self, selector: str) -> bool:
        return await self.evaluate(f"document.querySelector({json.dumps(selector)}) !== null")

    async def url(self) -> str:
        return await self.evaluate("location.href")

    async def wait_until(self, condition: str, timeout: float = 60.0) -> None:
        """Until the JavaScript ``condition`` holds, re-checked at every load of the page
        (a page that refreshes itself while a job runs)."""

        async def poll() -> None:
            while True:
                loaded = self.browser.expect("Page.loadEventFired", self.session)
                if await self.evaluate(condition):
                    loaded.cancel()
                    return
                await loaded

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise CdpError(f"{condition!r} did not hold within {timeout}s") from None

    async def screenshot(self, path: Path, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = await self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
            params["captureBeyondViewport"] = True
        data = (await self.call("Page.captureScreenshot", **params))["data"]
        Path(path).write_bytes(base64.b64decode(data))

    async def close(self) -> None:
        await self.browser.call("Target.disposeBrowserContext", browserContextId=self.context)
