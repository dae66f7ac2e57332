"""URLs of the example site: the admin and the gateway's pages."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("reversehttp_gateway.urls")),
]
