"""PNG plots of a run (matplotlib, Agg backend: no display needed).

- ``completion_cdf.png``: per policy, the fraction of downloads finished within t seconds
  of their arrival; the Kumar-Ross T_min as a vertical line.
- ``swarm_progress.png``: per policy, the fraction of all pieces the downloads need that
  they hold, over simulated time.
- a sweep's ``sweep-<result>.png`` (:func:`write_sweep_plots`): one result against the
  swept parameter, a line per combination of the other grid keys, the mean over seeds
  with error bars of one standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt
import numpy as np

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


#: The results a sweep plots (summary fields), with their axis labels.
SWEEP_RESULTS = {
    "t_over_t_min": "T / T_min (Kumar-Ross)",
    "makespan": "makespan T (s)",
    "mean_completion": "mean completion time (s)",
    "p95_completion": "p95 completion time (s)",
    "origin_over_size": "origin bytes / file size",
    "mean_upload_utilisation": "mean upload utilisation",
}


def write_sweep_plots(
    out: Path,
    title: str,
    keys: Sequence[str],
    runs: Sequence[Any],
    results: Sequence[dict[str, Any]],
) -> list[Path]:
    """One PNG per result of :data:`SWEEP_RESULTS`: x is the first swept key other than
    ``policy`` (``policy`` itself if it is the only one), one line per combination of
    the other keys, each point the mean over the seeds with a one-standard-deviation
    error bar (sample deviation; none with one seed)."""
    out.mkdir(parents=True, exist_ok=True)
    params = [dict(spec.params) for spec in runs]
    names = list(params[0]) if params else []
    others = [k for k in names if k != "policy"]
    x_key = others[0] if others else "policy"
    series_keys = [k for k in names if k != x_key]
    x_values = list(dict.fromkeys(p[x_key] for p in params))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in x_values)
    positions = x_values if numeric else list(range(len(x_values)))
    series = list(dict.fromkeys(tuple(p[k] for k in series_keys) for p in params))
    files = []
    for result, label in SWEEP_RESULTS.items():
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for s_i, combo in enumerate(series):
            means, errs = [], []
            for x in x_values:
                ys = np.array(
                    [
                        r[result]
                        for p, r in zip(params, results, strict=True)
                        if p[x_key] == x and tuple(p[k] for k in series_keys) == combo
                    ],
                    dtype=float,
                )
                means.append(ys.mean() if ys.size else np.nan)
                errs.append(ys.std(ddof=1) if ys.size > 1 else 0.0)
            name = ", ".join(f"{k}={v}" for k, v in zip(series_keys, combo, strict=True))
            # a small sideways shift per series keeps overlapping error bars readable
            shift = 0.0 if numeric else (s_i - (len(series) - 1) / 2) * 0.08
            ax.errorbar(
                [x + shift for x in positions],
                means,
                yerr=errs,
                label=name or result,
                marker="o",
                capsize=3,
                linewidth=1.5,
            )
        ax.set_xticks(positions, [str(v) for v in x_values])
        ax.set_xlabel(x_key)
        ax.set_ylabel(label)
        seeds = len({spec.seed for spec in runs})
        ax.set_title(
            f"{title}: {result} (mean of {seeds} seed{'s' if seeds > 1 else ''}, +/- 1 sd)"
        )
        ax.grid(alpha=0.3)
        if series_keys:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"sweep-{result}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files
