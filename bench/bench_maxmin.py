"""The exact max-min solver alone: solves per second on 100 / 1,000 / 10,000 concurrent
flows, the numpy solver (d7y.sim.maxmin_np) against its pure-Python twin
(d7y.sim.maxmin).

    .venv/bin/python bench/bench_maxmin.py                 # 10, 30, 100, 300, 1,000, 10,000
    .venv/bin/python bench/bench_maxmin.py --flows 100 1000

A system shaped like a flash crowd: hosts of 1 Gbit/s up and down and one 10 Gbit/s seed
(a hub), each download holding about 8 flows from random parents (a sixth of them from
the seed); ``flows / 8`` hosts. Both solvers get the same system; the answers are
checked equal to 1e-9 before timing. Reported per size: solves/s of each, the speed-up,
and the filling's iterations (distinct bottleneck levels).
"""

from __future__ import annotations

import argparse
import random
import time

from d7y.sim.maxmin import max_min_rates
from d7y.sim.maxmin_np import Incidence, max_min_rates_np

GBIT = 125e6  # bytes/s


def system(flows: int, seed: int = 1) -> tuple[list[tuple[str, str]], dict[str, float]]:
    rng = random.Random(f"{seed}:{flows}")
    hosts = max(2, flows // 8)
    caps = {"seed.up": 10 * GBIT}
    for h in range(hosts):
        # a little spread, as heterogeneous hosts and partial loads give distinct levels
        caps[f"h{h}.up"] = GBIT * rng.choice([1.0, 1.0, 1.0, 0.5, 0.2])
        caps[f"h{h}.down"] = GBIT
    paths = []
    for _ in range(flows):
        dst = rng.randrange(hosts)
        if rng.random() < 1 / 6:
            src = "seed.up"
        else:
            s = rng.randrange(hosts - 1)
            src = f"h{s + (s >= dst)}.up"
        paths.append((src, f"h{dst}.down"))
    return paths, caps


def timed(fn, budget: float = 1.0) -> float:
    """Calls per second of ``fn`` over about ``budget`` seconds (at least 3 calls)."""
    n = 0
    started = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - started
        if n >= 3 and elapsed >= budget:
            return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[10, 30, 100, 300, 1000, 10000])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per timing")
    args = parser.parse_args(argv)
    print(f"{'flows':>7} {'levels':>7} {'python /s':>10} {'numpy /s':>10} {'numpy/python':>13}")
    for n in args.flows:
        paths, caps = system(n)
        problem = Incidence.from_paths(paths, caps)
        py = max_min_rates(paths, caps)
        npr = max_min_rates_np(problem)
        assert all(abs(a - b) <= 1e-9 * a for a, b in zip(py, npr, strict=True))
        levels = len(set(py))
        t_py = timed(lambda p=paths, c=caps: max_min_rates(p, c), args.budget)
        t_np = timed(lambda p=problem: max_min_rates_np(p), args.budget)
        print(f"{n:>7} {levels:>7} {t_py:>10.1f} {t_np:>10.1f} {t_np / t_py:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
