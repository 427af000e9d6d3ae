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
    cdf = _finish(
        fig,
        ax,
        t_min,
        xlabel="completion time after arrival (s)",
        ylabel="fraction of downloads done",
        title=f"{title}: completion time CDF",
        path=out / "completion_cdf.png",
    )

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in results:
        times, fractions = r.progress
        if times:
            ax.plot(times, fractions, label=r.label, linewidth=1.5, drawstyle="steps-post")
    progress = _finish(
        fig,
        ax,
        t_min,
        xlabel="simulated time (s)",
        ylabel="fraction of pieces delivered",
        title=f"{title}: swarm progress",
        path=out / "swarm_progress.png",
    )
    return [cdf, progress]


def _finish(fig, ax, t_min: float, *, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """The frame both plots share (T_min line, axes, legend), saved to ``path``."""
    if t_min > 0:
        ax.axvline(t_min, color="black", linestyle=":", linewidth=1, label="Kumar-Ross T_min")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
