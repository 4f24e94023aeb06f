"""Server-side SVG charts for admin (no CDN, no JavaScript): RTT and loss over time.

Drawn here rather than with a vendored chart library: two polylines and a few labels are less
code than wiring a library into Django admin, and they render with JavaScript turned off.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 200, 48, 48, 16, 28


def _scale(values: list[float], lo: float, hi: float, top: float, bottom: float) -> list[float]:
    span = (hi - lo) or 1.0
    return [bottom - (v - lo) / span * (bottom - top) for v in values]


def _frame(title: str, css_class: str, left_label) -> list[str]:
    """The chart's opening tag, plot area and three gridlines; `left_label(frac)` is the text at
    each gridline's left end (0, half, top)."""
    top, bottom = PAD_T, H - PAD_B
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'role="img" aria-label="{escape(title)}" class="{css_class}" font-family="sans-serif" font-size="11">',
        f'<rect x="{PAD_L}" y="{top}" width="{W - PAD_L - PAD_R}" height="{bottom - top}" fill="#fafbfc" stroke="#d0d7de"/>',
    ]
    for frac in (0, 0.5, 1):
        y = bottom - frac * (bottom - top)
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
        )
        parts.append(left_label(frac, y))
    return parts


def rtt_loss_svg(
    points: list[tuple[datetime, float | None, float | None]],
    *,
    title: str,
    max_gap_s: float = 60.0,
) -> str:
    """points: (time, rtt ms or None, loss 0..1 or None), oldest first. The RTT line breaks where
    probes are missing for more than max_gap_s (the platform was stopped), or where one failed."""
    if len(points) < 2:
        return '<p class="help">Not enough probes yet for a chart.</p>'
    t0, t1 = points[0][0].timestamp(), points[-1][0].timestamp()
    span = (t1 - t0) or 1.0
    xs = [PAD_L + (p[0].timestamp() - t0) / span * (W - PAD_L - PAD_R) for p in points]
    rtts = [p[1] for p in points]
    known = [r for r in rtts if r is not None]
    rtt_max = max(known) * 1.2 if known else 1.0
    top, bottom = PAD_T, H - PAD_B
    parts = _frame(
        title,
        "relay-chart",
        lambda frac, y: (
            f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#0969da">{rtt_max * frac:.1f}</text>'
            f'<text x="{W - PAD_R + 4}" y="{y + 4:.1f}" fill="#cf222e">{frac * 100:.0f}%</text>'
        ),
    )
    segment: list[str] = []
    previous: datetime | None = None
    for x, r, p in zip(xs, rtts, points, strict=True):
        gap = previous is not None and (p[0] - previous).total_seconds() > max_gap_s
        previous = p[0]
        if gap and len(segment) > 1:
            parts.append(
                f'<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="{" ".join(segment)}"/>'
            )
        if gap:
            segment = []
        if r is None:
            if len(segment) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="{" ".join(segment)}"/>'
                )
            segment = []
            continue
        (y,) = _scale([r], 0, rtt_max, top, bottom)
        segment.append(f"{x:.1f},{y:.1f}")
    if len(segment) > 1:
        parts.append(
            f'<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="{" ".join(segment)}"/>'
        )
    for x, p in zip(xs, points, strict=True):
        if p[2] is not None:
            (y,) = _scale([p[2]], 0, 1, top, bottom)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#cf222e"/>')
        if p[1] is None:
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="#cf222e" stroke-opacity="0.35"/>'
            )
    parts.append(f'<text x="{PAD_L}" y="{H - 8}" fill="#656d76">{points[0][0]:%H:%M:%S}</text>')
    parts.append(
        f'<text x="{W - PAD_R}" y="{H - 8}" text-anchor="end" fill="#656d76">{points[-1][0]:%H:%M:%S} UTC</text>'
    )
    parts.append(
        f'<text x="{W / 2:.0f}" y="{H - 8}" text-anchor="middle" fill="#656d76">'
        '<tspan fill="#0969da">— RTT ms (left)</tspan>   <tspan fill="#cf222e">● loss (right)</tspan>   '
        '<tspan fill="#cf222e">| failed probe</tspan></text>'
    )
    parts.append("</svg>")
    return "".join(parts)


PATH_COLOURS = {"direct": "#1a7f37", "relayed": "#0969da", "failed": "#cf222e"}


def paths_svg(days: list[dict], *, title: str) -> str:
    """Calls per day, stacked: direct (green), relayed (blue), failed (red). `days`: dicts with
    day, direct, relayed, failed, oldest first."""
    if not days:
        return '<p class="help">No calls yet.</p>'
    top, bottom = PAD_T, H - PAD_B
    most = max((d["direct"] + d["relayed"] + d["failed"] for d in days), default=0)
    most = max(2, most + most % 2)  # even: the middle gridline is a whole number of calls
    slot = (W - PAD_L - PAD_R) / len(days)
    bar = max(2.0, slot * 0.7)
    parts = _frame(
        title,
        "paths-chart",
        lambda frac, y: (
            f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#57606a">{most * frac:g}</text>'
        ),
    )
    for i, d in enumerate(days):
        x = PAD_L + i * slot + (slot - bar) / 2
        y = float(bottom)
        for key in ("direct", "relayed", "failed"):
            n = d[key]
            if not n:
                continue
            h = n / most * (bottom - top)
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{PATH_COLOURS[key]}"><title>{escape(str(d["day"]))}: {n} {key}</title></rect>'
            )
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            label = d["day"].strftime("%m-%d") if hasattr(d["day"], "strftime") else str(d["day"])
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{H - 10}" text-anchor="middle" fill="#57606a">{escape(label)}</text>'
            )
    legend_x = W - PAD_R - 200
    for j, key in enumerate(("direct", "relayed", "failed")):
        lx = legend_x + j * 68
        parts.append(
            f'<rect x="{lx}" y="{top + 4}" width="10" height="10" fill="{PATH_COLOURS[key]}"/>'
        )
        parts.append(f'<text x="{lx + 14}" y="{top + 13}" fill="#24292f">{key}</text>')
    parts.append("</svg>")
    return "".join(parts)
