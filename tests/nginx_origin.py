"""A real nginx as an origin (tests and benchmarks), with a private config and its own
access log; plain HTTP, or HTTPS with a certificate the caller's own CA signed.

nginx runs as one foreground process (``daemon off; master_process off``) so the
benchmark owns exactly one pid, managed by d7y's process manager (``d7y.daemons.procman``)
and ready once it answers a HEAD for the probe file. Every request is logged with its
body bytes, which is how origin egress is counted: the sum of ``$body_bytes_sent`` over
the run (aborted transfers are logged with what they had sent).
"""

from __future__ import annotations

import re
import shutil
import ssl
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from d7y.daemons.procman import ProcessError, ServiceProcess

# The last field is nginx's connection serial number: requests with the same one came
# over one kept-alive connection.
LOG_FORMAT = (
    '$remote_addr $status $body_bytes_sent $request_time "$request" "$http_range" $connection'
)
LOG_LINE = re.compile(r'^(\S+) (\d{3}) (\d+) (\S+) "([^"]*)" "([^"]*)" (\d+)$')


class LoggedRequest(NamedTuple):
    """One line of the access log."""

    client: str
    status: int
    body_bytes: int
    request: str  # the request line, e.g. "GET /a.bin HTTP/1.1"
    range: str  # the Range header, "-" when absent
    connection: int  # nginx's serial number of the connection it came on


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def _config(work: Path, root: Path, listen: str, access_log: Path, tls_pem: Path | None) -> str:
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
    tls = ""
    if tls_pem is not None:
        # One PEM holds the leaf, its CA and the key: nginx finds each in it.
        tls = f"ssl_certificate {tls_pem}; ssl_certificate_key {tls_pem};"
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '{LOG_FORMAT}';
    access_log {access_log} bench;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {listen}{" ssl" if tls_pem is not None else ""};
        {tls}
        root {root};
        location / {{ }}
    }}
}}
"""


class NginxOrigin:
    """nginx serving ``root`` on ``listen`` (``ip:port``); ``wrap`` prefixes its argv
    (``ip netns exec NS``) and ``call`` runs a probe where its address is reachable.
    ``tls_pem``: serve HTTPS with this PEM (certificate chain and key, e.g.
    :meth:`d7y.daemons.proxy.tls.LeafCertificates.leaf_pem`), ``ca`` the CA file the
    readiness probe trusts."""

    def __init__(
        self,
        work: Path,
        root: Path,
        listen: str,
        wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
        call: Callable = lambda fn, *args: fn(*args),
        *,
        tls_pem: Path | None = None,
        ca: Path | None = None,
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: apt-get install -y nginx")
        self.work = work
        self.listen = listen
        self.access_log = work / "nginx-access.log"
        self.conf = work / "nginx.conf"
        self.conf.write_text(_config(work, root, listen, self.access_log, tls_pem))
        self.call = call
        self.scheme = "https" if tls_pem is not None else "http"
        self.ca = ca
        self.service = ServiceProcess(
            "nginx", wrap([binary, "-c", str(self.conf)]), log_path=work / "nginx.log"
        )

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.listen}/"

    def url(self, name: str) -> str:
        return self.base_url + name

    def start(self, probe_file: str, timeout: float = 15.0) -> None:
        url = self.base_url + probe_file
        self.service.ready_check = lambda: self.call(_head_ok, url, self.ca)
        try:
            self.service.start(timeout)
        except ProcessError:
            self.stop()
            errors = (self.work / "nginx-error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nginx did not serve {url}; its error log:\n{errors}") from None
        self.access_log.write_text("")  # the probe is not part of the run

    def stop(self) -> None:
        self.service.stop()

    def __enter__(self) -> NginxOrigin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def requests(self) -> list[LoggedRequest]:
        """Every logged request since start, in log order."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line)
            if match is not None:
                client, status, sent, _time, request, rng, connection = match.groups()
                out.append(
                    LoggedRequest(client, int(status), int(sent), request, rng, int(connection))
                )
        return out

    def traffic(self) -> tuple[int, int, Counter]:
        """(body bytes sent, requests, body bytes per client address) since start."""
        total = requests = 0
        per_client: Counter = Counter()
        if not self.access_log.exists():
            return 0, 0, per_client
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line)
            if match is None:
                continue
            sent = int(match.group(3))
            total += sent
            requests += 1
            per_client[match.group(1)] += sent
        return total, requests, per_client


def _head_ok(url: str, ca: Path | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=1, context=context) as r:
            return r.status == 200
    except OSError:
        return False
