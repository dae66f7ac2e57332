"""``manage.py rungateway [addr:port] [--server uvicorn|daphne]``: serve the gateway."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from ...server import GatewayServer, ServingBase

SERVERS = ("uvicorn", "daphne")
ADDRPORT = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[\w.-]+):)?(?P<port>\d+)$")


class Command(BaseCommand):
    help = "Serve the Reverse HTTP gateway and the site with uvicorn (default) or Daphne."
    server_class: type[ServingBase] | None = None  # overrides --server when set (tests, embedding)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "addrport",
            nargs="?",
            default="127.0.0.1:8000",
            help="[host:]port to listen on (default 127.0.0.1:8000)",
        )
        parser.add_argument(
            "--ptth",
            metavar="[HOST:]PORT",
            default=None,
            help="Also accept PTTH upgrades (Upgrade: PTTH/1.0) on this address "
            "(overrides the PTTH_LISTEN setting; the host defaults to 127.0.0.1).",
        )
        parser.add_argument(
            "--server",
            choices=SERVERS,
            default="uvicorn",
            help="ASGI server: uvicorn (default; streams request bodies, less CPU per "
            "request) or daphne (receives whole request bodies before relaying them).",
        )
        parser.add_argument(
            "--no-static",
            action="store_true",
            help="Do not serve STATIC_URL files (serve them with nginx instead).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        match = ADDRPORT.match(options["addrport"])
        if match is None:
            raise CommandError(f"{options['addrport']!r} is not a valid [host:]port")
        host = (match.group("host") or "127.0.0.1").strip("[]")
        port = int(match.group("port"))
        if options["ptth"]:
            from ...transports.ptth import parse_listen

            try:
                parse_listen(options["ptth"])
            except ValueError as exc:
                raise CommandError(f"--ptth: {exc}") from None
        server_class = self.server_class or self._server_class(options["server"])
        self.check(display_num_errors=True)
        self.check_migrations()
        application = import_string(settings.ASGI_APPLICATION)
        if not options["no_static"]:
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            application = ASGIStaticFilesHandler(application)
        self.stdout.write(
            f"Starting gateway on http://{host}:{port}/ with {server_class.server_name} "
            "(Ctrl-C or SIGTERM stops)"
        )
        server_class(
            application, host, port, verbosity=options["verbosity"], ptth_listen=options["ptth"]
        ).run()

    @staticmethod
    def _server_class(name: str) -> type[ServingBase]:
        if name == "uvicorn":
            try:
                from ...uvicorn_server import UvicornGatewayServer
            except ImportError as exc:
                raise CommandError(
                    f"--server uvicorn: {exc}; install uvicorn[standard] (or --server daphne)"
                ) from None
            return UvicornGatewayServer
        return GatewayServer
