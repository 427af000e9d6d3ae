"""The README's main job, `d7y cluster demo`, run as a user would."""

import subprocess
import sys


def test_cluster_demo_prints_the_table_and_origin_egress(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "cluster", "demo", "--peers", "2",
         "--size", "24MiB", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all outputs match the origin's SHA-256" in out
    for name in ("seed", "peer0", "peer1"):
        assert f"\n{name} " in out
    egress = float(out.split("the file size")[0].rsplit("=", 1)[1].strip().rstrip("x"))
    assert egress <= 1.05
