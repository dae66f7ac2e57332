"""ASGI entry point of the example site: the gateway in front of Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_asgi_application()

from reversehttp_gateway.asgi import GatewayApplication  # noqa: E402

application = GatewayApplication(django_application)
