"""Same scenario and seed, same results -- whatever the process's hash seed (no set or
dict order may leak into a decision) -- and a different seed gives different ones."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from d7y.sim import scenario as sc
    from d7y.sim.runner import run_scenario

    s = sc.parse({
        "seed": int(sys.argv[1]),
        "topology": {"kind": "multi_idc", "hosts": 40, "idcs": 2, "racks_per_idc": 2,
                     "rack_uplink": "4Gbit", "inter_idc": "6Gbit",
                     "classes": [{"share": 0.25, "upload": "300Mbit"}]},
        "seed_peers": {"count": 2},
        "tasks": [{"name": "a", "size": "48MiB"},
                  {"name": "b", "size": "24MiB", "peers": 15,
                   "arrival": {"kind": "poisson", "rate": 30}}],
        "churn": {"rate": 0.05, "linger": "3s"},
        "failures": [{"at": "0.4s", "host": "seed1"}],
    })
    out = run_scenario(s)
    doc = []
    for r in out.results:
        summary = {k: v for k, v in r.summary.items()
                   if k not in ("wall_seconds", "events_per_second")}
        doc.append({"summary": summary, "tasks": r.tasks, "peers": r.peers,
                    "hosts": r.hosts, "cdf": r.cdf})
    print(json.dumps(doc, sort_keys=True))
    """
)


def run(seed: int, hash_seed: str) -> list:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return json.loads(proc.stdout)


def test_same_seed_same_results_across_hash_seeds():
    a = run(3, "1")
    b = run(3, "4242")
    assert len(a) == 6  # the six policies of a scenario that names none
    assert a == b
    c = run(4, "1")
    assert c != a
