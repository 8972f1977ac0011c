"""The report's figures (matplotlib, Agg): AUROC heatmap over unfreeze.last_n x optim.lr, per-class accuracy,
per-epoch curves."""

from __future__ import annotations

import math
from typing import Any

from ttm_experiments.report.runs import Row, as_float, poolable, sci


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lr_axis(rows: list[Row]) -> tuple[list[str], Any, bool]:
    """Learning-rate columns: each value when there are few, log-spaced bins when a search sampled many."""
    import numpy as np

    values = sorted({r.lr for r in rows if r.lr is not None})
    labels = sorted({sci(v) for v in values}, key=float)  # values that print alike share a column
    if len(labels) <= 8:
        return labels, lambda lr: labels.index(sci(lr)) if lr is not None else None, False
    edges = np.geomspace(values[0], values[-1] * (1 + 1e-9), 7)
    labels = [f"{sci(a)}\nto {sci(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return labels, lambda lr: int(min(np.searchsorted(edges, lr, side="right") - 1, len(labels) - 1)), True


def _cell_means(done: list[Row], ys: list[tuple[str, str]], x_of, n_x: int, value_of):
    """Mean of `value_of(run)` per (strategy, last_n) x learning-rate cell (NaN where no run), and the counts."""
    import numpy as np

    sums = np.zeros((len(ys), n_x))
    counts = np.zeros_like(sums)
    for r in done:
        value, x = value_of(r), x_of(r.lr)
        if value is not None and x is not None:
            y = ys.index((r.strategy, r.last_n))
            sums[y, x] += value
            counts[y, x] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.where(counts == 0, np.nan, counts), counts


def _heatmap_panel(fig, ax, grid, counts, cmap) -> None:
    """One panel: the cells coloured on the panel's own scale, each cell's mean (and n) written in it."""
    import numpy as np

    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.5, 1.0)
    if vmax - vmin < 0.02:  # a flat panel would divide by ~0 in the text colour below
        vmin, vmax = vmin - 0.01, vmax + 0.01
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (y, x), value in np.ndenumerate(grid):
        if np.isfinite(value):
            bright = (value - vmin) / (vmax - vmin) > 0.6
            text = f"{value:.3f}" + (f"\nn={int(counts[y, x])}" if counts[y, x] > 1 else "")
            ax.text(x, y, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        else:
            ax.text(x, y, "no run", ha="center", va="center", fontsize=7, color="#888888")
    fig.colorbar(im, ax=ax, label="AUROC", shrink=0.9, pad=0.02)


def heatmap_figure(rows: list[Row]):
    """Mean AUROC per (strategy, last_n) x learning rate: the validation objective next to the test AUROC."""
    plt = pyplot()
    done, left_out = poolable([r for r in rows if r.state == "finished" and r.lr is not None])
    if not done:
        return None
    strategies = sorted({r.strategy for r in done})
    ys = sorted({(r.strategy, r.last_n) for r in done}, key=lambda k: (k[0], as_float(k[1]) or 0))
    x_labels, x_of, binned = _lr_axis(done)
    panels = [
        ("validation " + done[0].metric + " at the best epoch (the objective)", lambda r: r.objective),
        ("test AUROC of the best checkpoint", lambda r: r.metrics.get("test/auroc")),
    ]
    width = max(3.2, 1.15 * len(x_labels) + 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width + 3.4, 0.6 * len(ys) + 2.4), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#eeeeee")
    for ax, (title, value_of) in zip(axes[0], panels):
        _heatmap_panel(fig, ax, *_cell_means(done, ys, x_of, len(x_labels), value_of), cmap)
        ax.set_xticks(range(len(x_labels)), x_labels, fontsize=8)
        ax.set_xlabel("optim.lr" + (" (log-spaced bins of the sampled values)" if binned else ""))
        ax.set_title(title, fontsize=10)
    axes[0][0].set_yticks(range(len(ys)), [f"{s}, last_n={n}" if len(strategies) > 1 else f"last_n={n}" for s, n in ys])
    axes[0][0].set_ylabel("blocks unfrozen in the partial stage")
    pooled = ", ".join(f"{k}={done[0].params.get(k)}" for k in left_out)
    fig.suptitle(
        f"AUROC over unfreeze.last_n x learning rate: mean of the {len(done)} finished runs per cell "
        "(each panel has its own colour scale)"
        + (f"\nonly runs with {pooled}; runs with other {', '.join(left_out)} are not pooled in" if left_out else ""),
        fontsize=10,
    )
    fig.tight_layout()
    plt.close(fig)
    return fig


def per_class_figure(rows: list[Row], classes: list[str], *, threshold: float = 0.05, limit: int = 24):
    """Test accuracy of each class per run (best first), balanced accuracy as a mark, collapse flagged."""
    import numpy as np

    plt = pyplot()
    done = [r for r in rows if r.state == "finished" and any(f"test/acc/{c}" in r.metrics for c in classes)][:limit]
    if not done:
        return None
    x = np.arange(len(done))
    width = 0.8 / max(1, len(classes))
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(done) + 3.0), 4.8))
    colors = plt.get_cmap("tab10")
    for i, c in enumerate(classes):
        values = [r.metrics.get(f"test/acc/{c}", np.nan) for r in done]
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, values, width, label=f"accuracy of class {c}", color=colors(i))
        for xi, v in zip(xs, values):
            if np.isfinite(v):
                ax.text(
                    xi, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7, rotation=90 if len(done) > 10 else 0
                )
    bal = [r.metrics.get("test/balanced_acc", np.nan) for r in done]
    ax.scatter(x, bal, marker="_", s=900 * width, color="black", zorder=3, linewidths=2, label="balanced accuracy")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"collapse threshold ({threshold:g})")
    for xi, r in zip(x, done):
        if r.collapse:
            ax.text(xi, 1.1, "COLLAPSE", color="tab:red", ha="center", fontsize=7, fontweight="bold")
    ax.set_xticks(
        x,
        [f"#{rows.index(r) + 1} {r.short_name}\nlast_n={r.last_n}\nlr={sci(r.lr)}" for r in done],
        fontsize=8,
        rotation=0 if len(done) <= 8 else 90,
    )
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Per-class test accuracy of the best checkpoint, runs ranked by {done[0].metric}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _stage_starts(row: Row) -> list[int]:
    return [first for _, first, _ in row.stages]


def _shade_stages(axes, reference: Row) -> None:
    """The reference run's stages as alternating bands, named above the top panel."""
    for ax in axes:
        for i, (_, first, last) in enumerate(reference.stages):
            ax.axvspan(first - 0.5, last + 0.5, color="#e3ecf7" if i % 2 == 0 else "#f4f4f4", zorder=0)
    for name, first, last in reference.stages:
        axes[0].text(
            (first + last) / 2,
            1.01,
            name,
            transform=axes[0].get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=9,
            color="#333333",
        )


def _plot_run(axes, keys: list[str], row: Row, *, color, label: str, own_stages: bool) -> None:
    """One run's curves: pruned runs end in a cross, the best epoch is starred."""
    best = row.metrics.get("best/epoch")
    for ax, key in zip(axes, keys):
        points = row.history.get(key, [])
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, color=color, lw=1.6, marker="o", ms=3, label=label)
        if row.state == "pruned":
            ax.plot(steps[-1], values[-1], marker="x", ms=10, color=color, mew=2.2, zorder=4)
        if best is not None and int(best) in steps:
            ax.plot(
                int(best),
                values[steps.index(int(best))],
                marker="*",
                ms=13,
                color=color,
                mec="black",
                mew=0.6,
                zorder=5,
            )
        if own_stages:  # this run's schedule differs from the shaded one: its stage starts, in its colour
            for first in _stage_starts(row)[1:]:
                ax.axvline(first - 0.5, color=color, lw=1.0, ls="--", alpha=0.7, zorder=1)


def _label_epoch_axes(axes, classes: list[str], threshold: float) -> None:
    from matplotlib.ticker import MaxNLocator

    axes[0].set_ylabel("val AUROC")
    for ax, c in zip(axes[1:], classes):
        ax.set_ylabel(f"val accuracy of\nclass {c}")
        ax.axhline(threshold, color="tab:red", ls="--", lw=0.8)
        ax.set_ylim(-0.04, 1.04)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch (counted across stages)")


def epochs_figure(rows: list[Row], classes: list[str], *, threshold: float = 0.05, ranks: dict[str, int] | None = None):
    """Validation AUROC and per-class accuracy over epochs for the drawn runs; stages shaded, best epoch starred."""
    plt = pyplot()
    ranks = ranks or {r.run_id: i + 1 for i, r in enumerate(rows)}
    drawn = [r for r in rows if r.history.get("val/auroc")]
    if not drawn:
        return None
    keys = ["val/auroc", *[f"val/acc/{c}" for c in classes]]
    fig, axes = plt.subplots(len(keys), 1, figsize=(10.5, 2.2 * len(keys) + 0.9), sharex=True, squeeze=False)
    axes = axes[:, 0]
    reference = next((r for r in drawn if r.stages), None)
    if reference is not None:
        _shade_stages(axes, reference)
    other_stages = False
    for i, r in enumerate(drawn):
        # a pruned run has a prefix of the stages: only another schedule counts as different
        differs = bool(
            reference is not None and r.stages and _stage_starts(r) != _stage_starts(reference)[: len(r.stages)]
        )
        other_stages |= differs
        label = f"#{ranks[r.run_id]} {r.label}" + (" - pruned" if r.state == "pruned" else "")
        _plot_run(axes, keys, r, color=plt.get_cmap("tab10")(i % 10), label=label, own_stages=differs)
    _label_epoch_axes(axes, classes, threshold)
    notes = [
        f"shading: stages of run #{ranks[reference.run_id]}" if reference is not None else "",
        "dashed: stage starts of runs with another schedule" if other_stages else "",
        "* best epoch (tested checkpoint)",
        "x pruned",
        f"red line: collapse threshold {threshold:g}",
    ]
    fig.suptitle("Validation AUROC and per-class accuracy per epoch", fontsize=11)
    axes[0].set_title("; ".join(n for n in notes if n), fontsize=8, pad=16, color="#444444")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.026 * math.ceil(len(labels) / 2) + 0.012, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    plt.close(fig)
    return fig
