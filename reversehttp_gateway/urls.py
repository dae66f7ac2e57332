"""Django URLs of the gateway: the staff status page on the Service URL (RH-80) and a home page."""

from django.urls import path

from . import views
from .conf import gateway_settings

app_name = "reversehttp_gateway"

urlpatterns = [
    path(gateway_settings.SERVICE_PATH.lstrip("/"), views.gateway_status, name="status"),
    path(gateway_settings.SERVICE_PATH.lstrip("/") + "/", views.gateway_status),
    path("", views.home, name="home"),
    # Under the reserved label "gateway": in path mode /demo/ would be the public URL of "demo".
    path("gateway/demo/", views.demo, name="demo"),
    # Staff only; its WebSocket is routing.websocket_urlpatterns (gateway/dashboard/ws/).
    path("gateway/dashboard/", views.dashboard, name="dashboard"),
]
