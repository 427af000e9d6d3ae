"""``d7y init containerd | podman | docker``: point a container runtime at dfdaemon's
registry mirror, as Dragonfly's dfinit does.

- containerd: one ``hosts.toml`` per registry under the registry ``config_path`` (read
  from containerd's config.toml, else /etc/containerd/certs.d): ``server`` is the
  registry, the mirror is ``[host."http://127.0.0.1:4001"]`` with capabilities pull and
  resolve and the header ``X-Dragonfly-Registry`` naming the registry; with
  ``--all-registries`` also ``_default/hosts.toml`` (the proxy then learns the registry
  from the ``ns`` query parameter containerd adds).
- podman / cri-o / skopeo: a drop-in registries.conf with a ``[[registry.mirror]]``
  entry. Their mirror requests name no registry, so the dfdaemon's
  ``proxy.registry_mirror.addr`` must be that registry (the command prints the setting).
- docker: ``registry-mirrors`` in daemon.json (docker mirrors Docker Hub only).

Every file is written whole to a temporary name and renamed; a file that changes is
first copied to ``<file>.d7y-backup``; running twice changes nothing the second time;
``--dry-run`` prints the diff and writes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PROXY = "127.0.0.1:4001"
CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
CONTAINERD_HOSTS_DIR = Path("/etc/containerd/certs.d")
PODMAN_DROP_IN = Path("/etc/containers/registries.conf.d/50-d7y.conf")
DOCKER_CONFIG = Path("/etc/docker/daemon.json")
DOCKER_HUB = "https://registry-1.docker.io"


class InitError(ValueError):
    """Bad input or an unreadable config; the message names it and the fix."""


def registry_url(text: str) -> str:
    """``https://r.example``, ``http://127.0.0.1:5000`` or a bare host (https)."""
    text = text.strip().rstrip("/")
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        raise InitError(f"registry {text!r} is not a registry address: give e.g. https://r.example")
    return f"{parts.scheme}://{parts.netloc}"


def _host_dir_name(registry: str) -> str:
    netloc = urlsplit(registry).netloc
    return "docker.io" if netloc in ("index.docker.io", "registry-1.docker.io") else netloc


def containerd_hosts_dir(config: Path) -> Path:
    """The registry config_path containerd's config sets, else the default."""
    if not config.exists():
        return CONTAINERD_HOSTS_DIR
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InitError(f"cannot read containerd config {str(config)!r}: {exc}") from None
    cri = data.get("plugins", {}).get("io.containerd.grpc.v1.cri", {})
    path = cri.get("registry", {}).get("config_path", "")
    return Path(path.split(":")[0]) if path else CONTAINERD_HOSTS_DIR


def containerd_files(
    hosts_dir: Path, registries: list[str], proxy: str, all_registries: bool
) -> dict[Path, str]:
    mirror = f"http://{proxy}"
    files = {}
    for registry in registries:
        files[hosts_dir / _host_dir_name(registry) / "hosts.toml"] = (
            f"# Written by d7y init containerd: pull {registry} through dfdaemon.\n"
            f'server = "{registry}"\n\n'
            f'[host."{mirror}"]\n'
            f'  capabilities = ["pull", "resolve"]\n\n'
            f'[host."{mirror}".header]\n'
            f'  X-Dragonfly-Registry = ["{registry}"]\n'
        )
    if all_registries:
        files[hosts_dir / "_default" / "hosts.toml"] = (
            "# Written by d7y init containerd: every other registry through dfdaemon\n"
            "# (it learns the registry from the ns query parameter).\n"
            f'[host."{mirror}"]\n'
            f'  capabilities = ["pull", "resolve"]\n'
        )
    return files


def podman_files(path: Path, registries: list[str], proxy: str) -> dict[Path, str]:
    text = "# Written by d7y init podman: pull through dfdaemon's registry mirror.\n"
    for registry in registries:
        netloc = urlsplit(registry).netloc
        prefix = _host_dir_name(registry)
        text += (
            f'\n[[registry]]\nprefix = "{prefix}"\nlocation = "{netloc}"\n'
            + ("insecure = true\n" if registry.startswith("http://") else "")
            + f'\n[[registry.mirror]]\nlocation = "{proxy}"\ninsecure = true\n'
        )
    return {path: text}


def docker_files(path: Path, proxy: str) -> dict[Path, str]:
    config: dict = {}
    if path.exists():
        try:
            config = json.loads(path.read_text() or "{}")
        except (OSError, json.JSONDecodeError) as exc:
            raise InitError(f"cannot read docker config {str(path)!r}: {exc}") from None
        if not isinstance(config, dict):
            raise InitError(f"docker config {str(path)!r} is not a JSON object")
    mirrors = [m for m in config.get("registry-mirrors", []) if m != f"http://{proxy}"]
    config["registry-mirrors"] = [f"http://{proxy}", *mirrors]
    return {path: json.dumps(config, indent=2) + "\n"}


def apply(files: dict[Path, str], *, dry_run: bool, out=sys.stdout) -> int:
    """Write each file (backup first, atomic rename), or print the diffs; returns how
    many files change."""
    changed = 0
    for path, text in files.items():
        old = path.read_text() if path.exists() else ""
        if old == text:
            print(f"unchanged: {path}", file=out)
            continue
        changed += 1
        if dry_run:
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(path) if old else "/dev/null",
                tofile=str(path),
            )
            out.write("".join(diff))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if old:
            backup = path.with_name(path.name + ".d7y-backup")
            shutil.copy2(path, backup)
            print(f"backed up {path} to {backup}", file=out)
        tmp = path.with_name(f".{path.name}.d7y-tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        print(f"wrote {path}", file=out)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="d7y init", description="point a container runtime at dfdaemon's registry mirror"
    )
    parser.add_argument("runtime", choices=["containerd", "podman", "docker"])
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        help="registry to pull through dfdaemon (repeatable; default Docker Hub)",
    )
    parser.add_argument("--proxy", default=DEFAULT_PROXY, help="dfdaemon's proxy host:port")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    parser.add_argument(
        "--all-registries", action="store_true", help="containerd: also _default/hosts.toml"
    )
    parser.add_argument("--containerd-config", type=Path, default=CONTAINERD_CONFIG)
    parser.add_argument("--hosts-dir", type=Path, help="containerd hosts dir (config_path)")
    parser.add_argument("--registries-conf", type=Path, default=PODMAN_DROP_IN)
    parser.add_argument("--docker-config", type=Path, default=DOCKER_CONFIG)
    args = parser.parse_args(argv)
    try:
        registries = [registry_url(r) for r in args.registry] or [DOCKER_HUB]
        if args.runtime == "containerd":
            hosts_dir = args.hosts_dir or containerd_hosts_dir(args.containerd_config)
            files = containerd_files(hosts_dir, registries, args.proxy, args.all_registries)
        elif args.runtime == "podman":
            if len(registries) != 1:
                raise InitError(
                    "podman sends mirror requests without the registry's name, so one "
                    "dfdaemon mirrors one registry: give one --registry"
                )
            files = podman_files(args.registries_conf, registries, args.proxy)
        else:
            files = docker_files(args.docker_config, args.proxy)
        apply(files, dry_run=args.dry_run)
    except (InitError, OSError) as exc:
        print(f"d7y init: {exc}", file=sys.stderr)
        return 1
    if args.runtime == "containerd" and args.hosts_dir is None:
        print(
            f"containerd reads these when its config sets the registry config_path to "
            f"{hosts_dir} (ctr: --hosts-dir {hosts_dir})"
        )
    if args.runtime in ("podman", "docker"):
        print(f"dfdaemon config: proxy: {{registry_mirror: {{addr: {registries[0]}}}}}")
    return 0
