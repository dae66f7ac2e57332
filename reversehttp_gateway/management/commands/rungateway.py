"""``manage.py rungateway [addr:port]``: serve the gateway (Daphne) until SIGTERM."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from ...server import GatewayServer

ADDRPORT = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[\w.-]+):)?(?P<port>\d+)$")


class Command(BaseCommand):
    help = "Serve the Reverse HTTP gateway and the site with Daphne."
    server_class = GatewayServer

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
        self.check(display_num_errors=True)
        self.check_migrations()
        application = import_string(settings.ASGI_APPLICATION)
        if not options["no_static"]:
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            application = ASGIStaticFilesHandler(application)
        self.stdout.write(f"Starting gateway on http://{host}:{port}/ (Ctrl-C or SIGTERM stops)")
        self.server_class(
            application, host, port, verbosity=options["verbosity"], ptth_listen=options["ptth"]
        ).run()
