#!/usr/bin/env python3
# Copied from /work/shared/bench/origin.py (the peers baseline of 2026-11-22, shared/bench/README.md);
# unchanged but for this note. Used by bench/run.sh and bench/scaleout.sh (docs/benchmarks.md).
"""Benchmark origin: a tiny ASGI app served by uvicorn (uvloop + httptools).

  GET  <any path>   -> 200, a fixed 100-byte text body
  POST <any path>   -> 200, the request body echoed back (application/octet-stream)

This is the "ordinary local app" that tunnel clients forward to. It has no
dependencies beyond `uvicorn[standard]` (see requirements.txt).

    python origin.py --port 18201            # listens on 127.0.0.1 only
"""
import argparse

# Exactly 100 bytes, newline included.
HELLO = (b"hello from the bench origin " + b"." * 71 + b"\n")
assert len(HELLO) == 100, len(HELLO)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return

    if scope["method"] in ("POST", "PUT"):
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        ctype = b"application/octet-stream"
    else:
        body = HELLO
        ctype = b"text/plain"

    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18201)
    args = ap.parse_args()

    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False,
                lifespan="on")


if __name__ == "__main__":
    main()
