#!/usr/bin/env python3
# Copied from /work/shared/bench/compare.py (the peers baseline of 2026-11-22, shared/bench/README.md);
# unchanged but for this note. Used by bench/run.sh and bench/scaleout.sh (docs/benchmarks.md).
"""Run several HTTP targets interleaved with wrk and print medians and ratios.

Each target is given as  --target LABEL URL [key=value ...]  with keys:
  host=NAME        Host header to send (name-based routing, e.g. a tunnel name)
  get=/path        GET path appended to URL      (default --get-path, /hello)
  post=/path       POST echo path appended to URL (default --post-path, /echo)
  vs=L1,L2         labels to compute ratios against (default: --vs, else none)
  pids=P1,P2       processes whose CPU time and peak RSS to report
                   (their descendants are included: pass an nginx master, a
                   uvicorn/daphne parent, the relay server and the relay client)
  header=K:V       extra request header (repeatable)

Interleaving: for each round, for each (case, concurrency), every target is run
once, in an order rotated each round, so slow drift on a shared machine hits
all targets alike. Ratios are computed per round (target / baseline measured
seconds apart) and the median of those per-round ratios is reported.

    python compare.py --rounds 3 --duration 10 \\
      --target direct-py http://127.0.0.1:18201 \\
      --target nginx-py  http://127.0.0.1:18203 vs=direct-py \\
      --target gw-py     http://127.0.0.1:8000 host=bench.gw.test vs=direct-py,nginx-py pids=1234,5678 \\
      --json results.json --markdown results.md

--cells get100:1,post64k:10 picks explicit (case, concurrency) cells instead of
--cases x --conc.  `python compare.py --from-json results.json` re-prints the
tables of a saved run without measuring anything.

Needs wrk and Python 3.8+ (no packages). Only point it at this machine.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wrkbench  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc helpers
def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def expand_tree(roots):
    kids = _children_map()
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def proc_sample(pid):
    """(cpu_seconds, rss_kB, hwm_kB, name) or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
    except OSError:
        return None
    name = st[st.index("(") + 1:st.rindex(")")]
    fields = st[st.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK  # utime + stime
    rss = hwm = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return cpu, rss, hwm, name


class Watch:
    """CPU time and RSS of a set of process trees."""

    def __init__(self, roots):
        self.roots = roots
        self.pids = expand_tree(roots) if roots else []
        self.idle_rss = {p: (proc_sample(p) or (0, 0, 0, "?"))[1] for p in self.pids}

    def cpu(self):
        tot = 0.0
        for p in self.pids:
            s = proc_sample(p)
            if s:
                tot += s[0]
        return tot

    def memory(self):
        rows = []
        for p in self.pids:
            s = proc_sample(p)
            if s:
                rows.append({"pid": p, "name": s[3], "idle_rss_kb": self.idle_rss.get(p, 0),
                             "rss_kb": s[1], "peak_rss_kb": s[2]})
        return rows


# ---------------------------------------------------------------- CLI parsing
def parse_targets(specs, default_vs, get_path, post_path):
    targets = []
    for spec in specs:
        if len(spec) < 2:
            sys.exit("--target needs LABEL URL [key=value ...]")
        label, url = spec[0], spec[1]
        opts = {"host": None, "get": get_path, "post": post_path,
                "vs": default_vs, "pids": [], "headers": []}
        for kv in spec[2:]:
            k, sep, v = kv.partition("=")
            if not sep:
                sys.exit("bad target option %r (want key=value)" % kv)
            if k == "host":
                opts["host"] = v
            elif k in ("get", "post"):
                opts[k] = v
            elif k == "vs":
                opts["vs"] = [x for x in v.split(",") if x]
            elif k == "pids":
                opts["pids"] = [int(x) for x in v.split(",") if x]
            elif k == "header":
                opts["headers"].append(v)
            else:
                sys.exit("unknown target option %r" % k)
        t = wrkbench.Target(url, opts["host"], opts["get"], opts["post"], opts["headers"])
        targets.append({"label": label, "target": t, "vs": opts["vs"], "pids": opts["pids"]})
    labels = [x["label"] for x in targets]
    for x in targets:
        x["vs"] = [v for v in x["vs"] if v != x["label"]]
        for v in x["vs"]:
            if v not in labels:
                sys.exit("target %s: vs=%s is not a target label" % (x["label"], v))
    return targets


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(meta, targets, results, cells, memory):
    """Markdown summary + machine-readable summary/ratios.

    targets: list of {"label", "vs", "pids"}; results[label][(case, conc)] -> per-round dicts.
    """
    def ok(r):
        return r.get("requests", 0) > 0

    def ratio_list(label, base, cell, key):
        out = []
        for ra, rb in zip(results[label][cell], results[base][cell]):
            if key != "rps" and not (ok(ra) and ok(rb)):
                continue
            va, vb = ra.get(key), rb.get(key)
            if va is not None and vb:
                out.append(va / vb)
        return out

    def f(x, fmt):
        return fmt % x if x is not None else "-"

    summary = {}
    for x in targets:
        L = x["label"]
        summary[L] = {}
        for cell in cells:
            rs = results[L][cell]
            good = [r for r in rs if ok(r)]
            s = {"rps": med([r["rps"] for r in rs]),
                 "p50_ms": med([r["p50_ms"] for r in good]),
                 "p99_ms": med([r["p99_ms"] for r in good]),
                 "errors": sum(r["errors"] for r in rs),
                 "failed_runs": len(rs) - len(good),
                 "runs": len(rs),
                 "short_echo": any(r["case"] == "post64k" and ok(r) and
                                   r["bytes_per_req"] < 0.99 * wrkbench.POST_BYTES for r in rs)}
            cpu = ([1e6 * r["relay_cpu_s"] / r["requests"] for r in good if "relay_cpu_s" in r]
                   if x["pids"] else [])
            s["relay_cpu_ms_per_1k"] = med(cpu)
            summary[L]["%s c=%d" % cell] = s

    lines = []
    lines.append("### Medians of %d interleaved rounds, %ds per wrk run, wrk -t%d --latency"
                 % (meta["rounds"], meta["duration"], meta["threads"]))
    lines.append("")
    cases = []
    for c, _ in cells:
        if c not in cases:
            cases.append(c)
    for case in cases:
        cc = [n for c, n in cells if c == case]
        lines.append("**%s** - req/s, p50 ms, p99 ms per concurrency; errors = failed requests "
                     "summed over all rounds (wrk socket errors + non-2xx)" % case)
        lines.append("")
        lines.append("| target | " + " | ".join("c=%d req/s | p50 | p99" % n for n in cc) + " | errors |")
        lines.append("|---|" + "---:|---:|---:|" * len(cc) + "---:|")
        for x in targets:
            L = x["label"]
            row, errs, notes = [], 0, ""
            for n in cc:
                s = summary[L]["%s c=%d" % (case, n)]
                errs += s["errors"]
                cellnote = ""
                if s["failed_runs"]:
                    cellnote = " (%d/%d runs failed)" % (s["failed_runs"], s["runs"])
                if s["short_echo"]:
                    notes = " SHORT-ECHO"
                row += [f(s["rps"], "%.0f") + cellnote, f(s["p50_ms"], "%.2f"), f(s["p99_ms"], "%.2f")]
            lines.append("| %s | %s | %d%s |" % (L, " | ".join(row), errs, notes))
        lines.append("")

    if any(x["pids"] for x in targets):
        lines.append("**Relay CPU** - CPU time (user+sys) of the watched processes per 1000 requests, ms (median)")
        lines.append("")
        lines.append("| target | " + " | ".join("%s c=%d" % cell for cell in cells) + " |")
        lines.append("|---|" + "---:|" * len(cells))
        for x in targets:
            if x["pids"]:
                lines.append("| %s | %s |" % (x["label"], " | ".join(
                    f(summary[x["label"]]["%s c=%d" % cell]["relay_cpu_ms_per_1k"], "%.0f") for cell in cells)))
        lines.append("")

    ratios = {}
    if any(x["vs"] for x in targets):
        lines.append("### Ratios: median of per-round ratios, target / baseline, as req/s x, p50 x, p99 x")
        lines.append("(req/s: higher is better; latency: lower is better)")
        lines.append("")
        lines.append("| target | vs | " + " | ".join("%s c=%d" % cell for cell in cells) + " |")
        lines.append("|---|---|" + "---:|" * len(cells))
        for x in targets:
            for base in x["vs"]:
                row = []
                for cell in cells:
                    rr = {k: med(ratio_list(x["label"], base, cell, k)) for k in ("rps", "p50_ms", "p99_ms")}
                    ratios.setdefault(x["label"], {}).setdefault(base, {})["%s c=%d" % cell] = rr
                    row.append("%s / %s / %s" % (f(rr["rps"], "%.3f"), f(rr["p50_ms"], "%.2f"),
                                                 f(rr["p99_ms"], "%.2f")))
                lines.append("| %s | %s | %s |" % (x["label"], base, " | ".join(row)))
        lines.append("")

    if memory:
        lines.append("### Relay processes: RSS before the first run and peak RSS (VmHWM) at the end")
        lines.append("")
        lines.append("| target | pid | process | idle RSS MiB | peak RSS MiB |")
        lines.append("|---|---:|---|---:|---:|")
        for x in targets:
            rows = memory.get(x["label"]) or []
            for m in rows:
                lines.append("| %s | %d | %s | %.1f | %.1f |" % (
                    x["label"], m["pid"], m["name"], m["idle_rss_kb"] / 1024, m["peak_rss_kb"] / 1024))
            if len(rows) > 1:
                lines.append("| %s | | (sum) | %.1f | %.1f |" % (
                    x["label"], sum(m["idle_rss_kb"] for m in rows) / 1024,
                    sum(m["peak_rss_kb"] for m in rows) / 1024))
        lines.append("")
    return "\n".join(lines), summary, ratios


def from_json(path):
    with open(path) as fh:
        d = json.load(fh)
    targets = [{"label": t["label"], "vs": t["vs"], "pids": t["pids"]} for t in d["targets"]]
    results, cells = {}, []
    for L, v in d["results"].items():
        results[L] = {}
        for key, rs in v.items():
            case, _, c = key.partition(" c=")
            cell = (case, int(c))
            if cell not in cells:
                cells.append(cell)
            results[L][cell] = rs
    meta = {"rounds": d["rounds"], "duration": d["duration"], "threads": d["threads"]}
    return summarize(meta, targets, results, cells, d.get("memory") or {})[0]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--from-json":
        print(from_json(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", nargs="+", action="append", required=True,
                    metavar="LABEL URL [k=v]", help="see above (repeatable)")
    ap.add_argument("--vs", default="", help="default baseline labels for ratios, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target and case (0: none)")
    ap.add_argument("--json", help="write all raw results here")
    ap.add_argument("--markdown", help="write the summary tables here too")
    ap.add_argument("--cells", help="explicit CASE:CONC list instead of --cases x --conc, "
                                    "e.g. get100:1,get100:50,post64k:1")
    wrkbench.add_target_args(ap)
    a = ap.parse_args()

    targets = parse_targets(a.target, [x for x in a.vs.split(",") if x], a.get_path, a.post_path)
    if a.cells:
        cells = []
        for x in a.cells.split(","):
            c, _, n = x.partition(":")
            if c not in wrkbench.CASES or not n.isdigit():
                sys.exit("bad --cells entry %r (want CASE:CONC)" % x)
            cells.append((c, int(n)))
    else:
        cells = [(c, int(n)) for c in a.cases.split(",") for n in a.conc.split(",")]
    cases = []
    for c, _ in cells:
        if c not in cases:
            cases.append(c)

    if not a.no_check:
        for x in targets:
            wrkbench.preflight(x["target"])
    for x in targets:
        x["watch"] = Watch(x["pids"])
    if a.warmup:
        for x in targets:
            for c in cases:
                wrkbench.run_wrk(x["target"], c, 10, a.warmup, a.threads, a.timeout)

    # results[label][(case, conc)] -> list of per-round dicts
    results = {x["label"]: {cell: [] for cell in cells} for x in targets}
    t0 = time.time()
    total = a.rounds * len(cells) * len(targets)
    done = 0
    for rnd in range(a.rounds):
        for cell in cells:
            k = (rnd * len(cells) + cells.index(cell)) % len(targets)
            order = targets[k:] + targets[:k]
            for x in order:
                cpu0 = x["watch"].cpu()
                r = wrkbench.run_wrk(x["target"], cell[0], cell[1], a.duration, a.threads, a.timeout)
                cpu1 = x["watch"].cpu()
                r["relay_cpu_s"] = cpu1 - cpu0
                r["round"] = rnd
                raw = r.pop("raw")
                if r["requests"] == 0:
                    r["raw"] = raw
                results[x["label"]][cell].append(r)
                done += 1
                print("[%3d/%d %5.0fs] r%d " % (done, total, time.time() - t0, rnd)
                      + wrkbench.fmt_line(x["label"], r), flush=True)

    memory = {x["label"]: x["watch"].memory() for x in targets if x["pids"]}
    meta = {"rounds": a.rounds, "duration": a.duration, "threads": a.threads}
    text, summary, ratios = summarize(meta, targets, results, cells, memory)
    print()
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text + "\n")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({
                "argv": sys.argv, "started": t0, "rounds": a.rounds, "duration": a.duration,
                "threads": a.threads, "nproc": os.cpu_count(),
                "targets": [{"label": x["label"], "url": x["target"].url,
                             "host": x["target"].host_header, "vs": x["vs"],
                             "pids": x["watch"].pids} for x in targets],
                "results": {L: {"%s c=%d" % cell: rs for cell, rs in v.items()}
                            for L, v in results.items()},
                "summary": summary, "ratios": ratios, "memory": memory,
            }, fh, indent=1)


if __name__ == "__main__":
    main()
