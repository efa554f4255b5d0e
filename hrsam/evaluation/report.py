"""Evaluation output: per-object JSON, a summary JSON, a printable table and the mIoU-vs-clicks plot."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from hrsam.evaluation.evaluate import EvaluationResult

TABLE_COLUMNS = ("NoC@85", "NoC@90", "NoC@95", "mIoU@1", "mIoU@5", "NoF@90", "SPC")


def write_result(result: EvaluationResult, out_dir: Path, label: str) -> dict:
    """Write ``{label}_objects.json`` and ``{label}_summary.json`` under ``out_dir``; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    (out_dir / f"{label}_objects.json").write_text(json.dumps([o.to_dict() for o in result.objects], indent=1))
    (out_dir / f"{label}_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


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


def plot_curves(summaries: Mapping[str, Mapping], path: Path) -> str:
    """Plot mIoU against clicks for each summary; returns a note (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (the curves are in the *_summary.json files)"
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, summary in summaries.items():
        curve = summary["mIoU_curve"]
        axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=label)
    axes.set(xlabel="clicks", ylabel="mIoU", ylim=(0, 1), title="mIoU vs clicks")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"wrote {path}"
