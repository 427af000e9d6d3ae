"""The ``s3`` source: ``s3://bucket/key`` on Amazon S3 or an S3-compatible store.

Requests are plain HTTPS (or HTTP, for a local endpoint) made by
:class:`~d7y.daemons.sources.http.OriginClient` and signed here with AWS Signature
Version 4 (hashlib and hmac; no SDK): the probe is a ``HEAD`` (length, ETag as the
validator, Last-Modified), pieces are ranged ``GET``s checked against the probe's ETag, so
an object overwritten mid-download is detected and never mixed.

The key is the literal text after ``s3://bucket/`` (as the AWS CLI reads it: no
percent-decoding), so any key can be named. Settings come, first match wins, from:

- credentials: ``source.s3.access_key_id`` / ``secret_access_key`` / ``session_token``;
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``; the profile in
  the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, ``~/.aws/credentials``),
  then in the shared config file (``AWS_CONFIG_FILE``, ``~/.aws/config``). The profile is
  ``source.s3.profile``, ``AWS_PROFILE``, else ``default``. ``source.s3.anonymous``
  sends unsigned requests (public buckets).
- region: ``source.s3.region``; ``AWS_REGION``; ``AWS_DEFAULT_REGION``; the profile's
  ``region``; else ``us-east-1``.
- endpoint: ``source.s3.endpoint``; ``AWS_ENDPOINT_URL_S3``; ``AWS_ENDPOINT_URL``; the
  profile's ``endpoint_url``; else ``https://s3.<region>.amazonaws.com``.

They are read when a download probes its object, so changed credentials apply to the
next download without a restart.
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime
import hashlib
import hmac
import os
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from d7y.daemons.config import field
from d7y.daemons.sources.base import HeadersLike, SourceError, SourceInfo
from d7y.daemons.sources.http import OriginClient, OriginStream, read_up_to

if TYPE_CHECKING:
    from d7y.daemons.sources import SourceSettings
    from d7y.daemons.sources.policy import SourcePolicy

__all__ = ["Credentials", "S3Config", "S3Location", "S3Source", "parse_s3_url", "sign_v4"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_ERROR_BODY_LIMIT = 64 * 1024


@dataclasses.dataclass
class S3Config:
    """``source.s3.*``: each key, when set, wins over the AWS environment and files."""

    endpoint: str = field(
        "",
        "S3 endpoint URL, e.g. http://127.0.0.1:9000 for an S3-compatible store; empty: "
        "AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url, else "
        "https://s3.<region>.amazonaws.com",
    )
    region: str = field(
        "",
        "region requests are signed for; empty: AWS_REGION, AWS_DEFAULT_REGION, the "
        "profile's region in ~/.aws/config, else us-east-1",
    )
    access_key_id: str = field(
        "",
        "access key ID; empty: AWS_ACCESS_KEY_ID, else the profile in ~/.aws/credentials "
        "(AWS_SHARED_CREDENTIALS_FILE) or ~/.aws/config (AWS_CONFIG_FILE)",
    )
    secret_access_key: str = field(
        "", "secret access key (with access_key_id); empty: AWS_SECRET_ACCESS_KEY or the profile"
    )
    session_token: str = field(
        "", "session token of temporary credentials; empty: AWS_SESSION_TOKEN or the profile"
    )
    profile: str = field("", "profile of the shared AWS files; empty: AWS_PROFILE, else 'default'")
    anonymous: bool = field(False, "send unsigned requests (public buckets): no credentials")
    addressing_style: Literal["auto", "path", "virtual"] = field(
        "auto",
        "path: <endpoint>/<bucket>/<key>; virtual: <bucket>.<endpoint host>/<key>; auto: "
        "virtual on AWS's own endpoints for bucket names without dots, else path",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""
    #: Where they came from, for messages (never the secret itself).
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket/key`` -> bucket and key; a ``bad_input`` SourceError that names the
    problem for anything else."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "s3" or not sep:
        raise SourceError(
            f"{url!r} is not an S3 URL: write s3://bucket/key", url=url, bad_input=True
        )
    bucket, slash, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket or _IP_LIKE.match(bucket):
        raise SourceError(
            f"invalid S3 bucket name {bucket!r} in {url}: a bucket name is 3-63 lowercase "
            f"letters, digits, '.' and '-', starts and ends with a letter or digit and is "
            f"not an IP address (e.g. s3://my-bucket/path/to/key)",
            url=url,
            bad_input=True,
        )
    if not slash or not key:
        raise SourceError(
            f"S3 URL {url} names no object key: write s3://{bucket}/path/to/key",
            url=url,
            bad_input=True,
        )
    return S3Location(bucket, key)


# -- settings: config keys, environment, shared files -----------------------------------


def _shared_files(env: Mapping[str, str], home: Path) -> tuple[Path, Path]:
    credentials = env.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / ".aws" / "credentials")
    config = env.get("AWS_CONFIG_FILE") or str(home / ".aws" / "config")
    return Path(credentials).expanduser(), Path(config).expanduser()


def _profile_section(path: Path, profile: str, *, config_file: bool) -> dict[str, str]:
    """The profile's keys in one shared file ({} when the file or profile is absent).
    The config file names sections ``[profile NAME]`` except ``[default]``."""
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text(), source=str(path))
    except FileNotFoundError:
        return {}
    except (OSError, configparser.Error) as exc:
        raise SourceError(
            f"cannot read the AWS shared file {str(path)!r}: {exc}; fix or remove it",
            url="",
        ) from None
    names = [profile] if not config_file or profile == "default" else [f"profile {profile}"]
    for name in names:
        if parser.has_section(name):
            return {k.lower(): v.strip() for k, v in parser.items(name)}
    return {}


@dataclasses.dataclass(frozen=True, slots=True)
class S3Settings:
    """Resolved settings for one download: endpoint, region and credentials (None when
    anonymous)."""

    endpoint: URL
    region: str
    credentials: Credentials | None
    virtual_host: bool


def resolve_settings(
    config: S3Config, url: str, *, env: Mapping[str, str] | None = None, home: Path | None = None
) -> S3Settings:
    """Apply the precedence in the module docstring. A SourceError names what is
    missing or wrong and where to set it."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    profile = config.profile or env.get("AWS_PROFILE") or "default"
    credentials_file, config_file = _shared_files(env, home)
    in_credentials = _profile_section(credentials_file, profile, config_file=False)
    in_config = _profile_section(config_file, profile, config_file=True)

    region = (
        config.region
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or in_config.get("region")
        or "us-east-1"
    )
    endpoint_text = (
        config.endpoint
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
        or in_config.get("endpoint_url")
        or f"https://s3.{region}.amazonaws.com"
    )
    try:
        endpoint = URL(endpoint_text)
    except ValueError:
        endpoint = URL()
    if endpoint.scheme not in ("http", "https") or not endpoint.host:
        raise SourceError(
            f"S3 endpoint {endpoint_text!r} is not an http(s) URL: set source.s3.endpoint "
            f"or AWS_ENDPOINT_URL to e.g. https://s3.{region}.amazonaws.com or "
            f"http://127.0.0.1:9000",
            url=url,
        )
    aws_endpoint = endpoint.host.endswith(".amazonaws.com")
    bucket = url.partition("://")[2].partition("/")[0]
    style = config.addressing_style
    virtual = style == "virtual" or (style == "auto" and aws_endpoint and "." not in bucket)

    credentials: Credentials | None = None
    if not config.anonymous:
        credentials = _resolve_credentials(
            config, env, profile, (credentials_file, in_credentials), (config_file, in_config), url
        )
    return S3Settings(endpoint, region, credentials, virtual)


def _resolve_credentials(
    config: S3Config,
    env: Mapping[str, str],
    profile: str,
    credentials_file: tuple[Path, dict[str, str]],
    config_file: tuple[Path, dict[str, str]],
    url: str,
) -> Credentials:
    candidates = [
        (
            "source.s3.access_key_id / secret_access_key",
            config.access_key_id,
            config.secret_access_key,
            config.session_token,
        ),
        (
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            env.get("AWS_ACCESS_KEY_ID", ""),
            env.get("AWS_SECRET_ACCESS_KEY", ""),
            env.get("AWS_SESSION_TOKEN", ""),
        ),
    ]
    for path, keys in (credentials_file, config_file):
        candidates.append(
            (
                f"profile {profile!r} of {str(path)!r}",
                keys.get("aws_access_key_id", ""),
                keys.get("aws_secret_access_key", ""),
                keys.get("aws_session_token", ""),
            )
        )
    for where, key_id, secret, token in candidates:
        if key_id and secret:
            return Credentials(key_id, secret, token, where)
        if key_id or secret:
            missing = "secret access key" if key_id else "access key ID"
            raise SourceError(
                f"incomplete AWS credentials for {url}: {where} sets one of the pair but the "
                f"{missing} is missing; set both",
                url=url,
            )
    _missing_credentials(url, profile, credentials_file[0])


def _missing_credentials(url: str, profile: str, credentials_file: Path) -> NoReturn:
    raise SourceError(
        f"no AWS credentials to fetch {url}: set AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY in dfdaemon's environment, add profile {profile!r} to "
        f"{str(credentials_file)!r} (AWS_PROFILE selects another), set "
        f"source.s3.access_key_id and source.s3.secret_access_key, or set "
        f"source.s3.anonymous: true for a public bucket",
        url=url,
    )


# -- Signature Version 4 ----------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_v4(
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    credentials: Credentials,
    region: str,
    *,
    when: datetime.datetime | None = None,
    service: str = "s3",
) -> None:
    """Sign a request with no body in place: set Host, X-Amz-Date,
    X-Amz-Content-Sha256, X-Amz-Security-Token (temporary credentials) and
    Authorization. Signed: those headers (and any other x-amz-* header the user sent);
    Range and the conditionals stay unsigned, which S3 allows. Every request, retries
    included, is signed afresh (the client's authorizer runs per request)."""
    when = when or datetime.datetime.now(datetime.UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    host = url.raw_host or ""
    if url.explicit_port and not url.is_default_port():
        host = f"{host}:{url.port}"
    headers["Host"] = host
    headers["X-Amz-Date"] = stamp
    headers["X-Amz-Content-Sha256"] = EMPTY_SHA256
    if credentials.session_token:
        headers["X-Amz-Security-Token"] = credentials.session_token
    signed = sorted(
        name.lower()
        for name in headers
        if name.lower() == "host" or name.lower().startswith("x-amz-")
    )
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed)
    query = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in url.query.items())
    canonical_request = "\n".join(
        [
            method,
            url.raw_path or "/",
            "&".join(f"{k}={v}" for k, v in query),
            canonical_headers,
            ";".join(signed),
            EMPTY_SHA256,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            stamp,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{credentials.secret_access_key}".encode(), day), region), service),
        "aws4_request",
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}"
    )


# -- the source -------------------------------------------------------------------------


class _Signer:
    """The Authorizer of an S3 source's client: signs every request with the settings
    its download resolved (keyed by endpoint host, so two endpoints never share)."""

    def __init__(self) -> None:
        self.settings: dict[str, S3Settings] = {}

    async def authorize(self, method: str, url: str, headers: CIMultiDict[str]) -> None:
        target = URL(url)
        settings = self.settings.get(target.host or "")
        if settings is not None and settings.credentials is not None:
            sign_v4(method, target, headers, settings.credentials, settings.region)

    async def challenge(self, url: str, resp: aiohttp.ClientResponse) -> bool:
        return False  # a signature S3 refuses is refused again: report it


class S3Source:
    """The source for ``s3://bucket/key`` URLs."""

    schemes = ("s3",)

    def __init__(
        self, settings: SourceSettings | None = None, *, policy: SourcePolicy | None = None
    ) -> None:
        self.config = settings.s3 if settings is not None else S3Config()
        self.policy = policy
        self._signer = _Signer()
        self.client = OriginClient.for_settings(
            settings, policy=policy, authorizer=self._signer, error_reader=self._read_error
        )
        # s3:// URL -> its HTTP URL, resolved by the probe and reused for the pieces;
        # and back, for messages. Bounded: see _http_url.
        self._targets: dict[str, str] = {}
        self._names: dict[str, str] = {}

    @property
    def bytes_received(self) -> int:
        return self.client.bytes_received

    @classmethod
    def check_url(cls, url: str) -> None:
        parse_s3_url(url)

    def _http_url(self, url: str, *, resolve: bool = False) -> str:
        """The HTTP URL of ``url``'s object: as the probe resolved it, or (``resolve``,
        or not probed yet) from the settings as they are now."""
        if not resolve and url in self._targets:
            return self._targets[url]
        location = parse_s3_url(url)
        settings = resolve_settings(self.config, url)
        key = quote(location.key, safe="/-_.~")
        endpoint = settings.endpoint
        base = str(endpoint).rstrip("/")
        if settings.virtual_host:
            host = f"{location.bucket}.{endpoint.raw_host}"
            target = str(endpoint.with_host(host)).rstrip("/") + f"/{key}"
        else:
            target = f"{base}/{location.bucket}/{key}"
        self._signer.settings[URL(target).host or ""] = settings
        if len(self._names) > 4096:  # old downloads' entries; a new probe makes them again
            self._names.clear()
            self._targets.clear()
        self._names[target] = location.url
        self._targets[url] = target
        return target

    async def probe(self, url: str, headers: HeadersLike | None = None) -> SourceInfo:
        """HEAD the object: its length, ETag and Last-Modified. A HEAD answer has no
        body, so a failed one is asked again as a one-byte GET to read S3's error code."""
        target = self._http_url(url, resolve=True)
        request_headers = self.client.headers(headers)

        async def attempt() -> SourceInfo:
            async with self.client.request(target, request_headers.copy(), method="HEAD") as resp:
                if resp.status == 200:
                    return SourceInfo(
                        url=url,
                        final_url=url,
                        content_length=resp.content_length,
                        supports_range=resp.content_length is not None,
                        etag=resp.headers.get("ETag"),
                        last_modified=resp.headers.get("Last-Modified"),
                        content_type=resp.headers.get("Content-Type"),
                    )
            ranged = request_headers.copy()
            ranged["Range"] = "bytes=0-0"
            async with self.client.request(target, ranged) as again:
                await self.client.check_status(target, again, ok=(200, 206))
            raise SourceError(
                f"S3 answered HEAD {url} with {resp.status} but a GET of it with "
                f"{again.status}: the object is changing, try again",
                url=url,
                status=resp.status,
                retryable=True,
            )

        return await self.client.with_retries(target, attempt)

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
        target = self._http_url(url)
        await self.client.fetch_range(target, headers, offset, length, into, info=info)

    def stream(self, url: str, headers: HeadersLike | None = None) -> OriginStream:
        target = self._http_url(url)
        return self.client.stream(target, headers)

    async def close(self) -> None:
        await self.client.close()

    async def _read_error(self, target: str, resp: aiohttp.ClientResponse) -> SourceError | None:
        """S3's XML error document -> a message that names the object and the fix."""
        url = self._names.get(target, target)
        code, message, region = "", "", resp.headers.get("x-amz-bucket-region", "")
        if resp.method != "HEAD":
            try:
                body = await read_up_to(resp.content, _ERROR_BODY_LIMIT)
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            try:
                root = ElementTree.fromstring(body) if body else None
            except ElementTree.ParseError:
                root = None
            if root is not None:
                code = root.findtext("Code") or ""
                message = root.findtext("Message") or ""
                region = region or root.findtext("Region") or ""
        status = resp.status
        bucket = url.partition("://")[2].partition("/")[0]
        settings = self._signer.settings.get(URL(target).host or "")
        who = (
            f"the credentials from {settings.credentials.origin} (access key "
            f"{settings.credentials.access_key_id})"
            if settings is not None and settings.credentials is not None
            else "anonymous requests"
        )
        said = f" ({code}, {status} from {URL(target).origin()})" if code else f" ({status})"
        if code == "NoSuchKey" or (status == 404 and not code):
            text = f"S3 object {url} does not exist{said}: check the key"
        elif code == "NoSuchBucket":
            text = (
                f"S3 bucket {bucket!r} does not exist{said}: check the bucket name, the "
                f"endpoint and the region"
            )
        elif code in ("AccessDenied", "AllAccessDisabled") or (status == 403 and not code):
            text = (
                f"S3 denied access to {url}{said} for {who}: grant s3:GetObject on the "
                f"object to them, or set other credentials"
            )
        elif code == "InvalidAccessKeyId":
            text = f"S3 does not know the access key of {who}{said}: set valid credentials"
        elif code == "SignatureDoesNotMatch":
            text = (
                f"S3 refused the signature of {who}{said} for {url}: the secret access key "
                f"does not belong to the access key ID"
            )
        elif code in ("ExpiredToken", "TokenRefreshRequired", "InvalidToken"):
            text = f"the session token of {who} was refused{said}: refresh the credentials"
        elif status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
            where = f"region {region!r}" if region else "another region"
            text = (
                f"S3 bucket {bucket!r} is in {where}{said}: set AWS_REGION or "
                f"source.s3.region to it"
            )
        else:
            detail = f": {message}" if message else ""
            text = f"S3 answered {status} {code}{detail} for {url}".replace("  ", " ")
        retryable = status >= 500 or status in (408, 429) or code == "SlowDown"
        return SourceError(text, url=url, status=status, retryable=retryable)
