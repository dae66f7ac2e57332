"""WebSocket URL patterns of the gateway's Django side, for a site's ``ProtocolTypeRouter``.

The gateway's own WebSockets (the transport under ``SERVICE_PATH``) are routed by
``asgi.GatewayApplication``; every other WebSocket scope goes to its fallback application.
Route these patterns there behind ``AuthMiddlewareStack`` (the dashboard is staff only)::

    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from reversehttp_gateway.routing import websocket_urlpatterns

    site = ProtocolTypeRouter({
        "http": django_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([*websocket_urlpatterns, ...]))
        ),
    })
    application = GatewayApplication(site)
"""

from django.urls import path

from .dashboard import DashboardConsumer

websocket_urlpatterns = [
    path("gateway/dashboard/ws/", DashboardConsumer.as_asgi(), name="dashboard-ws"),
]
