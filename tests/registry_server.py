"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) run as
a subprocess with its own config, on a free loopback port, storing into a temp dir.

``auth`` picks how the registry guards its API:

- ``None``: anonymous;
- ``"basic"``: an htpasswd file (user ``REGISTRY_USER``), answered with
  ``WWW-Authenticate: Basic``;
- ``"token"``: the registry's ``silly`` access controller, which sends the real token
  challenge (``Bearer realm=...,service=...,scope=repository:<repo>:pull``) and then
  accepts any Authorization header; the realm is a :class:`TokenService` here, which
  records what it was asked and hands out a token.

:meth:`Registry.push_blob` and :meth:`Registry.push_manifest` use the registry's upload
API (POST an upload, PUT it with the digest; PUT a manifest), so the blobs the tests
fetch went through the real registry.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from d7y.daemons.procman import ServiceProcess
from tests.peer_harness import free_port

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
REGISTRY_USER = ("puller", "s3cret-pass")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class TokenService:
    """A token endpoint (the ``realm``): records each request's query and Authorization
    header, answers ``{"token": ..., "expires_in": 300}``; with ``require`` set, only
    to that Basic user (401 otherwise); with ``padding``, the answer carries that many
    bytes more; with ``split``, its first bytes come 0.2 s before the rest."""

    def __init__(
        self,
        require: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        padding: int = 0,
        split: bool = False,
    ) -> None:
        self.port = free_port()
        self.realm = f"http://{host}:{self.port}/token"
        self.requests: list[tuple[dict[str, str], str]] = []
        self.require = require
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                authorization = self.headers.get("Authorization", "")
                service.requests.append((query, authorization))
                if service.require is not None:
                    wanted = (
                        "Basic " + base64.b64encode(":".join(service.require).encode()).decode()
                    )
                    if authorization != wanted:
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                answer = {"token": f"token-{len(service.requests)}", "expires_in": 300}
                if padding:  # a hostile or broken service: an answer of ``padding`` bytes
                    answer["padding"] = "x" * padding
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if split:  # the answer in two parts, as a slow network delivers it
                    self.wfile.write(body[:10])
                    self.wfile.flush()
                    time.sleep(0.2)  # a fault injected, not a wait for anything
                self.wfile.write(body[10:] if split else body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Registry:
    def __init__(self, workdir: Path, *, auth: str | None = None, token_realm: str = "") -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.host}"
        self.auth = auth
        self.log_path = self.workdir / "registry.log"
        config: dict = {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "d7y-tests"},
        }
        if auth == "basic":
            import bcrypt

            user, password = REGISTRY_USER
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
            (self.workdir / "htpasswd").write_text(f"{user}:{hashed}\n")
            config["auth"] = {
                "htpasswd": {"realm": "d7y-tests", "path": str(self.workdir / "htpasswd")}
            }
        elif auth == "token":
            config["auth"] = {"silly": {"realm": token_realm, "service": "d7y-test-registry"}}
        self.config_path = self.workdir / "registry.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.service: ServiceProcess | None = None

    def _authorization(self) -> dict[str, str]:
        if self.auth == "basic":
            pair = ":".join(REGISTRY_USER).encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if self.auth == "token":
            return {"Authorization": "Bearer pusher"}  # silly takes any
        return {}

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/v2/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 401 when auth is on: it is serving
        except OSError:
            return False

    def start(self) -> Registry:
        self.service = ServiceProcess(
            "docker-registry",
            [REGISTRY_BINARY, "serve", str(self.config_path)],
            log_path=self.log_path,
            ready=self._answers,
        ).start()
        return self

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith("http") else f"{self.base}{path}"
        request = urllib.request.Request(
            url, data=body, method=method, headers={**self._authorization(), **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` (POST an upload session, PUT it with the digest); its digest."""
        digest = digest_of(data)
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"")
        assert status == 202, (status, body)
        location = urllib.parse.urljoin(self.base, headers["Location"])
        separator = "&" if "?" in location else "?"
        status, _, body = self.request(
            "PUT",
            f"{location}{separator}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        assert status == 201, (status, body)
        return digest

    def push_manifest(self, repo: str, reference: str, manifest: dict, media_type: str) -> str:
        body = json.dumps(manifest).encode()
        status, _, answer = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body, {"Content-Type": media_type}
        )
        assert status == 201, (status, answer)
        return digest_of(body)

    def push_artifact(self, repo: str, tag: str, layers: list[bytes]) -> tuple[str, list[str]]:
        """An OCI image manifest with ``layers`` (and an empty config); (manifest digest,
        layer digests)."""
        config = b"{}"
        config_digest = self.push_blob(repo, config)
        digests = [self.push_blob(repo, layer) for layer in layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest,
                    "size": len(layer),
                }
                for digest, layer in zip(digests, layers, strict=True)
            ],
        }
        return self.push_manifest(repo, tag, manifest, OCI_MANIFEST), digests

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=10)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
