"""A real nginx as the benchmark's origin, with a private config and its own access log.

nginx runs as one foreground process (``daemon off; master_process off``) so the
benchmark owns exactly one pid, managed by d7y's process manager (``d7y.daemons.procman``)
and ready once it answers a HEAD for the probe file. Every request is logged with its
body bytes, which is how origin egress is counted: the sum of ``$body_bytes_sent`` over
the run (aborted transfers are logged with what they had sent).
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from d7y.daemons.procman import ProcessError, ServiceProcess

LOG_FORMAT = '$remote_addr $status $body_bytes_sent $request_time "$request" "$http_range"'
LOG_LINE = re.compile(r'^(\S+) (\d{3}) (\d+) (\S+) "([^"]*)" "([^"]*)"$')


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def _config(work: Path, root: Path, listen: str, access_log: Path) -> str:
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
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
        listen {listen};
        root {root};
        location / {{ }}
    }}
}}
"""


class NginxOrigin:
    """nginx serving ``root`` on ``listen`` (``ip:port``); ``wrap`` prefixes its argv
    (``ip netns exec NS``) and ``call`` runs a probe where its address is reachable."""

    def __init__(
        self,
        work: Path,
        root: Path,
        listen: str,
        wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
        call: Callable = lambda fn, *args: fn(*args),
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: apt-get install -y nginx")
        self.work = work
        self.listen = listen
        self.access_log = work / "nginx-access.log"
        self.conf = work / "nginx.conf"
        self.conf.write_text(_config(work, root, listen, self.access_log))
        self.call = call
        self.service = ServiceProcess(
            "nginx", wrap([binary, "-c", str(self.conf)]), log_path=work / "nginx.log"
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.listen}/"

    def start(self, probe_file: str, timeout: float = 15.0) -> None:
        url = self.base_url + probe_file
        self.service.ready_check = lambda: self.call(_head_ok, url)
        try:
            self.service.start(timeout)
        except ProcessError:
            self.stop()
            errors = (self.work / "nginx-error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nginx did not serve {url}; its error log:\n{errors}") from None
        self.access_log.write_text("")  # the probe is not part of the run

    def stop(self) -> None:
        self.service.stop()

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


def _head_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=1) as r:
            return r.status == 200
    except OSError:
        return False
