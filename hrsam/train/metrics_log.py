"""The run's metrics CSV (one row per logging interval) and its loss plot.

The CSV is appended to when a run resumes, so one file holds the whole history; ``plot`` draws the
loss (and the training IoU when present) against the step with matplotlib, or says why not.
"""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    """Append rows of named values to ``path``; the header is the first row's keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file() and path.stat().st_size:
            with open(path, newline="") as file:
                self.fields = next(csv.reader(file), None)

    def write(self, row: dict[str, float | int | str]) -> None:
        if self.fields is None:
            self.fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as file:
                csv.writer(file).writerow(self.fields)
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, self.fields, extrasaction="ignore").writerow(row)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The CSV's rows as floats (non-numeric cells skipped)."""
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    rows = []
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(values)
    if not rows or "step" not in rows[0] or "loss" not in rows[0]:
        raise ValueError(f"{path} has no step / loss rows: not a metrics file of hrsam.train")
    return rows


def plot(metrics_csv: Path, out: Path) -> str:
    """Draw loss (and train IoU if logged) against step into ``out``; returns a one-line note."""
    rows = read_metrics(metrics_csv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed: no plot (make it later with python -m hrsam.train plot {metrics_csv})"
    steps = [row["step"] for row in rows]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, [row["loss"] for row in rows], label="loss", color="tab:blue")
    axes.set(xlabel="step", ylabel="loss", yscale="log", title=metrics_csv.parent.name or "training")
    axes.grid(alpha=0.3)
    if "train_iou" in rows[0]:
        twin = axes.twinx()
        twin.plot(steps, [row.get("train_iou", float("nan")) for row in rows], color="tab:orange", label="train IoU")
        twin.set(ylabel="train IoU", ylim=(0, 1))
        twin.legend(loc="upper right")
    axes.legend(loc="upper left")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return f"wrote {out}"
