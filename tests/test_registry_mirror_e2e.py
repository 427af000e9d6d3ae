"""The registry mirror with real clients: Debian's docker-registry on loopback holds an
image this test builds (an OCI layout written here, pushed with skopeo), and skopeo
pulls it through two peers' proxies ([[registry.mirror]] in a registries.conf). The
layers must verify, go P2P, and the second peer's pull must take no blob byte from
the registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.peer_harness import PeerProcess, SchedulerProcess, free_port, peer_config, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("skopeo") is None or shutil.which("docker-registry") is None,
    reason="needs skopeo and docker-registry (scripts/test.sh installs them)",
)

REPO = "d7y/mirror-test"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def write_oci_layout(layout: Path, tag: str, layer_sizes: list[int], seed: int) -> list[str]:
    """An OCI image layout with gzip tar layers of random (incompressible) files;
    returns the layer digests."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    rng = random.Random(seed)
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(f"layer{i}/data.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))
        diff_ids.append("sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
        compressed = gzip.compress(raw.getvalue(), mtime=0)
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _blob(layout, compressed),
                "size": len(compressed),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _blob(layout, config),
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": _blob(layout, manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return [layer["digest"] for layer in layers]


class Registry:
    """Debian's docker-registry on a free loopback port, storage in a temp dir; its
    access log (one line per request) is in ``log_path``."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log_path = work / "registry.log"
        config = work / "registry.yml"
        config.write_text(
            f"version: 0.1\n"
            f"log: {{level: info, accesslog: {{disabled: false}}}}\n"
            f"storage: {{filesystem: {{rootdirectory: {work / 'registry-data'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\n"
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._ready, "docker-registry to answer /v2/")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def blob_gets(self) -> int:
        """GETs of blobs the registry has answered so far (its access log)."""
        return len(re.findall(rf'"GET /v2/{REPO}/blobs/sha256:', self.log_path.read_text()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def skopeo(policy: Path, *args: str, registries_conf: Path | None = None) -> None:
    command = ["skopeo", "--policy", str(policy)]
    if registries_conf is not None:
        command += ["--registries-conf", str(registries_conf)]
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr


def mirror_conf(path: Path, registry: Registry, proxy_port: int) -> Path:
    path.write_text(
        f'[[registry]]\nprefix = "127.0.0.1:{registry.port}"\n'
        f'location = "127.0.0.1:{registry.port}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "127.0.0.1:{proxy_port}"\ninsecure = true\n'
    )
    return path


def pulled_layers(layout: Path) -> list[str]:
    """The layer digests of the image in an OCI layout, each blob checked against its
    name."""
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]

    def blob(digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    manifest = json.loads(blob(manifest_digest))
    blob(manifest["config"]["digest"])
    return [blob(layer["digest"]) and layer["digest"] for layer in manifest["layers"]]


def test_skopeo_pulls_through_the_mirror_p2p(tmp_path):
    policy = tmp_path / "policy.json"  # skopeo's signature policy: accept anything
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    tag = f"v{random.randrange(1 << 30)}"
    layers = write_oci_layout(tmp_path / "image", tag, [5 << 20, 300_000], seed=3)
    registry = Registry(tmp_path)
    scheduler = None
    peers: list[PeerProcess] = []
    try:
        skopeo(
            policy, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'image'}:{tag}",
            f"docker://127.0.0.1:{registry.port}/{REPO}:{tag}",
        )  # fmt: skip
        scheduler = SchedulerProcess(tmp_path).start()
        mirror = {"registry_mirror": {"addr": f"http://127.0.0.1:{registry.port}"}}
        for name in ("peer-a", "peer-b"):
            config = peer_config(scheduler, name, proxy=mirror)
            peers.append(PeerProcess(tmp_path, name, **config).start())
        a, b = peers
        before = registry.blob_gets()
        image = f"docker://127.0.0.1:{registry.port}/{REPO}:{tag}"

        conf = mirror_conf(tmp_path / "a.conf", registry, a.proxy_port)
        skopeo(policy, "copy", image, f"oci:{tmp_path / 'out-a'}:{tag}", registries_conf=conf)
        assert pulled_layers(tmp_path / "out-a") == layers
        p2p = a.metrics()['d7y_proxy_requests_total{route="p2p"}']
        assert p2p >= len(layers) + 1  # the layers and the config blob
        assert registry.blob_gets() > before  # peer A fetched them (back to source)
        status, listed = a.api("GET", "/v1/tasks")
        assert status == 200
        assert sum(t["state"] == "succeeded" for t in listed["tasks"]) >= len(layers) + 1

        # Peer B pulls the same image: every blob from peer A, none from the registry.
        after_a = registry.blob_gets()
        uploaded = a.metrics().get("d7y_peer_upload_bytes_total", 0.0)
        conf = mirror_conf(tmp_path / "b.conf", registry, b.proxy_port)
        skopeo(policy, "copy", image, f"oci:{tmp_path / 'out-b'}:{tag}", registries_conf=conf)
        assert pulled_layers(tmp_path / "out-b") == layers
        assert registry.blob_gets() == after_a, registry.log_path.read_text()[-3000:]
        assert b.metrics()['d7y_proxy_requests_total{route="p2p"}'] >= len(layers) + 1
        assert b.metrics().get("d7y_peer_download_origin_bytes_total", 0.0) == 0
        assert a.metrics().get("d7y_peer_upload_bytes_total", 0.0) - uploaded >= 5 << 20
    finally:
        for process in peers:
            process.stop()
        if scheduler is not None:
            scheduler.stop()
        registry.stop()


@pytest.mark.skipif(
    shutil.which("containerd") is None or shutil.which("ctr") is None,
    reason="needs containerd (scripts/test.sh installs it)",
)
def test_ctr_pulls_through_hosts_toml_written_by_d7y_init(tmp_path):
    """A private containerd (its own root, state and sockets) pulls with the hosts dir
    `d7y init containerd` wrote: the layers go through the proxy P2P and verify."""
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    tag = f"c{random.randrange(1 << 30)}"
    layers = write_oci_layout(tmp_path / "image", tag, [5 << 20, 200_000], seed=4)
    registry = Registry(tmp_path)
    sockets = Path(tempfile.mkdtemp(prefix="d7y-ctr-", dir="/tmp"))  # short socket paths
    containerd = None
    try:
        skopeo(
            policy, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'image'}:{tag}",
            f"docker://127.0.0.1:{registry.port}/{REPO}:{tag}",
        )  # fmt: skip
        with PeerProcess(tmp_path, "peer") as peer:
            hosts = tmp_path / "certs.d"
            init = subprocess.run(
                [sys.executable, "-m", "d7y.daemons.cli", "init", "containerd",
                 "--hosts-dir", str(hosts), "--registry", f"http://127.0.0.1:{registry.port}",
                 "--proxy", f"127.0.0.1:{peer.proxy_port}"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert init.returncode == 0, init.stderr
            assert (hosts / f"127.0.0.1:{registry.port}" / "hosts.toml").exists()
            address = sockets / "containerd.sock"
            config = tmp_path / "containerd.toml"
            config.write_text(
                f'version = 2\nroot = "{tmp_path / "ctr-root"}"\n'
                f'state = "{sockets / "state"}"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{address}"\n'
                f'[ttrpc]\n  address = "{sockets / "ttrpc.sock"}"\n'
                f'[debug]\n  address = "{sockets / "debug.sock"}"\n'
            )
            with open(tmp_path / "containerd.log", "wb") as log:
                containerd = subprocess.Popen(
                    ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            ctr = ["ctr", "--address", str(address), "--namespace", "d7y-test"]

            def answers() -> bool:
                assert containerd.poll() is None, (tmp_path / "containerd.log").read_text()
                return subprocess.run([*ctr, "version"], capture_output=True).returncode == 0

            wait_for(answers, "containerd to answer")
            pull = subprocess.run(
                [*ctr, "images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native",
                 f"127.0.0.1:{registry.port}/{REPO}:{tag}"],
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert pull.returncode == 0, pull.stdout + pull.stderr
            store = tmp_path / "ctr-root" / "io.containerd.content.v1.content" / "blobs" / "sha256"
            for digest in layers:
                data = (store / digest.split(":", 1)[1]).read_bytes()
                assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
            metrics = peer.metrics()
            assert metrics['d7y_proxy_requests_total{route="p2p"}'] >= len(layers) + 1
            assert metrics["d7y_peer_download_origin_bytes_total"] >= 5 << 20
    finally:
        if containerd is not None:
            containerd.terminate()
            containerd.wait(20)
        registry.stop()
        shutil.rmtree(sockets, ignore_errors=True)
