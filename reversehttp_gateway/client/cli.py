"""The ``reversehttp`` command: expose a local server, or serve an ASGI/WSGI app, via a gateway.

    reversehttp expose http://localhost:8000 --gateway URL --name NAME [--token T] [--pollers N]
    reversehttp serve module:app --gateway URL --name NAME [...]
    ... [--transport longpoll|websocket|ptth] [--ptth HOST:PORT]

Prints the public URL, then one line per relayed request; Ctrl-C or SIGTERM stops it after
DELETE-ing the registration (exit status 0). Exit statuses: 2 usage error (or an app that cannot
be loaded), 3 gateway unreachable, 4 registration refused (invalid name, name taken, bad or
missing token), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from .errors import ClientError, GatewayUnreachable, RegistrationRefused
from .handlers import AsgiHandler, ForwardHandler, Handler, WsgiHandler, is_asgi_app
from .ptth import parse_ptth_address
from .registration import normalize_service_url
from .runner import TRANSPORTS, AsyncGatewayClient

__all__ = ["LOOPS", "load_app", "loop_factory", "main"]

LOOPS = ("auto", "uvloop", "asyncio")

PROG = "reversehttp"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130

logger = logging.getLogger("reversehttp_gateway.client")


class UsageError(Exception):
    """A problem with the command line or the application to load."""


def load_app(spec: str, app_dir: str = ".") -> object:
    """Import ``"package.module:attribute"`` (default attribute: ``app``, then ``application``).

    ``app_dir`` is put first on ``sys.path``, like uvicorn and gunicorn do.

    Raises:
        UsageError: the module cannot be imported or has no such attribute.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise UsageError(f"expected module:attribute, got {spec!r}")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    candidates = [attribute] if attribute else ["app", "application"]
    for candidate in candidates:
        target: object = module
        try:
            for part in candidate.split("."):
                target = getattr(target, part)
        except AttributeError:
            continue
        return target
    raise UsageError(f"module {module_name!r} has no attribute {' or '.join(candidates)!r}")


def _refusal_hint(error: RegistrationRefused) -> str:
    if error.status == 400:
        return " (names are DNS labels: 1-63 letters, digits and hyphens)"
    if error.status == 401:
        return " (this gateway needs a valid --access-token)"
    if error.status == 403 and "bad token" in error.message.lower():
        return " (the name is taken, or was registered with another --token)"
    return ""


class LineFormatter(logging.Formatter):
    """``HH:MM:SS message``, the time of day formatted once a second: the format of the request
    lines, of which there is one per relayed request (``strftime`` per line was a fifth of its
    cost). Records with exception or stack information are formatted as usual."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", "%H:%M:%S")
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._stamp} {record.getMessage()}"


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure_logging(verbosity: int) -> None:
    """Request lines and progress on stdout, warnings and errors on stderr.

    A line per relayed request: this process's formats use neither the caller's file and line
    nor thread or process names, so logging does not look them up (the logging HOWTO's
    "Optimization"); the time of day is formatted once a second.
    """
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging._srcfile = None  # type: ignore[attr-defined]  # no findCaller() per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    out.setFormatter(LineFormatter())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger.handlers[:] = [out, err]
    logger.setLevel(level)
    logger.propagate = False


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Serve HTTP from behind NAT through a Reverse HTTP gateway."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--gateway",
        default=os.environ.get("REVERSEHTTP_GATEWAY"),
        required="REVERSEHTTP_GATEWAY" not in os.environ,
        help="the gateway's Service URL, e.g. https://gw.example/reversehttp "
        "(a bare https://gw.example gets /reversehttp; env REVERSEHTTP_GATEWAY)",
    )
    common.add_argument("--name", required=True, help="the label to claim, e.g. 'demo'")
    common.add_argument(
        "--token",
        default=os.environ.get("REVERSEHTTP_TOKEN"),
        help="the label's secret; reuse it to claim the same name again later "
        "(random if omitted; env REVERSEHTTP_TOKEN)",
    )
    common.add_argument(
        "--access-token",
        default=os.environ.get("REVERSEHTTP_ACCESS_TOKEN"),
        help="enrolment token sent as 'Authorization: Bearer', for gateways that require one "
        "(env REVERSEHTTP_ACCESS_TOKEN)",
    )
    common.add_argument(
        "--pollers",
        type=_positive,
        default=4,
        help="concurrent requests: long-polls, requests on the WebSocket, or PTTH sockets "
        "(default 4)",
    )
    common.add_argument(
        "--pipeline",
        action="store_true",
        default=os.environ.get("REVERSEHTTP_PIPELINE", "") not in ("", "0"),
        help="long-poll: let one poll take several queued requests (application/http), answered "
        "concurrently and replied to together; fewer round trips under load (env "
        "REVERSEHTTP_PIPELINE=1)",
    )
    common.add_argument(
        "--no-chain",
        dest="chain",
        action="store_false",
        default=os.environ.get("REVERSEHTTP_CHAIN", "1") not in ("", "0"),
        help="long-poll: do not ask for the next request with each reply (Reversehttp-Poll); "
        "GET it separately, as classic clients do (env REVERSEHTTP_CHAIN=0)",
    )
    common.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=os.environ.get("REVERSEHTTP_TRANSPORT", "longpoll"),
        help="how to receive requests: longpoll (default, plain HTTP), websocket (one "
        "multiplexed WebSocket, streams large bodies) or ptth (needs --ptth; env "
        "REVERSEHTTP_TRANSPORT)",
    )
    common.add_argument(
        "--ptth",
        metavar="HOST:PORT",
        default=os.environ.get("REVERSEHTTP_PTTH"),
        help="the gateway's PTTH listener, for --transport ptth (env REVERSEHTTP_PTTH)",
    )
    common.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("REVERSEHTTP_LOOP", "auto"),
        help="event loop: auto (uvloop when installed, the default), uvloop or asyncio "
        "(env REVERSEHTTP_LOOP)",
    )
    common.add_argument("--lease", type=int, help="lease in seconds to ask for")
    common.add_argument(
        "--keep-prefix",
        action="store_true",
        help="pass path-mode targets through as /<name>/... instead of mounting at /<name>",
    )
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True)

    expose = commands.add_parser(
        "expose", parents=[common], help="forward requests to a local HTTP server"
    )
    expose.add_argument("target", help="the local server, e.g. http://localhost:8000")
    expose.add_argument(
        "--preserve-host",
        action="store_true",
        help="send the public Host header instead of the target's",
    )
    expose.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the local server"
    )

    serve = commands.add_parser("serve", parents=[common], help="serve an ASGI or WSGI app")
    serve.add_argument("app", help="the application, as module:attribute (e.g. mysite.asgi:app)")
    serve.add_argument(
        "--interface",
        choices=("auto", "asgi", "wsgi"),
        default="auto",
        help="how to call the app (default: detect)",
    )
    serve.add_argument("--app-dir", default=".", help="directory to import the app from")
    serve.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="ASGI lifespan events (default auto)",
    )
    return parser


def make_handler(args: argparse.Namespace) -> tuple[Handler, str]:
    """The handler for the command line, and a description of what it serves."""
    try:
        normalize_service_url(args.gateway)
    except ValueError as exc:
        raise UsageError(f"--gateway: {exc}") from exc
    if args.transport not in TRANSPORTS:  # a bad REVERSEHTTP_TRANSPORT (argparse checks the flag)
        raise UsageError(f"--transport must be one of {', '.join(TRANSPORTS)}")
    if args.transport == "ptth":
        if not args.ptth:
            raise UsageError("--transport ptth needs --ptth HOST:PORT (the gateway's PTTH port)")
        try:
            parse_ptth_address(args.ptth)
        except ValueError as exc:
            raise UsageError(f"--ptth: {exc}") from exc
    strip = not args.keep_prefix
    if args.command == "expose":
        try:
            handler = ForwardHandler(
                args.target,
                strip_prefix=strip,
                preserve_host=args.preserve_host,
                timeout=args.timeout,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        return handler, handler.target
    app = load_app(args.app, args.app_dir)
    if not callable(app):
        raise UsageError(f"{args.app} is not callable")
    interface = args.interface
    if interface == "auto":
        interface = "asgi" if is_asgi_app(app) else "wsgi"
    if interface == "asgi":
        asgi = AsgiHandler(app, strip_prefix=strip, lifespan=args.lifespan)  # type: ignore[arg-type]
        return asgi, f"{args.app} (ASGI)"
    return WsgiHandler(app, strip_prefix=strip), f"{args.app} (WSGI)"  # type: ignore[arg-type]


async def run(args: argparse.Namespace, handler: Handler, description: str) -> int:
    """Register, print the public URL, serve until SIGINT/SIGTERM, stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals = (signal.SIGINT, signal.SIGTERM)

    def force_quit() -> None:
        print(f"{PROG}: interrupted again; quitting without waiting", file=sys.stderr)
        if main_task is not None:
            main_task.cancel()

    def request_stop() -> None:
        stop.set()
        for sig in signals:  # a second signal does not wait for the graceful stop
            loop.add_signal_handler(sig, force_quit)

    for sig in signals:
        loop.add_signal_handler(sig, request_stop)
    client = AsyncGatewayClient(
        args.gateway,
        args.name,
        handler,
        token=args.token,
        access_token=args.access_token,
        lease=args.lease,
        pollers=args.pollers,
        transport=args.transport,
        ptth_url=args.ptth if args.transport == "ptth" else None,
        pipeline=args.pipeline,
        chain=args.chain,
    )
    try:
        public_url = await client.start()
        print(f"Public URL: {public_url}", flush=True)
        over = {"websocket": " over a WebSocket", "ptth": " over PTTH"}.get(args.transport, "")
        print(
            f"Serving {description} with {args.pollers} poller(s){over}; press Ctrl-C to stop",
            flush=True,
        )
        await stop.wait()
        await client.stop()
        return EXIT_OK
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``--loop``: uvloop's for ``auto`` when it is installed
    (it comes with uvicorn[standard], a dependency) and for ``uvloop``; None (asyncio's own
    loop) for ``asyncio``.

    Raises:
        UsageError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reversehttp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)
    try:
        handler, description = make_handler(args)
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            return runner.run(run(args, handler, description))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayUnreachable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RegistrationRefused as exc:
        print(
            f"{PROG}: error: the gateway refused the name {args.name!r}: "
            f"{exc.message}{_refusal_hint(exc)}",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
