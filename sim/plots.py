"""PNG plots of a run (matplotlib, Agg backend: no display needed).

- ``completion_cdf.png``: per policy, the fraction of downloads finished within t seconds
  of their arrival; the Kumar-Ross T_min as a vertical line.
- ``swarm_progress.png``: per policy, the fraction of all pieces the downloads need that
  they hold, over simulated time.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt

from d7y.sim.results import Bound, PolicyResult


def write_plots(
    out: Path, title: str, bounds: list[Bound], results: list[PolicyResult]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    t_min = max((b.t_min for b in bounds), default=0.0)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in results:
        if r.cdf:
            n = r.summary["downloads"] or len(r.cdf)
            xs = [0.0]
            ys = [0.0]
            for i, t in enumerate(r.cdf):
                xs += [t, t]
                ys += [i / n, (i + 1) / n]
            ax.plot(xs, ys, label=r.label, linewidth=1.5)
    if t_min > 0:
        ax.axvline(t_min, color="black", linestyle=":", linewidth=1, label="Kumar-Ross T_min")
    ax.set_xlabel("completion time after arrival (s)")
    ax.set_ylabel("fraction of downloads done")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_title(f"{title}: completion time CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "completion_cdf.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in results:
        times, fractions = r.progress
        if times:
            ax.plot(times, fractions, label=r.label, linewidth=1.5, drawstyle="steps-post")
    if t_min > 0:
        ax.axvline(t_min, color="black", linestyle=":", linewidth=1, label="Kumar-Ross T_min")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("fraction of pieces delivered")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_title(f"{title}: swarm progress")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "swarm_progress.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written
