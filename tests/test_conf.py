"""The settings views cache what they read, and follow ``override_settings`` (issue 5)."""

from __future__ import annotations

from django.test import override_settings

from reversehttp_gateway import public
from reversehttp_gateway.conf import DEFAULTS, gateway_settings


def test_gateway_settings_follow_override_settings():
    def current() -> tuple[float, float]:
        return gateway_settings.POLL_TIMEOUT, gateway_settings.REPLY_TIMEOUT

    before = current()
    with override_settings(REVERSEHTTP_GATEWAY={"POLL_TIMEOUT": 3.5}):
        assert current() == (3.5, DEFAULTS["REPLY_TIMEOUT"])
    assert current() == before


def test_gateway_cookie_names_follow_override_settings():
    """RH-93: the names stripped from relayed cookies are the site's current ones."""
    assert b"sessionid" in public._gateway_cookie_names()
    with override_settings(SESSION_COOKIE_NAME="gwsession"):
        names = public._gateway_cookie_names()
        assert b"gwsession" in names and b"sessionid" not in names
    assert b"sessionid" in public._gateway_cookie_names()
