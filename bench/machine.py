#!/usr/bin/env python3
"""Describe the machine and the software versions a benchmark ran with (markdown or JSON).

    .venv/bin/python bench/machine.py --markdown      # run with the gateway's venv

Reads /proc and asks each tool for its version; only local commands, no network.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _run(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout + p.stderr).strip()


def _first(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    return m.group(1) if m else "not found"


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = Path("/proc/meminfo").read_text()
    bench_py = os.environ.get("BENCH_VENV", str(ROOT / "var/bench/venv")) + "/bin/python"
    origin_versions = _run(
        [
            bench_py,
            "-c",
            "import importlib.metadata as m; print(' / '.join(f'{p} {m.version(p)}' "
            "for p in ('uvicorn', 'uvloop', 'httptools')))",
        ]
    )
    git_head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _first(cpuinfo, r"model name\s*:\s*(.+)"),
        "mem_total_gib": round(int(_first(meminfo, r"MemTotal:\s*(\d+)")) / 1024**2, 1),
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "django": _pkg("Django"),
        "daphne": _pkg("daphne"),
        "twisted": _pkg("Twisted"),
        "redis_py": _pkg("redis"),
        "httpx": _pkg("httpx"),
        "websockets": _pkg("websockets"),
        "redis_server": _first(_run(["redis-server", "--version"]), r"v=(\S+)"),
        "nginx": _first(_run(["nginx", "-v"]), r"nginx/(\S+)"),
        "wrk": _first(_run(["wrk", "--version"]), r"wrk (\S+)"),
        "origin": origin_versions or "not found",
        "git_head": git_head or "unknown",
        "tracked_files_modified": len([x for x in dirty.splitlines() if x.strip()]),
    }


def markdown(d: dict[str, object]) -> str:
    return "\n".join(
        [
            "Machine: {} cores ({}), {} GiB RAM, Linux {}; load average before: {}.".format(
                d["nproc"], d["cpu_model"], d["mem_total_gib"], d["kernel"], " ".join(d["loadavg"])
            ),
            "Software: Python {}, Django {}, Daphne {}, Twisted {}, redis-py {}, Redis {}, "
            "nginx {}, wrk {}, origin {}, client httpx {} / websockets {}.".format(
                d["python"],
                d["django"],
                d["daphne"],
                d["twisted"],
                d["redis_py"],
                d["redis_server"],
                d["nginx"],
                d["wrk"],
                d["origin"],
                d["httpx"],
                d["websockets"],
            ),
            "Code: git HEAD %s with %d tracked file(s) modified in the working tree "
            "(the run measures the working tree)." % (d["git_head"], d["tracked_files_modified"]),
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    d = describe()
    sys.stdout.write(markdown(d) if a.markdown else json.dumps(d, indent=1) + "\n")


if __name__ == "__main__":
    main()
