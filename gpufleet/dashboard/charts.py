"""Inline SVG charts, drawn on the server: no script, nothing fetched, every label escaped."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from markupsafe import Markup

__all__ = ["bar", "line_chart", "scatter_chart"]

_W, _H = 520, 220
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 48, 12, 22, 30


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2g}"


def _nice_max(v: float) -> float:
    """A round upper bound for an axis (1, 2 or 5 times a power of ten)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    p = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if v <= m * p:
            return float(m * p)
    return float(10 * p)


def bar(fraction: float, *, label: str = "", width: int = 100) -> Markup:
    """A small progress bar (an SVG, so no inline style is needed) whose ``data-progress`` is the fraction."""
    f = min(1.0, max(0.0, fraction if math.isfinite(fraction) else 0.0))
    done = " done" if f >= 1.0 else ""
    title = _esc(label or f"{f:.0%}")
    return Markup(
        f'<svg class="bar{done}" data-progress="{f:.3f}" width="{width}" height="10" viewBox="0 0 100 10" '
        f'preserveAspectRatio="none" role="img" aria-label="{title}"><title>{title}</title>'
        f'<rect class="track" width="100" height="10" rx="2"/>'
        f'<rect class="fill" width="{f * 100:.1f}" height="10" rx="2"/></svg>'
    )


def _frame(title: str, x_label: str, y_label: str, x_max: float, y_max: float, x_min: float = 0.0) -> list[str]:
    iw, ih = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    out = [
        f'<svg class="chart" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}">',
        f'<text class="title" x="{_PAD_L}" y="14">{_esc(title)}</text>',
    ]
    for i in range(5):
        y = _PAD_T + ih - ih * i / 4
        out.append(f'<line class="grid" x1="{_PAD_L}" x2="{_PAD_L + iw}" y1="{y:.1f}" y2="{y:.1f}"/>')
        tick = _num(y_max * i / 4)
        out.append(f'<text class="tick" x="{_PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end">{tick}</text>')
    for i in range(5):
        x = _PAD_L + iw * i / 4
        value = x_min + (x_max - x_min) * i / 4
        out.append(f'<text class="tick" x="{x:.1f}" y="{_PAD_T + ih + 13}" text-anchor="middle">{_num(value)}</text>')
    out.append(f'<text class="axis" x="{_PAD_L + iw}" y="{_H - 3}" text-anchor="end">{_esc(x_label)}</text>')
    out.append(f'<text class="axis" x="{_W - _PAD_R}" y="14" text-anchor="end">{_esc(y_label)}</text>')
    return out


def line_chart(
    points: Sequence[tuple[float, float]], *, title: str, x_label: str, y_label: str, empty: str = "no data yet"
) -> Markup:
    """A step-free line over ``points`` (x ascending), x from its first point."""
    if not points:
        return Markup(f'<p class="empty">{_esc(title)}: {_esc(empty)}</p>')
    x0 = points[0][0]
    x_max = max(points[-1][0] - x0, 1e-9)
    y_max = _nice_max(max(p[1] for p in points))
    iw, ih = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    out = _frame(title, x_label, y_label, x_max, y_max)
    coords = " ".join(
        f"{_PAD_L + iw * (x - x0) / x_max:.1f},{_PAD_T + ih - ih * min(y, y_max) / y_max:.1f}" for x, y in points
    )
    out.append(f'<polyline class="series" points="{coords}"/>')
    out.append("</svg>")
    return Markup("".join(out))


def scatter_chart(
    points: Sequence[tuple[float, float]], *, title: str, x_label: str, y_label: str, empty: str = "no data yet"
) -> Markup:
    """Points (x, y) on equal axes with the diagonal y = x: predicted against actual."""
    if not points:
        return Markup(f'<p class="empty">{_esc(title)}: {_esc(empty)}</p>')
    top = _nice_max(max(max(x, y) for x, y in points))
    iw, ih = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    out = _frame(title, x_label, y_label, top, top)
    out.append(f'<line class="diagonal" x1="{_PAD_L}" y1="{_PAD_T + ih}" x2="{_PAD_L + iw}" y2="{_PAD_T}"/>')
    for x, y in points:
        cx = _PAD_L + iw * min(x, top) / top
        cy = _PAD_T + ih - ih * min(y, top) / top
        out.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="3"/>')
    out.append("</svg>")
    return Markup("".join(out))
