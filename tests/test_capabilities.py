"""The unguessable URLs of ``reversehttp_gateway/capabilities.py`` (RH-90, RH-23): their
derivation must not change between releases, or every registration's private URL and every
Request URL in flight would stop matching after an upgrade."""

from __future__ import annotations

import base64
import hmac

from django.test import override_settings

from reversehttp_gateway import capabilities

KEY = "a-test-secret-key"


def reference_mac(key: str, *parts: str) -> str:
    """The derivation as first released: HMAC-SHA256 over NUL-joined parts, 144 bits, base64url."""
    message = "\x00".join(("reversehttp-gateway", *parts)).encode()
    return base64.urlsafe_b64encode(hmac.digest(key.encode(), message, "sha256")[:18]).decode()


@override_settings(SECRET_KEY=KEY)
def test_private_url_secret_is_the_released_hmac() -> None:
    expected = reference_mac(KEY, "registration", "demo", "0123abcd")
    assert capabilities.registration_secret("demo", "0123abcd") == expected
    assert expected == "sBPuj8PkmvcYKrGtFeMSZgyr"  # pinned: the same on every machine
    assert capabilities.registration_secret_matches("demo", "0123abcd", expected)
    assert not capabilities.registration_secret_matches("demo", "0123abce", expected)


@override_settings(SECRET_KEY=KEY)
def test_request_url_slots_are_recognised_and_forged_ones_refused() -> None:
    slot = capabilities.new_slot("key-1")
    random_part = slot[:16]
    assert slot[16:] == reference_mac(KEY, "slot", "key-1", random_part)
    assert capabilities.slot_matches("key-1", slot)
    assert not capabilities.slot_matches("key-2", slot)  # another registration's URL
    forged = random_part + reference_mac("another-key", "slot", "key-1", random_part)
    assert not capabilities.slot_matches("key-1", forged)
    assert not capabilities.slot_matches("key-1", slot[:-1])


def test_a_new_secret_key_changes_every_url() -> None:
    with override_settings(SECRET_KEY="first"):
        first = capabilities.registration_secret("demo", "n")
        slot = capabilities.new_slot("key-1")
    with override_settings(SECRET_KEY="second"):
        assert capabilities.registration_secret("demo", "n") != first
        assert not capabilities.slot_matches("key-1", slot)
