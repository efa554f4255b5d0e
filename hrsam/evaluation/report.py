"""Evaluation output: one JSON of summaries and per-object runs, a Markdown table, the mIoU plot.

Few files on purpose: results travel back from GPU machines with a limit on the number of files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from hrsam.evaluation.evaluate import EvaluationResult

TABLE_COLUMNS = ("NoC@85", "NoC@90", "NoC@95", "mIoU@1", "mIoU@5", "NoF@90", "SPC")


def write_results(results: Mapping[str, Mapping[str, EvaluationResult]], path: Path) -> dict[str, dict[str, dict]]:
    """Write {dataset: {run: {"summary", "objects"}}} to ``path``; return the summaries alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    summaries = {name: {label: r.summary() for label, r in runs.items()} for name, runs in results.items()}
    content = {
        name: {label: {"summary": summaries[name][label], "objects": [o.to_dict() for o in r.objects]}
               for label, r in runs.items()}
        for name, runs in results.items()
    }
    path.write_text(json.dumps(content, indent=1))
    return summaries


def table(summaries: Mapping[str, Mapping]) -> str:
    """A Markdown table, one row per labelled summary."""
    header = "| run | objects | " + " | ".join(TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for label, summary in summaries.items():
        cells = []
        for column in TABLE_COLUMNS:
            value = summary.get(column)
            if value is None:
                cells.append("-")
            elif column.startswith("mIoU"):
                cells.append(f"{value:.3f}")
            elif column == "SPC":
                cells.append(f"{value * 1000:.1f} ms")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                cells.append(f"{value:.2f}")
        lines.append(f"| {label} | {summary['objects']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(summaries: Mapping[str, Mapping[str, Mapping]], path: Path) -> str:
    """mIoU against clicks: a panel per data set, a line per run; returns a note (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (the curves are in the results JSON)"
    figure, panels = plt.subplots(1, len(summaries), figsize=(5.5 * len(summaries), 4), squeeze=False)
    for axes, (name, runs) in zip(panels[0], summaries.items(), strict=True):
        for label, summary in runs.items():
            curve = summary["mIoU_curve"]
            axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=label)
        axes.set(xlabel="clicks", ylabel="mIoU", ylim=(0, 1), title=f"{name}: mIoU vs clicks")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"wrote {path}"
