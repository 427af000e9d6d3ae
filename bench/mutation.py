"""Mutation testing of d7y with cosmic-ray: which small bugs would the tests miss?

    python bench/mutation.py                        # core/ and the daemon modules at risk
    python bench/mutation.py --package core         # core/ only
    python bench/mutation.py --module core/ids.py --module core/pieces.py
    python bench/mutation.py --package daemons --max-mutants 40   # a sample per module
    python bench/mutation.py --list                 # the modules and the tests that judge them
    python bench/mutation.py --package daemons-all --max-mutants 5   # every daemon-side module
    python bench/mutation.py --workdir DIR --retest-survivors ...    # after writing tests

For each module, cosmic-ray (``pip install -r bench/requirements-mutation.txt``) plants
one small bug at a time (a flipped comparison, a changed number, a removed ``break``...)
and runs the tests that cover that module; a mutant is *killed* when they fail (or time
out) and *survives* when they pass. The script prints the score (killed / tested) per
module and per package, and every surviving mutant as a diff, and writes them to
``--report`` (Markdown). Targets (issue 15): core >= 90 % killed, daemons >= 80 %.

It never touches this checkout: the files are copied to ``--workdir`` (a temporary
directory by default) and mutated there. The copy is imported as ``d7y.*`` through a
directory of symlinks (``core/`` -> ``d7y/core`` ...) put first on ``PYTHONPATH``; the
editable install of this checkout stays behind it, so the daemons the end-to-end tests
start (``python -m d7y.daemons.cli``) run the mutated copy too.

A full run is long on 2 cores (each mutant is one pytest run): ``--max-mutants N`` tests
a deterministic sample of N mutants per module (``--sample-seed``), and ``--module``
picks modules. Sessions are kept in the work directory, so running again with the same
``--workdir`` resumes where it stopped. Not part of the default test run (it is not a
pytest file).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import os
import platform
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ext", "daemons", "sim")  # folder -> d7y.<folder> (setup.py)

CORE_UNIT_TESTS = [
    "tests/test_digest.py",
    "tests/test_eviction.py",
    "tests/test_http_range.py",
    "tests/test_ids.py",
    "tests/test_pieces.py",
    "tests/test_states.py",
    "tests/test_protocol.py",
]
SCHEDULING_TESTS = [
    "tests/test_scheduling_evaluator.py",
    "tests/test_scheduling_picker.py",
    "tests/test_scheduling_properties.py",
    "tests/test_scheduling_resource.py",
    "tests/test_scheduling_scheduler.py",
    "tests/test_scheduling_translate.py",
]

P2P = "tests/test_p2p_e2e.py"
#: The P2P end-to-end tests (about 4 minutes all 13 on a busy 2-core machine) narrowed to
#: the ones that run each part of the path: parents chosen, pieces fetched, a corrupt and
#: a killed parent, ordered stdout, tiny tasks.
P2P_PATH = [
    "test_swarm_serves_the_origin_once",
    "test_corrupt_parent_is_caught_and_blocklisted",
    "test_parent_killed_mid_transfer",
    "test_stdout_download_over_p2p_streams_in_order",
    "test_tiny_and_one_piece_tasks_come_from_the_swarm",
]
#: ... and the ones about the scheduler connection: announce, restart, reconnect.
SCHEDULER_PATH = [
    "test_swarm_serves_the_origin_once",
    "test_restarted_scheduler_learns_what_the_seed_already_holds",
    "test_download_that_outlives_its_scheduler_is_announced_to_the_new_one",
    "test_scheduler_answers_a_restored_running_peer_on_its_new_stream",
    "test_scheduler_address_from_the_environment",
    "test_scheduler_survives_bad_frames",
]

#: Every config key's default is pinned by the generated docs/configuration.md.
CONFIG_DOC = "tests/test_peer_units.py::test_configuration_doc_is_current"

#: The tests that judge each module (glob patterns, first match wins; pytest arguments). A module is
#: judged by the tests written for it; unit tests of other modules that happen to run
#: its code are left out so each mutant costs seconds, which makes the score a lower
#: bound (a mutant the whole suite would kill may survive here).
TESTS_FOR: list[tuple[str, list[str]]] = [
    ("core/digest.py", ["tests/test_digest.py"]),
    ("core/eviction.py", ["tests/test_eviction.py"]),
    ("core/http_range.py", ["tests/test_http_range.py"]),
    ("core/ids.py", ["tests/test_ids.py"]),
    ("core/pieces.py", ["tests/test_pieces.py"]),
    ("core/states.py", ["tests/test_states.py", *SCHEDULING_TESTS]),
    ("core/messages.py", ["tests/test_protocol.py"]),
    ("core/protocol.py", ["tests/test_protocol.py"]),
    ("core/scheduling/*", SCHEDULING_TESTS),
    ("core/*", CORE_UNIT_TESTS + SCHEDULING_TESTS),
    # The daemons' tests are end to end (seconds to minutes a run): each module gets the
    # files that exercise it, narrowed with -k where one file covers several servers.
    (
        "daemons/peer/task_manager.py",
        ["tests/test_dfdaemon_e2e.py", "tests/test_peer_units.py", "tests/test_dfget_cli.py"],
    ),
    (
        "daemons/peer/http_upload.py",
        [
            "tests/test_dfdaemon_e2e.py",
            "tests/test_connection_limits_e2e.py",
            "-k",
            "http or garbage or without_range_or_length or stalled_connections_are_closed",
        ],
    ),
    (
        "daemons/peer/task_store.py",
        ["tests/test_task_store.py", "tests/test_stored_integrity_e2e.py"],
    ),
    (
        "daemons/peer/piece_server.py",
        [
            "tests/test_piece_server_e2e.py",
            "tests/test_connection_limits_e2e.py::test_a_subscriber_is_not_idle_while_its_task_runs",
        ],
    ),
    ("daemons/peer/p2p.py", [f"{P2P}::{t}" for t in P2P_PATH]),
    (
        "daemons/scheduler/server.py",
        [
            "tests/test_scheduler_daemon.py",
            "tests/test_scheduler_identity_e2e.py",
            *(f"{P2P}::{t}" for t in SCHEDULER_PATH),
        ],
    ),
    (
        "daemons/peer/api.py",
        [
            "tests/test_peer_units.py",
            "tests/test_dfdaemon_e2e.py",
            "-k",
            "download_request or list_and_delete or local_api or daemon_not_running "
            "or concurrent or digest or stdout or sizes",
        ],
    ),
    ("daemons/peer/config.py", ["tests/test_peer_units.py"]),
    (
        # The daemon wires the rest: its GC, its seed triggers (a P2P test), its lifecycle.
        "daemons/peer/daemon.py",
        [
            "tests/test_service_lifecycle.py",
            "tests/test_dfdaemon_e2e.py",
            f"{P2P}::test_swarm_serves_the_origin_once",
            "-k",
            "not sigterm_mid and not restart_resumes and not disk_full",
        ],
    ),
    (
        "daemons/peer/limits.py",
        ["tests/test_peer_units.py", "tests/test_dfdaemon_e2e.py", "-k", "token or rate_limit"],
    ),
    ("daemons/peer/manager_lookup.py", ["tests/test_manager_process.py", "-k", "dfdaemon"]),
    ("daemons/peer/metrics.py", ["tests/test_dfdaemon_e2e.py", "-k", "metrics"]),
    (
        "daemons/peer/piece_client.py",
        ["tests/test_piece_server_e2e.py", "tests/test_hostile_parent_e2e.py"],
    ),
    (
        "daemons/peer/scheduler_client.py",
        ["tests/test_scheduler_daemon.py", *(f"{P2P}::{t}" for t in SCHEDULER_PATH)],
    ),
    ("daemons/peer/storage.py", ["tests/test_peer_units.py", "tests/test_task_store.py"]),
    ("daemons/peer/task.py", ["tests/test_task_store.py", "tests/test_stored_integrity_e2e.py"]),
    (
        "daemons/peer/verify.py",
        ["tests/test_piece_verifier.py", "tests/test_stored_integrity_e2e.py"],
    ),
    (
        # The origin window's gate: every origin download passes it; a seed's (others
        # wait for it) is the one the window narrows.
        "daemons/peer/origin_gate.py",
        [
            "tests/test_dfdaemon_e2e.py",
            f"{P2P}::test_swarm_serves_the_origin_once",
            "-k",
            "in_flight or sizes or concurrent or swarm",
        ],
    ),
    ("daemons/scheduler/preheat.py", ["tests/test_preheat_units.py", "tests/test_preheat_e2e.py"]),
    (
        "daemons/scheduler/config.py",
        [
            "tests/test_scheduler_daemon.py",
            CONFIG_DOC,
            "tests/test_manager_process.py::"
            "test_a_scheduler_registers_keeps_alive_and_applies_its_cluster_config",
        ],
    ),
    ("daemons/scheduler/manager_client.py", ["tests/test_manager_process.py", "-k", "scheduler"]),
    ("daemons/service.py", ["tests/test_service_lifecycle.py", CONFIG_DOC]),
    ("daemons/procman.py", ["tests/test_procman.py"]),
    (
        "daemons/stream.py",
        ["tests/test_framing.py", "tests/test_hostile_frames_e2e.py", "tests/test_tls_e2e.py"],
    ),
    (
        "daemons/framing.py",
        ["tests/test_framing.py", "tests/test_protocol.py", "tests/test_hostile_frames_e2e.py"],
    ),
    ("daemons/listener.py", ["tests/test_tls_e2e.py", "tests/test_connection_limits_e2e.py"]),
    ("daemons/sources/policy.py", ["tests/test_source_policy.py"]),
    ("daemons/sources/s3.py", ["tests/test_source_s3.py"]),
    ("daemons/sources/oci.py", ["tests/test_source_oci.py"]),
    ("daemons/sources/fast_range.py", ["tests/test_fast_range.py", "tests/test_origin.py"]),
    (
        "daemons/sources/*",
        ["tests/test_origin.py", "tests/test_fast_range.py", "tests/test_source_policy.py"],
    ),
]

#: What ``--package`` (and the default run) covers: core/ whole, and the daemon
#: modules most at risk (the download engine, the task store, the P2P path, both upload
#: servers, the scheduler service).
TARGETS = {
    "core": ["core"],
    "daemons": [
        "daemons/peer/task_manager.py",
        "daemons/peer/task_store.py",
        "daemons/peer/p2p.py",
        "daemons/peer/piece_server.py",
        "daemons/peer/http_upload.py",
        "daemons/scheduler/server.py",
    ],
    # Every daemon-side module below the CLI, the manager and the proxy: the peer, the
    # scheduler service, the service/process/stream plumbing and the origin sources.
    "daemons-all": [
        "daemons/peer",
        "daemons/scheduler",
        "daemons/service.py",
        "daemons/procman.py",
        "daemons/stream.py",
        "daemons/sources",
        "daemons/framing.py",
        "daemons/listener.py",
    ],
}
GOALS = {"core": 0.90, "daemons": 0.80}
#: A pytest plugin written to the work directory (see copy_checkout).
PLUGIN = "d7y_mutation_plugin"
#: Marks a mutant skipped as equivalent by construction (inside an annotation).
EQUIVALENT = "equivalent: inside an unevaluated annotation"


@dataclass
class ModuleResult:
    module: str
    mutants: int = 0  # generated by cosmic-ray
    tested: int = 0  # run against the tests (not skipped by the sample cap)
    killed: int = 0
    survived: list[str] = field(default_factory=list)  # diffs
    incompetent: int = 0  # the mutant could not run at all (counted as killed)
    skipped: int = 0  # left out of the sample (--max-mutants) or by pragma
    equivalent: int = 0  # inside unevaluated annotations: never run
    baseline_failed: str = ""

    @property
    def score(self) -> float | None:
        return self.killed / self.tested if self.tested else None


def modules_of(targets: list[str]) -> list[str]:
    """Python files (relative paths) under the given files or folders, sorted."""
    found: list[str] = []
    for target in targets:
        path = REPO / target
        if path.is_file():
            found.append(target)
        elif path.is_dir():
            found += sorted(
                str(p.relative_to(REPO))
                for p in path.rglob("*.py")
                if "__pycache__" not in p.parts and not p.name.endswith("_py.py") and _has_code(p)
            )
        else:
            raise SystemExit(f"mutation: {target!r} is neither a file nor a folder of {REPO}")
    return found


def _has_code(path: Path) -> bool:
    """False for a module that is only a docstring (a package's ``__init__.py``): there is
    nothing to mutate and no tests to map."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def tests_for(module: str) -> list[str]:
    from fnmatch import fnmatch

    for pattern, tests in TESTS_FOR:
        if fnmatch(module, pattern):
            # pytest arguments: test files (those missing in this checkout are left
            # out) and options such as -k.
            return [
                t for t in tests if not t.startswith("tests/") or (REPO / t.split("::")[0]).exists()
            ]
    raise SystemExit(
        f"mutation: no tests are mapped to {module!r}; add it to TESTS_FOR in {__file__}"
    )


def copy_checkout(workdir: Path, modules: list[str]) -> Path:
    """Copy the tracked (and new, unignored) files plus the built kernels to workdir/src,
    and give the copy its d7y import root. Reuses a copy made earlier (resume)."""
    src = workdir / "src"
    if not src.exists():
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = [f for f in listing.split("\0") if f]
        files += [str(p.relative_to(REPO)) for p in (REPO / "ext").glob("*.so")]
        for rel in files:
            source = REPO / rel
            if not source.is_file():
                continue  # deleted in the work tree but still in the index
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for module in modules:
        # A run that was killed mid-mutant leaves that mutant in the copy: put the
        # original back (a resume assumes the checkout has not changed meanwhile).
        original = (REPO / module).read_bytes()
        if (src / module).read_bytes() != original:
            (src / module).write_bytes(original)
    root = workdir / "pkgroot" / "d7y"
    root.mkdir(parents=True, exist_ok=True)
    for folder in PACKAGES:
        link = root / folder
        if not link.exists():
            link.symlink_to(src / folder, target_is_directory=True)
    # Hypothesis with no deadline and a fixed seed: a mutant is judged by what the tests
    # check, never by how busy the machine was, and a rerun gives the same verdict.
    (workdir / "pkgroot" / f"{PLUGIN}.py").write_text(
        "from hypothesis import settings\n\n"
        'settings.register_profile("d7y-mutation", deadline=None, derandomize=True)\n'
        'settings.load_profile("d7y-mutation")\n'
    )
    return src


def test_environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(workdir / "pkgroot"), str(workdir / "src"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def pytest_command(tests: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        PLUGIN,
        *tests,
    ]


def check_copy_is_imported(src: Path, env: dict[str, str]) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import d7y.core.ids as m, d7y.daemons.cli; print(m.__file__)"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
    )
    where = probe.stdout.strip()
    if probe.returncode != 0 or not where.startswith(str(src.parent)):
        raise SystemExit(
            f"mutation: the copy is not what 'import d7y' finds ({where or probe.stderr}); "
            f"is d7y installed in a way that shadows PYTHONPATH?"
        )


def run_module(
    module: str, src: Path, workdir: Path, env: dict[str, str], args: argparse.Namespace
) -> ModuleResult:
    from cosmic_ray.work_db import WorkDB, use_db

    result = ModuleResult(module)
    tests = tests_for(module)
    name = module.replace("/", "_").removesuffix(".py")
    session = workdir / "sessions" / f"{name}.sqlite"
    config = workdir / "sessions" / f"{name}.toml"
    session.parent.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        if session.exists():
            _read_results(session, result)
        return result

    started = time.monotonic()
    baseline = subprocess.run(
        pytest_command(tests), cwd=src, env=env, capture_output=True, text=True
    )
    took = time.monotonic() - started
    if baseline.returncode != 0:
        result.baseline_failed = (baseline.stdout + baseline.stderr)[-2000:]
        return result
    timeout = max(30.0, 3 * took + 10)
    command = shlex.join(pytest_command(tests))
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{src / module}"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    if not session.exists():
        subprocess.run(
            [str(Path(sys.executable).parent / "cosmic-ray"), "init", str(config), str(session)],
            cwd=src,
            env=env,
            check=True,
        )
        _skip_equivalent_and_sample(session, args)
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = len(db.pending_work_items)
        total = db.num_work_items
    print(
        f"\n== {module}: {total} mutants, {pending} to run; tests: {' '.join(tests)} "
        f"(baseline {took:.1f}s, timeout {timeout:.0f}s)",
        flush=True,
    )
    if pending:
        subprocess.run(
            [str(Path(sys.executable).parent / "cosmic-ray"), "exec", str(config), str(session)],
            cwd=src,
            env=env,
            check=True,
        )
    _read_results(session, result)
    return result


def retest_survivors(src: Path, workdir: Path, modules: list[str]) -> None:
    """Make the surviving mutants of the given modules pending again and give the copy
    this checkout's tests (the modules themselves stay as they were copied, so the
    verdicts compare the same mutants against old and new tests)."""
    shutil.copytree(REPO / "tests", src / "tests", dirs_exist_ok=True)
    for module in modules:
        session = workdir / "sessions" / f"{module.replace('/', '_').removesuffix('.py')}.sqlite"
        if not session.exists():
            continue
        with contextlib.closing(sqlite3.connect(session)) as db, db:
            reset = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount
        print(f"{module}: {reset} surviving mutants to test again", flush=True)


def _read_results(session: Path, result: ModuleResult) -> None:
    """Fill ``result`` from a session (finished or not: pending mutants are left out)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        result.mutants = db.num_work_items
        for _item, outcome in db.completed_work_items:
            outcome: WorkResult
            if outcome.worker_outcome is WorkerOutcome.SKIPPED:
                if outcome.output == EQUIVALENT:
                    result.equivalent += 1
                else:
                    result.skipped += 1
                continue
            if outcome.worker_outcome is WorkerOutcome.NO_TEST:
                result.skipped += 1
                continue
            result.tested += 1
            if outcome.test_outcome is TestOutcome.SURVIVED:
                result.survived.append(outcome.diff or "")
            else:
                result.killed += 1
                if outcome.test_outcome is TestOutcome.INCOMPETENT:
                    result.incompetent += 1


Span = tuple[tuple[int, int], tuple[int, int]]


def unevaluated_annotations(path: Path) -> list[Span]:
    """Spans ((line, col), (end line, end col)) of the annotations of a module that has
    ``from __future__ import annotations``: they are never evaluated, so a mutant inside
    one (``int | None`` -> ``int + None``) is equivalent by construction."""
    tree = ast.parse(path.read_text())
    future = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    if not future:
        return []
    spans: list[Span] = []
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
        for ann in annotations:
            if ann is not None:
                spans.append(
                    ((ann.lineno, ann.col_offset), (ann.end_lineno or 0, ann.end_col_offset or 0))
                )
    return spans


def _inside(spans: list[Span], start: tuple[int, int], end: tuple[int, int]) -> bool:
    return any(a <= tuple(start) and tuple(end) <= b for a, b in spans)


def _skip_equivalent_and_sample(session: Path, args: argparse.Namespace) -> int:
    """Mark as skipped: mutants inside unevaluated annotations (equivalent), mutants on
    lines with '# pragma: no mutate', then all but a deterministic sample of
    --max-mutants. Returns how many were equivalent."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
    equivalent = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=EQUIVALENT)
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = sorted(db.work_items, key=lambda item: item.job_id)
        lines: dict[Path, list[str]] = {}
        annotations: dict[Path, list[Span]] = {}
        keep = []
        for item in items:
            mutation = item.mutations[0]
            path = Path(mutation.module_path)
            text = lines.setdefault(path, path.read_text().splitlines())
            spans = annotations.setdefault(path, unevaluated_annotations(path))
            line = text[mutation.start_pos[0] - 1] if mutation.start_pos[0] <= len(text) else ""
            if _inside(spans, mutation.start_pos, mutation.end_pos):
                db.set_result(item.job_id, equivalent)
            elif "pragma: no mutate" in line:
                db.set_result(item.job_id, skipped)
            else:
                keep.append(item)
        if args.max_mutants is not None and len(keep) > args.max_mutants:
            # Sort by position first so the sample does not depend on job ids (uuids).
            keep.sort(key=lambda i: (i.mutations[0].start_pos, i.mutations[0].operator_name,
                                     i.mutations[0].occurrence))  # fmt: skip
            chosen = set(
                id(i) for i in random.Random(args.sample_seed).sample(keep, args.max_mutants)
            )
            db.set_multiple_results([i.job_id for i in keep if id(i) not in chosen], skipped)


def package_of(module: str) -> str:
    return module.split("/", 1)[0]


def format_report(results: list[ModuleResult], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        f"# Mutation run {datetime.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"elapsed {elapsed / 60:.1f} min. Command: `python bench/mutation.py "
        + " ".join(sys.argv[1:])
        + "`",
        "",
        "| module | mutants | equivalent (annotations) | tested | killed | survived | score |",
        "|---|---|---|---|---|---|---|",
    ]
    by_package: dict[str, list[ModuleResult]] = {}
    for r in results:
        by_package.setdefault(package_of(r.module), []).append(r)
        score = "baseline failed" if r.baseline_failed else _pct(r.score)
        lines.append(
            f"| {r.module} | {r.mutants} | {r.equivalent} | {r.tested} | {r.killed} "
            f"| {len(r.survived)} | {score} |"
        )
    lines += ["", "| package | tested | killed | score | goal |", "|---|---|---|---|---|"]
    for package, rs in by_package.items():
        tested = sum(r.tested for r in rs)
        killed = sum(r.killed for r in rs)
        goal = GOALS.get(package)
        lines.append(
            f"| {package} | {tested} | {killed} | {_pct(killed / tested if tested else None)} "
            f"| {'>= ' + _pct(goal) if goal else '-'} |"
        )
    lines += ["", "## Surviving mutants", ""]
    for r in results:
        for diff in r.survived:
            lines += ["```diff", diff.strip(), "```", ""]
    for r in results:
        if r.baseline_failed:
            lines += [f"## {r.module}: the tests failed without a mutant"]
            lines += ["```", r.baseline_failed, "```"]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", action="append", choices=sorted(TARGETS), default=[])
    parser.add_argument(
        "--module", action="append", default=[], help="a file or folder, e.g. core/ids.py"
    )
    parser.add_argument(
        "--max-mutants", type=int, default=None, help="test a sample of N mutants per module"
    )
    parser.add_argument("--sample-seed", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=None, help="copy and sessions (resume)")
    parser.add_argument("--report", type=Path, default=None, help="Markdown report path")
    parser.add_argument("--list", action="store_true", help="list modules and tests, then stop")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="report what the sessions in --workdir hold so far; run nothing",
    )
    parser.add_argument(
        "--retest-survivors",
        action="store_true",
        help="with the --workdir of an earlier run: refresh the copy's tests/ from this "
        "checkout and run again only the mutants that survived (after writing tests for them)",
    )
    args = parser.parse_args(argv)

    targets = list(args.module)
    for package in args.package or ([] if targets else ["core", "daemons"]):
        targets += TARGETS[package]
    modules = modules_of(targets)
    if args.list:
        for module in modules:
            print(f"{module}: {' '.join(tests_for(module))}")
        return 0
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        print(
            "mutation: cosmic-ray is not installed; run: "
            f"{sys.executable} -m pip install -r {REPO / 'bench' / 'requirements-mutation.txt'}",
            file=sys.stderr,
        )
        return 2

    if args.report_only and args.workdir is None:
        parser.error("--report-only needs the --workdir of an earlier run")
    if args.retest_survivors and args.workdir is None:
        parser.error("--retest-survivors needs the --workdir of an earlier run")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="d7y-mutation-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", flush=True)
    src = workdir / "src"
    env = test_environment(workdir)
    if not args.report_only:
        src = copy_checkout(workdir, modules)
        check_copy_is_imported(src, env)
        if args.retest_survivors:
            retest_survivors(src, workdir, modules)

    started = time.monotonic()
    results = []
    for module in modules:
        results.append(run_module(module, src, workdir, env, args))
        r = results[-1]
        print(
            f"   {module}: {r.killed}/{r.tested} killed ({_pct(r.score)}), "
            f"{len(r.survived)} survived, {r.skipped} skipped"
            + (" -- BASELINE FAILED" if r.baseline_failed else ""),
            flush=True,
        )
    report = format_report(results, args, time.monotonic() - started)
    print("\n" + report)
    report_path = args.report or workdir / "report.md"
    report_path.write_text(report)
    print(f"report written to {report_path}")
    with contextlib.suppress(OSError):
        if args.workdir is None:
            print(f"(the copy stays in {workdir} for a resume; remove it when done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
