#!/usr/bin/env python3
# Copied from /work/shared/bench/wrkbench.py (the peers baseline of 2026-11-22, shared/bench/README.md);
# unchanged but for this note. Used by bench/run.sh and bench/scaleout.sh (docs/benchmarks.md).
"""Drive wrk against one HTTP target and print one line per (case, concurrency).

Cases:
  get100   GET  BASE_URL + --get-path   (the origin answers ~100 bytes)
  post64k  POST BASE_URL + --post-path  with a 64 KiB body that the origin echoes

The target is generic: any base URL (with or without a path prefix) plus an
optional Host header, so the same script measures an origin directly, a reverse
proxy, a tunnel relay, or the Reverse HTTP gateway's public URL.

    python wrkbench.py http://127.0.0.1:18201
    python wrkbench.py http://127.0.0.1:18210 --host-header benchpy.lt.test
    python wrkbench.py http://127.0.0.1:8000/t/bench --conc 1,10 --duration 5

Before loading, a preflight sends one GET and one POST with Python's http.client
and checks the status and that the POST body comes back byte for byte (turn off
with --no-check). wrk's own counters (non-2xx, socket errors) and the bytes read
per request are reported so that a broken relay can't pass as a fast one.

Needs: wrk (Debian package 'wrk'), Python 3.8+, nothing else.
Only point it at addresses on this machine.
"""
import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

POST_BYTES = 65536
CASES = ("get100", "post64k")

_UNITS_T = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_UNITS_B = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def _ms(tok):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", tok)
    if not m:
        raise ValueError("bad wrk time %r" % tok)
    return float(m.group(1)) * _UNITS_T[m.group(2)]


def _bytes(tok):
    m = re.fullmatch(r"([\d.]+)(B|KB|MB|GB|TB)", tok)
    if not m:
        raise ValueError("bad wrk size %r" % tok)
    return float(m.group(1)) * _UNITS_B[m.group(2)]


def parse_wrk(out):
    """Parse `wrk --latency` output into a dict (ms for times)."""
    r = {"rps": 0.0, "p50_ms": None, "p75_ms": None, "p90_ms": None,
         "p99_ms": None, "requests": 0, "seconds": None, "bytes": 0.0,
         "non2xx": 0, "sock_connect": 0, "sock_read": 0, "sock_write": 0,
         "sock_timeout": 0}
    for line in out.splitlines():
        s = line.strip()
        m = re.match(r"(50|75|90|99)%\s+(\S+)$", s)
        if m:
            r["p%s_ms" % m.group(1)] = _ms(m.group(2))
            continue
        m = re.match(r"(\d+) requests in ([\d.]+\w+), (\S+) read", s)
        if m:
            r["requests"] = int(m.group(1))
            r["seconds"] = _ms(m.group(2)) / 1e3
            r["bytes"] = _bytes(m.group(3))
            continue
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            (r["sock_connect"], r["sock_read"], r["sock_write"],
             r["sock_timeout"]) = map(int, m.groups())
            continue
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            r["non2xx"] = int(m.group(1))
            continue
        m = re.match(r"Requests/sec:\s+([\d.]+)", s)
        if m:
            r["rps"] = float(m.group(1))
    r["bytes_per_req"] = (r["bytes"] / r["requests"]) if r["requests"] else 0.0
    r["errors"] = (r["non2xx"] + r["sock_connect"] + r["sock_read"] +
                   r["sock_write"] + r["sock_timeout"])
    return r


def join_url(base, path):
    return base.rstrip("/") + "/" + path.lstrip("/") if path else base


_LUA_POST = """wrk.method = "POST"
wrk.body = string.rep("0123456789abcdef", %d)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


class Target:
    """A base URL plus how to reach the two cases."""

    def __init__(self, url, host_header=None, get_path="/hello",
                 post_path="/echo", headers=None):
        self.url = url
        self.host_header = host_header
        self.get_url = join_url(url, get_path)
        self.post_url = join_url(url, post_path)
        self.headers = list(headers or [])

    def wrk_headers(self):
        h = []
        if self.host_header:
            h += ["-H", "Host: %s" % self.host_header]
        for x in self.headers:
            h += ["-H", x]
        return h

    def describe(self):
        return self.url + (" (Host: %s)" % self.host_header if self.host_header else "")


def preflight(t, post_bytes=POST_BYTES, timeout=10):
    """One GET and one echo POST through the target; raise on mismatch."""
    problems = []
    for method, url in (("GET", t.get_url), ("POST", t.post_url)):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        hdrs = {}
        if t.host_header:
            hdrs["Host"] = t.host_header
        for x in t.headers:
            k, _, v = x.partition(":")
            hdrs[k.strip()] = v.strip()
        body = None
        if method == "POST":
            body = os.urandom(post_bytes)
            hdrs["Content-Type"] = "application/octet-stream"
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            problems.append("%s %s: %s" % (method, url, e))
            continue
        finally:
            conn.close()
        if resp.status != 200:
            problems.append("%s %s: status %d" % (method, url, resp.status))
        elif method == "GET" and not data:
            problems.append("GET %s: empty body" % url)
        elif method == "POST" and data != body:
            problems.append("POST %s: echo mismatch (%d bytes back, want %d)"
                            % (url, len(data), len(body)))
    if problems:
        raise RuntimeError("preflight failed for %s: %s" % (t.describe(), "; ".join(problems)))


def run_wrk(t, case, conc, duration, threads=1, timeout="10s", post_bytes=POST_BYTES):
    """Run one wrk measurement; returns the parsed dict plus the raw output."""
    if case not in CASES:
        raise ValueError(case)
    threads = max(1, min(threads, conc))
    cmd = ["wrk", "--latency", "-t%d" % threads, "-c%d" % conc,
           "-d%ss" % duration, "--timeout", timeout] + t.wrk_headers()
    script = None
    if case == "post64k":
        if post_bytes % 16:
            raise ValueError("post_bytes must be a multiple of 16")
        fd, script = tempfile.mkstemp(prefix="wrk-post-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(_LUA_POST % (post_bytes // 16))
        cmd += ["-s", script, t.post_url]
    else:
        cmd += [t.get_url]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=float(duration) + 60)
        out = p.stdout
    finally:
        if script:
            os.unlink(script)
    r = parse_wrk(out)
    r.update(case=case, conc=conc, threads=threads, duration=duration, raw=out)
    # sanity: an echo that does not carry the body back is a failure, not a win
    # (wrk prints the byte total with 3 significant digits, hence the 1% slack)
    if case == "post64k" and r["requests"] and r["bytes_per_req"] < 0.99 * post_bytes:
        r["short_bodies"] = True
    return r


def fmt_line(label, r):
    def f(x):
        return "-" if x is None else ("%.3f" % x)
    s = "%-14s case=%-7s c=%-3d rps=%10.1f p50_ms=%8s p99_ms=%8s" % (
        label, r["case"], r["conc"], r["rps"], f(r["p50_ms"]), f(r["p99_ms"]))
    s += " errors=%d" % r["errors"]
    if r["errors"]:
        s += " (non2xx=%d connect=%d read=%d write=%d timeout=%d)" % (
            r["non2xx"], r["sock_connect"], r["sock_read"], r["sock_write"], r["sock_timeout"])
    s += " B/req=%.0f" % r["bytes_per_req"]
    if r.get("short_bodies"):
        s += " SHORT-ECHO"
    return s


def add_target_args(ap):
    ap.add_argument("--get-path", default="/hello", help="path appended to URL for the GET case")
    ap.add_argument("--post-path", default="/echo", help="path appended to URL for the POST echo case")
    ap.add_argument("--conc", default="1,10,50", help="comma-separated concurrencies (wrk -c)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: get100,post64k")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--threads", type=int, default=1,
                    help="wrk threads (default 1: the load generator shares the cores)")
    ap.add_argument("--timeout", default="10s", help="wrk --timeout")
    ap.add_argument("--no-check", action="store_true", help="skip the GET/echo preflight")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="target base URL, e.g. http://127.0.0.1:18201")
    ap.add_argument("--host-header", help="Host header to send (name-based routing)")
    ap.add_argument("-H", "--header", action="append", default=[], help="extra header 'K: V' (repeatable)")
    ap.add_argument("--label", default="target")
    add_target_args(ap)
    ap.add_argument("--raw", action="store_true", help="also print wrk's raw output")
    a = ap.parse_args()

    if not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install wrk)")
    t = Target(a.url, a.host_header, a.get_path, a.post_path, a.header)
    if not a.no_check:
        preflight(t)
    for case in a.cases.split(","):
        for c in [int(x) for x in a.conc.split(",")]:
            r = run_wrk(t, case, c, a.duration, a.threads, a.timeout)
            print(fmt_line(a.label, r), flush=True)
            if a.raw:
                print(r["raw"])


if __name__ == "__main__":
    main()
