"""Resolve an image's manifest URL into the blob URLs a preheat fetches.

Dragonfly's manager does this for an image preheat (pkg/oci): the URL must be
``<scheme>://<registry>/v2/<repo>/manifests/<ref>``; the manifest is asked for with every
manifest media type in Accept; a manifest list or OCI index is narrowed to one platform
(default linux/amd64) and that manifest fetched by digest; the config blob and every
layer become ``<scheme>://<registry>/v2/<repo>/blobs/<digest>``. A registry that answers
401 with a ``Bearer`` challenge gets a token from the named token service (asked with
the job's username and password as Basic, or anonymously); one with a ``Basic``
challenge gets the username and password. The credential that worked is forwarded to
the seed peers in the tasks' headers, so they can fetch the blobs too.

Every failure is a :class:`ResolveError` whose message names the URL and the cause.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

import aiohttp

from d7y.daemons.manager.schemas import MANIFEST_URL

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX))
DEFAULT_PLATFORM = "linux/amd64"
#: A manifest is small; a registry that sends more is not answering a manifest request.
MAX_MANIFEST = 4 * 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ResolveError(Exception):
    """The image cannot be resolved; the message is for the operator."""


@dataclass
class ResolvedImage:
    #: The config blob first, then the layers in order.
    blob_urls: list[str]
    #: Headers the seed peers send to the registry: the job's own plus the credential
    #: that worked (Authorization), if one was needed.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Reference:
    scheme: str
    registry: str
    repo: str
    ref: str

    def manifest_url(self, ref: str) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repo}/manifests/{ref}"

    def blob_url(self, digest: str) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repo}/blobs/{digest}"


def parse_manifest_url(url: str) -> _Reference:
    match = MANIFEST_URL.match(url)
    if match is None:
        raise ResolveError(
            f"{url!r} is not a manifest URL (<scheme>://<registry>/v2/<repo>/manifests/<ref>)"
        )
    return _Reference(*match.groups())


def _platform_of(entry: dict) -> str:
    platform = entry.get("platform") or {}
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


class ImageResolver:
    """One resolution: the session, the credentials and the Authorization that works."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        username: str = "",
        password: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.username = username
        self.password = password
        self.headers = dict(headers or {})
        self.authorization = next(
            (v for k, v in self.headers.items() if k.lower() == "authorization"), ""
        )

    async def resolve(self, url: str, platform: str = "") -> ResolvedImage:
        reference = parse_manifest_url(url)
        wanted = platform or DEFAULT_PLATFORM
        manifest, media_type = await self._manifest(url)
        if media_type in (OCI_INDEX, DOCKER_LIST) or (
            "manifests" in manifest and "layers" not in manifest
        ):
            entries = manifest.get("manifests") or []
            chosen = self._choose(entries, wanted)
            if chosen is None:
                offered = ", ".join(sorted({_platform_of(e) for e in entries})) or "none"
                raise ResolveError(
                    f"the index at {url} has no manifest for platform {wanted} (it offers: "
                    f"{offered}); set args.platform to one of them"
                )
            child_url = reference.manifest_url(chosen["digest"])
            manifest, media_type = await self._manifest(child_url)
            url = child_url
        config = manifest.get("config") or {}
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not isinstance(config.get("digest"), str):
            raise ResolveError(
                f"the manifest at {url} ({media_type or 'no media type'}) has no config and "
                "layers: only Docker schema 2 and OCI image manifests can be preheated"
            )
        digests = [config["digest"]] + [layer.get("digest", "") for layer in layers]
        if not all(isinstance(d, str) and d.startswith("sha256:") for d in digests):
            raise ResolveError(f"the manifest at {url} names a blob without a sha256 digest")
        headers = dict(self.headers)
        if self.authorization:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Authorization"] = self.authorization
        return ResolvedImage([reference.blob_url(d) for d in digests], headers)

    @staticmethod
    def _choose(entries: list, wanted: str) -> dict | None:
        parts = wanted.split("/")
        os_name, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) > 2 else ""
        for entry in entries:
            platform = entry.get("platform") or {}
            if (
                platform.get("os") == os_name
                and platform.get("architecture") == arch
                and (not variant or platform.get("variant", "") == variant)
                and isinstance(entry.get("digest"), str)
            ):
                return entry
        return None

    async def _manifest(self, url: str) -> tuple[dict, str]:
        status, media_type, body = await self._get(url)
        if status == 404:
            raise ResolveError(f"the registry answered 404 for {url}: no such repository or tag")
        if status != 200:
            raise ResolveError(f"the registry answered {status} for {url}")
        try:
            manifest = json.loads(body)
        except ValueError:
            raise ResolveError(f"the registry's answer for {url} is not JSON") from None
        if not isinstance(manifest, dict):
            raise ResolveError(f"the registry's answer for {url} is not a manifest object")
        return manifest, media_type.split(";")[0].strip() or manifest.get("mediaType", "")

    async def _get(self, url: str) -> tuple[int, str, bytes]:
        """GET with the manifest Accept list; a 401 is answered once with the credential
        its challenge asks for."""
        status, headers, body = await self._request(url)
        if status != 401:
            return status, headers.get("Content-Type", ""), body
        challenge = headers.get("WWW-Authenticate", "")
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "bearer":
            self.authorization = "Bearer " + await self._token(url, dict(
                _CHALLENGE_PARAM.findall(params)
            ))  # fmt: skip
        elif scheme.lower() == "basic":
            if not self.username:
                raise ResolveError(
                    f"the registry needs credentials for {url} (Basic): set args.username "
                    "and args.password"
                )
            self.authorization = self._basic()
        else:
            raise ResolveError(
                f"the registry answered 401 for {url} with an unknown challenge {challenge!r}"
            )
        status, headers, body = await self._request(url)
        if status in (401, 403):
            who = f"user {self.username!r}" if self.username else "anonymous access"
            raise ResolveError(
                f"the registry refused {who} for {url} ({status}): wrong username or password, "
                "or no pull access to the repository"
            )
        return status, headers.get("Content-Type", ""), body

    def _basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def _token(self, url: str, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise ResolveError(
                f"the registry's Bearer challenge for {url} names no usable realm ({realm!r})"
            )
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        headers = {"Authorization": self._basic()} if self.username else {}
        try:
            async with self.session.get(realm, params=query, headers=headers) as response:
                body = await response.content.read(MAX_MANIFEST)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ResolveError(
                f"the token service {realm} for {url} is unreachable: {_cause(exc)}"
            ) from None
        if status in (401, 403):
            who = f"user {self.username!r}" if self.username else "anonymous access"
            raise ResolveError(
                f"the token service {realm} refused {who} for {url} ({status}): wrong "
                "username or password"
            )
        if status != 200:
            raise ResolveError(f"the token service {realm} answered {status} for {url}")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ResolveError(f"the token service {realm} sent no token for {url}")
        return token

    async def _request(self, url: str) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        headers["Accept"] = ACCEPT
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            async with self.session.get(url, headers=headers) as response:
                body = await response.content.read(MAX_MANIFEST + 1)
                if len(body) > MAX_MANIFEST:
                    raise ResolveError(f"the answer for {url} is larger than a manifest can be")
                return response.status, dict(response.headers), body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ResolveError(f"the registry is unreachable for {url}: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) or not text:
        return exc.__class__.__name__ + (f" ({text})" if text else "")
    return text
