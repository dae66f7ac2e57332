#!/usr/bin/env python3
"""Check a bench/run.sh result (compare.py JSON) against the performance targets of issue 5.

    python3 bench/targets.py var/bench/run-<stamp>.json

Prints a markdown section: for each gateway row (label gw-*), the c=1 added p50 over the
direct origin, the req/s ratios against the direct origin next to localtunnel's, and whether the
fastest transport reaches 0.25x (GET c=10) and 0.20x (POST 64 KiB c=10). Ratios are compare.py's
medians of per-round ratios; the added p50 is the median of per-round differences. The peers'
ratios are the measured ones of /work/shared/bench/baseline-2026-11-22.md (lt-py, ssh-py rows),
not from this run. Only the standard library.
"""

from __future__ import annotations

import json
import statistics
import sys

DIRECT = "direct-py"
CELLS = ["get100 c=1", "get100 c=10", "get100 c=50", "post64k c=1", "post64k c=10", "post64k c=50"]
# req/s ratio vs direct-py, baseline-2026-11-22.md (shared/bench), median of 3 rounds
LOCALTUNNEL = {
    "get100 c=1": 0.007,
    "get100 c=10": 0.077,
    "get100 c=50": 0.073,
    "post64k c=1": 0.009,
    "post64k c=10": 0.107,
    "post64k c=50": 0.166,
}
SSH_R = {"get100 c=10": 0.421, "post64k c=10": 0.206}
FASTEST = {"get100 c=10": 0.25, "post64k c=10": 0.20}
ADDED_P50_MS = 1.0


def added_p50(results: dict, label: str, cell: str) -> float | None:
    diffs = []
    if cell not in results[label] or cell not in results[DIRECT]:
        return None
    for a, b in zip(results[label][cell], results[DIRECT][cell], strict=False):
        if a.get("requests") and b.get("requests") and a["p50_ms"] is not None:
            diffs.append(a["p50_ms"] - b["p50_ms"])
    return statistics.median(diffs) if diffs else None


def yes(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


def report(d: dict) -> str:
    results, ratios = d["results"], d.get("ratios", {})
    gws = [t["label"] for t in d["targets"] if t["label"].startswith("gw-")]
    out = ["## Issue 5 targets (this run)", ""]
    if DIRECT not in results or not gws:
        return "\n".join(out + ["No gateway rows or no direct-py row: nothing to check.", ""])

    def rps_ratio(label: str, cell: str) -> float | None:
        return ratios.get(label, {}).get(DIRECT, {}).get(cell, {}).get("rps")

    def errors(label: str, cell: str) -> int:
        return sum(r.get("errors", 0) for r in results[label].get(cell, []))

    out += [
        f"**c=1: added p50 over direct (target <= {ADDED_P50_MS:.1f} ms)**, median of per-round differences",
        "",
        "| row | GET 100 B c=1 | POST 64 KiB c=1 | target |",
        "|---|---:|---:|---|",
    ]
    for g in gws:
        vals = [added_p50(results, g, c) for c in ("get100 c=1", "post64k c=1")]
        ok = None if None in vals else all(v <= ADDED_P50_MS for v in vals)
        out.append(
            "| {} | {} | {} | {} |".format(
                g, *("-" if v is None else f"{v:+.2f} ms" for v in vals), yes(ok)
            )
        )
        # (None in vals: a cell was not measured, no verdict)
    out.append("")

    out += [
        "**req/s ratio vs direct-py** (median of per-round ratios; errors summed over rounds "
        "in brackets when any), next to localtunnel's measured ratio (baseline 2026-11-22)",
        "",
        "| row | " + " | ".join(CELLS) + " |",
        "|---|" + "---:|" * len(CELLS),
    ]
    for g in gws:
        cells = []
        for c in CELLS:
            r = rps_ratio(g, c)
            s = "-" if r is None else f"{r:.3f}"
            if errors(g, c):
                s += " (%d err)" % errors(g, c)
            cells.append(s)
        out.append("| {} | {} |".format(g, " | ".join(cells)))
    out.append(
        "| localtunnel (baseline) | {} |".format(" | ".join(f"{LOCALTUNNEL[c]:.3f}" for c in CELLS))
    )
    out.append(
        "| ssh -R (baseline) | {} |".format(
            " | ".join(f"{SSH_R[c]:.3f}" if c in SSH_R else "" for c in CELLS)
        )
    )
    out.append("")

    out += ["| target | measured | verdict |", "|---|---|---|"]
    longpolls = [g for g in gws if g.startswith("gw-longpoll")]
    for lp in longpolls:
        measured = [c for c in CELLS if rps_ratio(lp, c) is not None]
        below = [c for c in measured if rps_ratio(lp, c) < LOCALTUNNEL[c]]
        out.append(
            "| {} >= localtunnel's ratio in every cell | {} | {} |".format(
                lp,
                "below in: " + ", ".join(below)
                if below
                else "at or above in all %d measured cells" % len(measured),
                yes(not below if measured else None),
            )
        )
    if not longpolls:
        out.append("| long-poll >= localtunnel's ratio in every cell | no long-poll row | - |")
    for cell, goal in FASTEST.items():
        best = max(gws, key=lambda g: rps_ratio(g, cell) or 0)
        r = rps_ratio(best, cell)
        out.append(
            "| fastest transport {} >= {:.2f}x direct (ssh -R: {:.2f}x) | {} {} | {} |".format(
                cell,
                goal,
                SSH_R[cell],
                best,
                "-" if r is None else f"{r:.3f}x",
                yes(None if r is None else r >= goal),
            )
        )
    out.append("")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as fh:
        print(report(json.load(fh)))


if __name__ == "__main__":
    main()
