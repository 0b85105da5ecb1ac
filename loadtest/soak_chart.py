#!/usr/bin/env python3
"""Draws a soak report (loadtest soak --json) as an SVG: RSS per node (MiB),
open descriptors per node and Redis memory (MiB) against minutes, each
series scaled to its own panel. No dependencies.

Usage: loadtest/soak_chart.py REPORT.json OUT.svg
"""

import json
import sys

W, PANEL_H, PAD_L, PAD_R, PAD_T, GAP = 720, 150, 70, 20, 30, 40
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def panel(y0, title, series, minutes, unit):
    out = []
    values = [v for s in series.values() for v in s if v is not None]
    if not values:
        return out
    lo, hi = 0, max(values) * 1.15 or 1
    x_of = lambda m: PAD_L + (W - PAD_L - PAD_R) * (m / max(minutes[-1], 1))
    y_of = lambda v: y0 + PANEL_H - PANEL_H * (v - lo) / (hi - lo)
    out.append(f'<text x="{PAD_L}" y="{y0 - 8}" font-size="13" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{PAD_L}" y="{y0}" width="{W - PAD_L - PAD_R}" height="{PANEL_H}" fill="none" stroke="#ccc"/>')
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        out.append(f'<text x="{PAD_L - 6}" y="{y_of(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.0f}{unit}</text>')
    for i, (name, points) in enumerate(series.items()):
        coords = " ".join(f"{x_of(m):.1f},{y_of(v):.1f}" for m, v in zip(minutes, points) if v is not None)
        color = COLORS[i % len(COLORS)]
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{W - PAD_R - 4}" y="{y0 + 16 + 14 * i}" font-size="11" text-anchor="end" fill="{color}">{name}</text>')
    return out


def main():
    report = json.load(open(sys.argv[1]))
    samples = report["samples"]
    minutes = [s["elapsed_secs"] / 60 for s in samples]
    nodes = len(samples[0]["rss_bytes"])
    panels = [
        ("Gateway RSS", {f"node {n + 1}": [s["rss_bytes"][n] / 2**20 for s in samples] for n in range(nodes)}, " MiB"),
        ("Open file descriptors", {f"node {n + 1}": [s["open_fds"][n] for s in samples] for n in range(nodes)}, ""),
        ("Runtime tasks", {f"node {n + 1}": [s["runtime_tasks"][n] if n < len(s["runtime_tasks"]) else None for s in samples] for n in range(nodes)}, ""),
        ("Redis used_memory", {"redis": [s["redis_used_memory"] / 2**20 if s.get("redis_used_memory") else None for s in samples]}, " MiB"),
    ]
    height = PAD_T + len(panels) * (PANEL_H + GAP) + 20
    body = []
    for i, (title, series, unit) in enumerate(panels):
        body += panel(PAD_T + i * (PANEL_H + GAP), title, series, minutes, unit)
    axis_y = PAD_T + len(panels) * (PANEL_H + GAP) - GAP + 16
    body.append(f'<text x="{(W + PAD_L) / 2}" y="{axis_y}" font-size="11" text-anchor="middle">minutes (0 to {minutes[-1]:.0f})</text>')
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif">\n' + "\n".join(body) + "\n</svg>\n"
    open(sys.argv[2], "w").write(svg)


if __name__ == "__main__":
    main()
