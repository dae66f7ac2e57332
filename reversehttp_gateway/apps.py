"""Django application config for the gateway."""

from django.apps import AppConfig


class ReverseHttpGatewayConfig(AppConfig):
    name = "reversehttp_gateway"
    verbose_name = "Reverse HTTP gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
