#!/usr/bin/env python3
"""Charts `cargo bench --bench spin_lock`: each lock's throughput relative to parking_lot, per group.

Reads criterion's results, `target/criterion/<group>/<bench>/new/benchmark.json` (names and
throughput) and `estimates.json` (the mean time per iteration) beside it, and writes one SVG:
a block of bars per group (scenario), one bar per lock, its length the lock's throughput divided
by the baseline's in the same group (1.0x = as fast as parking_lot, longer is faster). Only the
standard library is used.

Usage: python3 benches/chart.py [--criterion DIR] [--baseline NAME] [--out FILE.svg]
"""

import argparse
import json
import os
import sys
from html import escape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Groups of benches/spin_lock.rs, in the order the bench runs them; any other group follows.
GROUP_ORDER = [
    "uncontended",
    "contended_2_threads",
    "oversubscribed_8_threads",
    "random_of_64_8_threads",
    "long_section_4_threads",
    "strict_turns_2_threads",
]

# Layout, in SVG pixels.
LABEL_WIDTH = 260
BAR_AREA = 420
ROW = 18
GROUP_GAP = 30
MARGIN = 12


def load(criterion_dir):
    """{group: {bench name: ops per second}} for every bench with a `new` result."""
    groups = {}
    for dirpath, _, files in os.walk(criterion_dir):
        if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        estimates_path = os.path.join(dirpath, "estimates.json")
        if not os.path.exists(estimates_path):
            continue
        with open(estimates_path) as f:
            estimates = json.load(f)
        nanos = estimates["mean"]["point_estimate"]
        throughput = bench.get("throughput") or {}
        # Elements per iteration (ops); a bench without a throughput counts one per iteration.
        per_iter = next(iter(throughput.values()), 1) if isinstance(throughput, dict) else 1
        name = bench.get("function_id") or bench.get("full_id") or dirpath
        if nanos > 0:
            groups.setdefault(bench["group_id"], {})[name] = per_iter / (nanos * 1e-9)
    return groups


def ratios(groups, baseline):
    """[(group, [(name, ratio)])] in GROUP_ORDER; groups without the baseline are left out."""
    ordered = sorted(
        groups,
        key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g),
    )
    out = []
    for group in ordered:
        peers = groups[group]
        if baseline not in peers:
            print(f"{group}: no {baseline} result, left out", file=sys.stderr)
            continue
        base = peers[baseline]
        out.append((group, sorted(((n, ops / base) for n, ops in peers.items()), key=lambda p: p[0])))
    return out


def colour(name, baseline):
    if name == baseline:
        return "#444444"
    if name.startswith("fencelock"):
        return "#2b6cb0"
    return "#a0aec0"


def svg(rows, baseline):
    """The chart, as SVG text."""
    top = max((r for _, peers in rows for _, r in peers), default=1.0)
    scale = BAR_AREA / max(top, 1.0) / 1.1  # leave room for the labels past the longest bar
    height = MARGIN * 2 + 30 + sum(GROUP_GAP + ROW * len(peers) for _, peers in rows)
    width = MARGIN * 2 + LABEL_WIDTH + BAR_AREA + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 14}" font-size="14" font-weight="bold">'
        f"Throughput relative to {escape(baseline)} (same run; longer is faster)</text>",
    ]
    y = MARGIN + 30
    x0 = MARGIN + LABEL_WIDTH
    for group, peers in rows:
        y += GROUP_GAP
        out.append(f'<text x="{MARGIN}" y="{y - 8}" font-weight="bold">{escape(group)}</text>')
        block_top = y - 4
        for name, ratio in peers:
            bar = max(ratio * scale, 1.0)
            out.append(f'<text x="{x0 - 6}" y="{y + 12}" text-anchor="end">{escape(name)}</text>')
            out.append(
                f'<rect x="{x0}" y="{y + 2}" width="{bar:.1f}" height="{ROW - 4}" '
                f'fill="{colour(name, baseline)}"/>'
            )
            out.append(f'<text x="{x0 + bar + 4:.1f}" y="{y + 12}">{ratio:.2f}x</text>')
            y += ROW
        one = x0 + scale
        out.append(
            f'<line x1="{one:.1f}" y1="{block_top}" x2="{one:.1f}" y2="{y + 2}" '
            'stroke="#c53030" stroke-dasharray="3,2"/>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--criterion", default=os.path.join(ROOT, "target", "criterion"))
    parser.add_argument("--baseline", default="parking_lot::Mutex")
    parser.add_argument("--out", default=None, help="default: <criterion>/relative_to_parking_lot.svg")
    args = parser.parse_args()
    rows = ratios(load(args.criterion), args.baseline)
    if not rows:
        print(f"no results with a {args.baseline} baseline under {args.criterion}", file=sys.stderr)
        return 1
    out = args.out or os.path.join(args.criterion, "relative_to_parking_lot.svg")
    with open(out, "w") as f:
        f.write(svg(rows, args.baseline))
    for group, peers in rows:
        print(group + ": " + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in peers))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
