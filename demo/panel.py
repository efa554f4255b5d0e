"""The latency panel: engine vs eager for the same image and clicks, as HTML, a plot table and a click table.

Built from a ``Session`` only (no Gradio), so its content is unit-tested. The cells carry ids
(``engine-encode-ms``, ``eager-decode-ms``, ``mask-iou``, ...) that the browser test reads.
"""

from __future__ import annotations

from html import escape

import pandas as pd

from demo.session import ROLES, Session

ROLE_TITLES = {"engine": "Engine", "eager": "Eager PyTorch (reference)"}
CLICK_COLUMNS = ["click", "type", "x", "y", "engine ms", "eager ms", "IoU"]
PLOT_COLUMNS = ["click", "backend", "decoder ms"]


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _backend_cell(session: Session, role: str) -> str:
    encoding = session.encodings.get(role)
    if encoding is None:
        return "–"
    info = encoding.predictor.runner.info
    size = "any size" if info.input_size is None else f"input {info.input_size}"
    detail = f"{info.model} · {info.precision} on {info.device} · {size}"
    return f"<b>{escape(info.backend)}</b><br><small>{escape(detail)}</small>"


def _encode_cell(session: Session, role: str) -> str:
    encoding = session.encodings.get(role)
    if encoding is None:
        return "–"
    if encoding.cached:
        return f"{_ms(encoding.encode_ms)} <small>(cached embedding; measured when first encoded)</small>"
    return _ms(encoding.encode_ms)


def _iou_cell(session: Session) -> str:
    values = [step.iou for step in session.steps if step.iou is not None]
    if not values:
        return "–"
    text = f"{values[-1]:.4f} on the last click"
    return text + (f" · lowest {min(values):.4f} over {len(values)} clicks" if len(values) > 1 else "")


def latency_html(session: Session, notes: list[str]) -> str:
    """The panel's HTML table (backends that ran, encoder, decoder last / median, IoU) and notes."""
    if not session.has_image:
        return "<div class='hrsam-panel'><p>Upload an image or pick the example to start.</p></div>"
    count = len(session.steps)
    rows = [
        ("Backend that ran", "backend", {role: _backend_cell(session, role) for role in ROLES}),
        ("Encoder, once per image", "encode-ms", {role: _encode_cell(session, role) for role in ROLES}),
        (
            "Decoder, last click",
            "decode-ms",
            {role: _ms(session.last.results[role].decode_ms) if session.last else "–" for role in ROLES},
        ),
        (
            f"Decoder, median of {count} click{'s' if count != 1 else ''}",
            "median-ms",
            {role: _ms(session.median_decode_ms(role)) for role in ROLES},
        ),
    ]
    head = "".join(f"<th>{ROLE_TITLES[role]}</th>" for role in ROLES)
    body = "".join(
        f"<tr><td>{title}</td>" + "".join(f"<td id='{role}-{cell_id}'>{cells[role]}</td>" for role in ROLES) + "</tr>"
        for title, cell_id, cells in rows
    )
    body += f"<tr><td>Mask IoU, engine vs eager</td><td colspan='2' id='mask-iou'>{_iou_cell(session)}</td></tr>"
    notes_html = "".join(f"<p class='hrsam-note'>{escape(note)}</p>" for note in notes if note)
    return (
        f"<div class='hrsam-panel'><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"{notes_html}</div>"
    )


def latency_frame(session: Session) -> pd.DataFrame | None:
    """Per-click decoder times of both backends, long format, for the line plot; None before the first click.

    None, not an empty frame: Gradio's line plot keeps the (empty) colour legend of an empty frame
    and then draws no lines for later data.
    """
    rows = session.latency_rows()
    if not rows:
        return None
    return pd.DataFrame(rows, columns=PLOT_COLUMNS).astype({"click": "int64", "decoder ms": "float64"})


def plot_x_range(session: Session) -> list[float]:
    """The plot's click axis: at least 1..10, so its ticks fall on whole clicks."""
    return [1, max(10, len(session.steps))]


def clicks_frame(session: Session) -> pd.DataFrame:
    """One row per click: where, which kind, both decoder times, the IoU between the two backends' masks."""
    rows = []
    for number, step in enumerate(session.steps, start=1):
        engine, eager = (step.results.get(role) for role in ROLES)
        rows.append({
            "click": number,
            "type": "+" if step.click.positive else "−",
            "x": step.click.x,
            "y": step.click.y,
            "engine ms": round(engine.decode_ms, 1) if engine else None,
            "eager ms": round(eager.decode_ms, 1) if eager else None,
            "IoU": None if step.iou is None else round(step.iou, 4),
        })
    return pd.DataFrame(rows, columns=CLICK_COLUMNS)
