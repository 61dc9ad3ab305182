"""Draws the learning curve of a training run as a small SVG (no plotting library needed), and prints it as a
Markdown table: STS Spearman against training minutes, one line per Matryoshka dim, and nDCG@10 at the full dim on
each retrieval set the run evaluated (--eval-retrieval), from the learning_curve.jsonl files
`train_embeddinggemma.py train --eval-sts-file ... --eval-every-minutes N` writes (stages in order; a later stage's
records already carry the earlier stages' minutes, see --curve-offset-minutes).

    python experiments/plot_learning_curve.py RUN/learning_curve.jsonl [MORE.jsonl ...] --output docs/curve.svg
        [--title TEXT] [--teacher 88.12,87.85]
"""

import argparse
import json
import sys
from pathlib import Path


COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def read_curve(paths: list[str]) -> list[dict]:
    """The records of every file, by training minutes; a later stage's step-0 record evaluates the model the stage
    before ended with, so it is left out."""
    records = {}
    for number, path in enumerate(paths):
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else None
            if record and not (number and record["step"] == 0):
                records[record["minutes"]] = record
    if not records:
        raise ValueError(f"No evaluation records in {', '.join(paths)}.")
    return [records[m] for m in sorted(records)]


def series(records: list[dict]) -> list[tuple[str, list[tuple[float, float]]]]:
    """(label, [(minutes, value)]) per line: STS Spearman per dim, then nDCG@10 at the first (full) dim per set."""
    lines = {}
    for r in records:
        for dim, value in r.get("spearman", {}).items():
            lines.setdefault(f"{dim} dims", []).append((r["minutes"], value))
        for name, dims in r.get("ndcg@10", {}).items():
            dim, value = next(iter(dims.items()))
            lines.setdefault(f"{name} nDCG@10 ({dim})", []).append((r["minutes"], value))
    return list(lines.items())


def table(records: list[dict]) -> str:
    dims = list(dict.fromkeys(d for r in records for d in r.get("spearman", {})))
    sets = list(dict.fromkeys((n, next(iter(ds))) for r in records for n, ds in r.get("ndcg@10", {}).items()))
    heads = dims + [f"{name} nDCG@10 ({dim})" for name, dim in sets]
    lines = ["| training minutes | step | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    for r in records:
        values = [r.get("spearman", {}).get(d) for d in dims]
        values += [r.get("ndcg@10", {}).get(name, {}).get(dim) for name, dim in sets]
        shown = " | ".join("" if v is None else f"{v:.2f}" for v in values)
        lines.append(f"| {r['minutes']:.1f} | {r['step']} | {shown} |")
    return "\n".join(lines)


def svg(records: list[dict], title: str, teacher: list[float] | None = None, width=640, height=320) -> str:
    left, right, top, bottom = 48, 190, 28, 36
    lines = series(records)
    xs = [r["minutes"] for r in records]
    values = [v for _, points in lines for _, v in points] + (teacher or [])
    x_max = max(xs) or 1.0
    y_low, y_high = 10 * (min(values) // 10), min(100.0, 10 * (max(values) // 10 + 1))

    def x(m):
        return left + (width - left - right) * m / x_max

    def y(v):
        return top + (height - top - bottom) * (y_high - v) / (y_high - y_low)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" font-size="12">{title}</text>',
    ]
    for tick in range(int(y_low), int(y_high) + 1, 10):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    step = 10 if x_max > 20 else 1 if x_max <= 5 else 5
    for tick in range(0, int(x_max) + 1, step):
        out.append(f'<text x="{x(tick):.1f}" y="{height - bottom + 14}" text-anchor="middle">{tick}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">training minutes</text>')
    out.append(f'<text x="12" y="{top - 8}">{"Spearman / nDCG@10" if len(lines) > 4 else "Spearman"}</text>')
    for i, (label, points) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="1 2"' if "nDCG" in label else ""
        drawn = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in points)
        out.append(f'<polyline points="{drawn}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        for m, v in points:
            out.append(f'<circle cx="{x(m):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}"/>')
        legend_y = top + 14 * i
        out.append(
            f'<line x1="{width - right + 8}" x2="{width - right + 24}" y1="{legend_y}" y2="{legend_y}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{width - right + 28}" y="{legend_y + 4}">{label}</text>')
        if teacher and i < len(teacher) and "nDCG" not in label:
            out.append(
                f'<line x1="{left}" x2="{width - right}" y1="{y(teacher[i]):.1f}" y2="{y(teacher[i]):.1f}" '
                f'stroke="{colour}" stroke-dasharray="4 3" stroke-width="1"/>'
            )
    if teacher:
        out.append(f'<text x="{width - right + 8}" y="{top + 14 * len(lines) + 4}">- - teacher (STS-B)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", nargs="+")
    parser.add_argument("--output", required=True, help="the SVG to write")
    parser.add_argument("--title", default="STS-B test Spearman (STS prompt) and retrieval nDCG@10 during training")
    parser.add_argument("--teacher", type=lambda v: [float(x) for x in v.split(",")], help="teacher scores per dim")
    args = parser.parse_args(argv)
    try:
        records = read_curve(args.curves)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    Path(args.output).write_text(svg(records, args.title, args.teacher), encoding="utf-8")
    print(table(records))
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
