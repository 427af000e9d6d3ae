"""The ``oci`` source: one blob of an OCI (Docker) registry, through the distribution API.

Accepted URLs (``registry`` is ``host`` or ``host:port``; ``repo`` is one or more
lowercase path components, e.g. ``library/ubuntu``):

- ``oci://registry/repo:tag`` (``:latest`` when left out): the manifest the tag names
  is fetched, and it must describe a single-layer artifact (an OCI image manifest or a
  Docker v2 manifest with exactly one entry in ``layers``, or an OCI artifact manifest
  with one entry in ``blobs``); the task is that layer's blob. An image index (several
  platforms) or a manifest of several layers is refused with a message that says to name
  the blob by digest.
- ``oci://registry/repo@sha256:<hex>`` (or ``sha512:``): the blob with that digest; when
  the registry holds no such blob but a manifest with that digest, that manifest's single
  layer, as for a tag.

The download is the blob's bytes, checked against its digest once whole (a mismatch
fails the task: exit 6). The tag is resolved once, by the probe: every piece reads the
blob it named, so a tag moved mid-download changes nothing. ``docker.io`` means Docker
Hub's API host ``registry-1.docker.io``.

Transport: https, except for the hosts in ``source.oci.plain_http`` (loopback by
default, as Docker treats it). Authentication follows the registry's challenge: a 401
with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` makes us ask the
token service (with Basic credentials when we have some) and send the request again
with the token; ``Basic`` is answered with the credentials. Credentials are
``source.oci.username`` / ``password``, else the registry's entry in Docker's
``config.json`` (``$DOCKER_CONFIG`` or ``~/.docker``; the ``auth`` field, not credential
helpers); without any, requests are anonymous.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from d7y.daemons.config import field
from d7y.daemons.sources.base import HeadersLike, SourceError, SourceInfo
from d7y.daemons.sources.http import OriginClient, OriginStream, read_up_to

if TYPE_CHECKING:
    from d7y.daemons.sources import SourceSettings
    from d7y.daemons.sources.policy import SourcePolicy

__all__ = ["OciConfig", "OciReference", "OciSource", "parse_oci_url"]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
_MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.artifact.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_MANIFEST_LIMIT = 4 * 1024 * 1024
_TOKEN_LIMIT = 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclasses.dataclass
class OciConfig:
    """``source.oci.*``."""

    username: str = field(
        "",
        "user for registries that ask for credentials (Basic, or to the token service); "
        "empty: the registry's entry in $DOCKER_CONFIG/config.json or "
        "~/.docker/config.json, else anonymous",
    )
    password: str = field("", "password or access token of source.oci.username")
    plain_http: list[str] = field(
        ["localhost", "127.0.0.1", "::1"],
        "registries (host or host:port) spoken to over plain HTTP instead of HTTPS",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class OciReference:
    registry: str  # host[:port] as written
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def blob_url(self, digest: str) -> str:
        """The ``oci://`` URL of one blob of this repository."""
        return f"oci://{self.registry}/{self.repository}@{digest}"


def parse_oci_url(url: str) -> OciReference:
    """``oci://registry/repo[:tag|@digest]`` -> its parts; a ``bad_input`` SourceError
    naming the problem otherwise."""
    scheme, sep, rest = url.partition("://")

    def bad(problem: str) -> SourceError:
        return SourceError(
            f"invalid OCI URL {url!r}: {problem}; write oci://registry[:port]/repo:tag or "
            f"oci://registry[:port]/repo@sha256:<64 hex digits>",
            url=url,
            bad_input=True,
        )

    if scheme.lower() != "oci" or not sep:
        raise bad("it does not start with oci://")
    registry, slash, path = rest.partition("/")
    if not _HOST.match(registry):
        raise bad(f"{registry!r} is not a registry host[:port]")
    if not slash or not path:
        raise bad("it names no repository")
    tag = digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not _DIGEST.match(digest):
            raise bad(f"{digest!r} is not a digest (sha256:<64 hex> or sha512:<128 hex>)")
    else:
        head, colon, last = path.rpartition(":")
        if colon and "/" not in last:
            path, tag = head, last
            if not _TAG.match(tag):
                raise bad(f"{tag!r} is not a tag (letters, digits, '_', '.', '-'; at most 128)")
    if not _REPO.match(path):
        raise bad(
            f"{path!r} is not a repository name (lowercase letters and digits, separated "
            f"by '.', '_', '__', '-' or '/')"
        )
    return OciReference(registry, path, tag, digest)


def _api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry in ("docker.io", "index.docker.io") else registry


def _docker_config_auth(registry: str, env: Mapping[str, str], home: Path) -> tuple[str, str]:
    """(user, password) of ``registry`` in Docker's config.json, or ("", "")."""
    directory = Path(env.get("DOCKER_CONFIG") or home / ".docker")
    try:
        auths = json.loads((directory / "config.json").read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return "", ""
    names = [registry, f"https://{registry}", f"http://{registry}"]
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        names.append("https://index.docker.io/v1/")
    for name in names:
        entry = auths.get(name) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return user, password
    return "", ""


class _RegistryAuth:
    """The Authorizer of an OCI source's client: answers 401 challenges (Bearer token
    service, or Basic) and adds what it got to the next requests of that registry and
    repository."""

    def __init__(self, config: OciConfig, client_ref: list[OriginClient]) -> None:
        self.config = config
        self._client_ref = client_ref
        # (host, scope) -> (Authorization value, expiry on the monotonic clock)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._basic: set[str] = set()  # hosts that asked for Basic
        self.token_requests = 0

    def credentials(self, host: str) -> tuple[str, str]:
        if self.config.username:
            return self.config.username, self.config.password
        return _docker_config_auth(host, os.environ, Path.home())

    @staticmethod
    def _scope(url: URL) -> str | None:
        parts = url.path.split("/")
        # /v2/<repo...>/(blobs|manifests)/<reference>
        if len(parts) < 5 or parts[1] != "v2" or parts[-2] not in ("blobs", "manifests"):
            return None
        return f"repository:{'/'.join(parts[2:-2])}:pull"

    def _basic_value(self, host: str) -> str | None:
        user, password = self.credentials(host)
        if not user and not password:
            return None
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def authorize(self, method: str, url: str, headers: CIMultiDict[str]) -> None:
        target = URL(url)
        scope = self._scope(target)
        if scope is None:
            return  # not a registry API request (the token service itself)
        host = target.authority
        token = self._tokens.get((host, scope))
        if token is not None and token[1] > time.monotonic():
            headers["Authorization"] = token[0]
        elif host in self._basic and (basic := self._basic_value(host)) is not None:
            headers["Authorization"] = basic

    async def challenge(self, url: str, resp: aiohttp.ClientResponse) -> bool:
        target = URL(url)
        scope = self._scope(target)
        if scope is None:
            return False
        host = target.authority
        kind, params = _parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if kind == "basic":
            self._basic.add(host)
            return self._basic_value(host) is not None
        if kind != "bearer" or "realm" not in params:
            return False
        token, lifetime = await self._fetch_token(url, host, params, scope)
        self._tokens[(host, scope)] = (f"Bearer {token}", time.monotonic() + lifetime)
        return True

    async def _fetch_token(
        self, url: str, host: str, params: dict[str, str], scope: str
    ) -> tuple[str, float]:
        client = self._client_ref[0]
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        token_url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        headers = client.headers(None, {"Accept": "application/json"})
        basic = self._basic_value(host)
        if basic is not None:
            headers["Authorization"] = basic
        self.token_requests += 1
        async with client.request(token_url, headers) as resp:
            if resp.status != 200:
                who = "the configured credentials" if basic else "anonymous access"
                raise SourceError(
                    f"the token service {URL(realm).origin()} of registry {host} answered "
                    f"{resp.status} to {who} for {scope}: "
                    + (
                        "check source.oci.username and source.oci.password"
                        if basic
                        else "set source.oci.username and source.oci.password (or docker "
                        "login, for ~/.docker/config.json)"
                    ),
                    url=url,
                    status=resp.status,
                    retryable=resp.status >= 500,
                )
            body = await read_up_to(resp.content, _TOKEN_LIMIT + 1)
        if len(body) > _TOKEN_LIMIT:
            raise SourceError(
                f"the token service {URL(realm).origin()} of registry {host} answered more "
                f"than {_TOKEN_LIMIT} bytes for {scope}: not a token answer",
                url=url,
            )
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise SourceError(
                f"the token service {URL(realm).origin()} of registry {host} sent no token "
                f"for {scope}",
                url=url,
            )
        # Renew a little early: a token that expires between two pieces costs a 401.
        return token, max(1.0, lifetime - 10)


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {realm: ..., service: ...})."""
    kind, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return kind.lower(), params


class OciSource:
    """The source for ``oci://`` URLs (see the module docstring for the forms)."""

    schemes = ("oci",)

    def __init__(
        self, settings: SourceSettings | None = None, *, policy: SourcePolicy | None = None
    ) -> None:
        self.config = settings.oci if settings is not None else OciConfig()
        self.policy = policy
        client_ref: list[OriginClient] = []
        self.auth = _RegistryAuth(self.config, client_ref)
        self.client = OriginClient.for_settings(
            settings, policy=policy, authorizer=self.auth, error_reader=self._read_error
        )
        client_ref.append(self.client)

    @property
    def bytes_received(self) -> int:
        return self.client.bytes_received

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_oci_url(url)

    def _api_url(self, ref: OciReference, kind: str, reference: str) -> str:
        host = _api_host(ref.registry)
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        plain = host in self.config.plain_http or bare.strip("[]") in self.config.plain_http
        scheme = "http" if plain else "https"
        return f"{scheme}://{host}/v2/{ref.repository}/{kind}/{reference}"

    async def probe(self, url: str, headers: HeadersLike | None = None) -> SourceInfo:
        """Resolve ``url`` to one blob and learn its length; the answer's ``final_url``
        names the blob by digest (what every piece then reads) and ``digest`` is that
        digest, which the download checks the whole content against."""
        ref = parse_oci_url(url)
        size: int | None = None
        if ref.digest is not None:
            digest = ref.digest
            blob = await self._probe_blob(url, ref, digest, headers, missing_ok=True)
            if blob is None:  # not a blob: perhaps the digest of a manifest
                try:
                    digest, size = await self._single_layer(url, ref, headers)
                except SourceError as exc:
                    if exc.status != 404:
                        raise
                    raise SourceError(
                        f"registry {ref.registry} has neither a blob nor a manifest "
                        f"{ref.digest} in {ref.repository}",
                        url=url,
                        status=404,
                    ) from None
                blob = await self._probe_blob(url, ref, digest, headers)
        else:
            digest, size = await self._single_layer(url, ref, headers)
            blob = await self._probe_blob(url, ref, digest, headers)
        assert blob is not None  # only the first probe of a digest may find nothing
        if size is not None and blob.content_length is not None and blob.content_length != size:
            raise SourceError(
                f"registry {ref.registry} serves {blob.content_length} bytes for blob {digest} "
                f"of {url}, but the manifest says {size}",
                url=url,
            )
        return dataclasses.replace(blob, url=url, final_url=ref.blob_url(digest), digest=digest)

    async def _probe_blob(
        self,
        url: str,
        ref: OciReference,
        digest: str,
        headers: HeadersLike | None,
        *,
        missing_ok: bool = False,
    ) -> SourceInfo | None:
        target = self._api_url(ref, "blobs", digest)
        try:
            return await self.client.probe(target, headers)
        except SourceError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def _single_layer(
        self, url: str, ref: OciReference, headers: HeadersLike | None
    ) -> tuple[str, int | None]:
        """Fetch the manifest ``ref`` names and return (digest, size) of its one layer."""
        target = self._api_url(ref, "manifests", ref.reference)
        request_headers = self.client.headers(headers, {"Accept": _MANIFEST_TYPES})

        async def attempt() -> bytes:
            async with self.client.request(target, request_headers.copy()) as resp:
                await self.client.check_status(target, resp, ok=(200,))
                body = await read_up_to(resp.content, _MANIFEST_LIMIT + 1)
                if len(body) > _MANIFEST_LIMIT:
                    raise SourceError(
                        f"the manifest of {url} is larger than {_MANIFEST_LIMIT} bytes: not a "
                        f"single-layer artifact",
                        url=url,
                    )
                return body

        body = await self.client.with_retries(target, attempt)
        if ref.digest is not None:
            algorithm, _, expected = ref.reference.partition(":")
            if hashlib.new(algorithm, body).hexdigest() != expected:
                raise SourceError(
                    f"registry {ref.registry} sent a manifest for {url} whose digest is not "
                    f"{ref.reference}",
                    url=url,
                )
        try:
            manifest: Any = json.loads(body)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict):
            raise SourceError(f"registry {ref.registry} sent no JSON manifest for {url}", url=url)
        if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
            count = len(manifest.get("manifests") or [])
            raise SourceError(
                f"{url} is an image index of {count} manifests (several platforms), not a "
                f"single-layer artifact: name one blob with "
                f"oci://{ref.registry}/{ref.repository}@sha256:<digest>",
                url=url,
                bad_input=True,
            )
        layers = manifest.get("layers")
        if layers is None:
            layers = manifest.get("blobs")
        if not isinstance(layers, list) or len(layers) != 1:
            count = len(layers) if isinstance(layers, list) else 0
            raise SourceError(
                f"{url} names a manifest of {count} layers, not a single-layer artifact: name "
                f"the blob to fetch with oci://{ref.registry}/{ref.repository}@sha256:<digest>",
                url=url,
                bad_input=True,
            )
        layer = layers[0]
        digest = layer.get("digest") if isinstance(layer, dict) else None
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise SourceError(
                f"the manifest of {url} names its layer with no usable digest ({digest!r})",
                url=url,
            )
        size = layer.get("size")
        return digest, size if isinstance(size, int) and size >= 0 else None

    def _blob_target(self, url: str) -> str:
        ref = parse_oci_url(url)
        if ref.digest is None:
            raise SourceError(
                f"{url} does not name a blob by digest; probe it first", url=url, bad_input=True
            )
        return self._api_url(ref, "blobs", ref.digest)

    async def fetch_range(
        self,
        url: str,
        headers: HeadersLike | None,
        offset: int,
        length: int,
        into: memoryview | bytearray,
        *,
        info: SourceInfo | None = None,
    ) -> None:
        """Read a range of the blob ``url`` names by digest (the probe's final_url)."""
        await self.client.fetch_range(
            self._blob_target(url), headers, offset, length, into, info=info
        )

    def stream(self, url: str, headers: HeadersLike | None = None) -> OriginStream:
        return self.client.stream(self._blob_target(url), headers)

    async def close(self) -> None:
        await self.client.close()

    async def _read_error(self, target: str, resp: aiohttp.ClientResponse) -> SourceError | None:
        """The registry's JSON errors -> a message naming the repository and the fix."""
        code, message = "", ""
        if resp.method != "HEAD":
            try:
                body = await read_up_to(resp.content, 64 * 1024)
                errors = json.loads(body).get("errors") or []
                if errors and isinstance(errors[0], dict):
                    code = str(errors[0].get("code") or "")
                    message = str(errors[0].get("message") or "")
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                pass
        status = resp.status
        api = URL(target)
        parts = api.path.split("/")
        repo = "/".join(parts[2:-2]) if len(parts) >= 5 else api.path
        what = f"{parts[-2][:-1]} {parts[-1]}" if len(parts) >= 5 else target
        registry = api.authority
        said = f" ({code or status})"
        if status in (401, 403):
            user, _ = self.auth.credentials(registry)
            who = f"user {user!r}" if user else "anonymous access"
            fix = (
                "check source.oci.username / source.oci.password"
                if user
                else "set source.oci.username and source.oci.password (or docker login, for "
                "~/.docker/config.json)"
            )
            text = f"registry {registry} refused {who} to {repo}{said}: {fix}"
        elif status == 404:
            if code == "NAME_UNKNOWN":
                text = f"registry {registry} has no repository {repo!r}{said}"
            else:
                text = f"registry {registry} has no {what} in {repo}{said}"
        else:
            detail = f": {message}" if message else ""
            text = f"registry {registry} answered {status} {code}{detail} for {what} in {repo}"
        retryable = status >= 500 or status in (408, 429)
        return SourceError(text, url=target, status=status, retryable=retryable)
