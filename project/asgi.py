"""ASGI entry point of the example site: the gateway in front of Django and the site's WebSockets.

``GatewayApplication`` serves the gateway's own endpoints and hands everything else to the site:
HTTP to Django, other WebSockets (the staff dashboard) to Channels behind the session auth.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from reversehttp_gateway.asgi import GatewayApplication  # noqa: E402
from reversehttp_gateway.routing import websocket_urlpatterns  # noqa: E402

site_application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

application = GatewayApplication(site_application)
