"""Draw ``relay bench`` results as a chart (``relay bench --plot out.png``).

One panel per payload; one horizontal bar per row, its median µs per
``env.step`` on a log axis, coloured by the row's group (raw library baselines
in grey beside relay's rows; rows that talk to a foreign peer hatched). Needs
matplotlib: ``pip install 'relay-bench[plot]'``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from relay_bench.harness import Result

COLOURS = {"raw": "#9e9e9e", "transport": "#80b1d3", "relay": "#1f77b4",
           "vector": "#ff7f0e", "batched": "#9467bd", "reference": "#2ca02c",
           "other": "#e377c2"}
"""Bar colour per case group (``Result.group``)."""

WIDTH_PX, DPI = 1200, 100
"""The PNG is ``WIDTH_PX`` pixels wide; its height grows with the rows."""


def load_csv(path: Path) -> list[Result]:
    """Read the ``bench-<time>.csv`` written by ``relay bench --out``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file lacks the columns ``relay bench`` writes.
    """
    results = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                results.append(Result(row["case"], row["group"], row["payload"], int(row["steps"]),
                                      float(row["median_us"]), float(row["p90_us"]),
                                      baseline=row["baseline"] or None))
            except KeyError as exc:
                raise ValueError(f"{path} is not a relay bench CSV: no column {exc}") from None
    return results


def _is_peer(r: Result) -> bool:
    return r.group != "raw" and ("stock" in r.case or "reference" in r.case or "->" in r.case)


def plot(results: Sequence[Result], path: Path, *, title: str = "") -> Path:
    """Write a PNG chart of ``results`` to ``path`` (``WIDTH_PX`` wide); returns ``path``.

    Raises:
        ImportError: matplotlib is not installed (the ``plot`` extra).
        ValueError: ``results`` is empty.
    """
    if not results:
        raise ValueError("no results to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    payloads = list(dict.fromkeys(r.payload for r in results))
    per = {p: [r for r in results if r.payload == p] for p in payloads}
    rows = max(len(v) for v in per.values())
    height_in = max(3.0, 0.6 + 0.22 * rows * len(payloads) + 0.5 * len(payloads))
    fig, axes = plt.subplots(len(payloads), 1, figsize=(WIDTH_PX / DPI, height_in), dpi=DPI,
                             squeeze=False)
    for ax, p in zip(axes[:, 0], payloads, strict=True):
        rs = sorted(per[p], key=lambda r: r.median_us, reverse=True)
        ax.barh([r.case for r in rs], [r.median_us for r in rs],
                color=[COLOURS.get(r.group, COLOURS["other"]) for r in rs],
                hatch=None, edgecolor="black", linewidth=0.3)
        for bar, r in zip(ax.patches, rs, strict=True):
            if _is_peer(r):
                bar.set_hatch("//")
        ax.set_xscale("log")
        ax.set_title(f"payload {p}", fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[-1, 0].set_xlabel("median µs per env.step (log scale)")
    groups = sorted({r.group for r in results})
    handles = [Patch(facecolor=COLOURS.get(g, COLOURS["other"]), label=g) for g in groups]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="foreign peer"))
    fig.legend(handles=handles, loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)
