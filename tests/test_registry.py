"""Registrations in the database (``reversehttp_gateway/registry.py``), RH-01..RH-10, RH-23, RH-82,
RH-92 and the enrolment policies; no broker, no server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone

from reversehttp_gateway import capabilities, credentials, registry
from reversehttp_gateway.models import AccessToken, LabelClaim, Registration
from reversehttp_gateway.registry import RegistrationError

pytestmark = pytest.mark.django_db

BASE = {
    "BASE_URL": "https://gw.example",
    "PUBLIC_BASE_URL": "https://apps.example",
    "DEFAULT_LEASE": 90,
    "MIN_LEASE": 30,
    "MAX_LEASE": 86400,
    "ENROLMENT": "open",
    "HYPHEN_TOKEN": "shared",
    "RESERVED_LABELS": ["reversehttp", "static", "admin", "api", "www", "gateway"],
}


def gateway(**overrides: Any) -> override_settings:
    return override_settings(REVERSEHTTP_GATEWAY={**BASE, **overrides})


@pytest.fixture(autouse=True)
def known_settings() -> Iterator[None]:
    """The same settings whatever RHGW_* variables the example settings read."""
    with gateway():
        yield


def register(name: str | None = "app", token: str | None = "secret", **kwargs: Any) -> Any:
    return registry.register(name=name, token=token, lease=kwargs.pop("lease", None), **kwargs)


def refused(status: int, **kwargs: Any) -> RegistrationError:
    with pytest.raises(RegistrationError) as info:
        register(**kwargs)
    assert info.value.status == status
    return info.value


def make_token(name: str = "t", **fields: Any) -> tuple[AccessToken, str]:
    token = credentials.new_capability()
    access = AccessToken.objects.create(
        name=name, token_digest=credentials.digest(token), token_prefix=token[:8], **fields
    )
    return access, token


def bearer(token: str) -> str:
    return f"Bearer {token}"


def expire(registration: Registration) -> None:
    """What the lease keeper does when a dormant lease runs out (RH-07)."""
    Registration.objects.filter(pk=registration.pk).update(
        status=Registration.Status.EXPIRED, expires_at=timezone.now()
    )


def close_to(moment: Any, seconds: float) -> bool:
    return moment is not None and abs((moment - timezone.now()).total_seconds() - seconds) < 30


# RH-01, RH-09, RH-10: create (201) and refresh (204)


def test_rh10_new_registration_is_created() -> None:
    enrolled = register("Demo", "secret", client_ip="198.51.100.4")
    assert enrolled.created
    registration = enrolled.registration
    assert registration.label == "demo"  # section 11 item 1: stored lower-cased
    assert registration.status == Registration.Status.ACTIVE
    assert registration.registered_from == "198.51.100.4"
    assert registration.lease_seconds == 90
    assert close_to(registration.expires_at, 90)
    assert registration.broker_key == f"demo.{registration.nonce}"


def test_rh92_token_is_stored_as_a_digest() -> None:
    registration = register("app", "s3cret").registration
    assert registration.token_digest != "s3cret"
    assert credentials.matches("s3cret", registration.token_digest)


def test_rh09_same_token_refreshes() -> None:
    first = register("app", "secret", lease="60").registration
    again = register("APP", "secret", lease="120")
    assert not again.created  # 204
    registration = again.registration
    assert (registration.pk, registration.nonce) == (first.pk, first.nonce)  # same URLs
    assert registration.lease_seconds == 120
    assert close_to(registration.expires_at, 120)
    assert Registration.objects.count() == 1


def test_rh09_wrong_token_is_403_bad_token() -> None:
    register("app", "secret")
    error = refused(403, name="app", token="other")
    assert error.message == "Bad token"
    assert str(error) == "Bad token"


def test_rh08_omitted_token_twice_gives_403() -> None:
    assert register("app", None).created
    assert refused(403, name="app", token=None).message == "Bad token"
    assert refused(403, name="app", token="").message == "Bad token"


def test_rh08_empty_token_is_omitted() -> None:
    assert register("app", "").created
    refused(403, name="app", token="")


# RH-03, RH-04: labels


@pytest.mark.parametrize(
    "name",
    [
        "-a",
        "a-",
        "a_b",
        "a.b",
        "a" * 64,
        "a/b",
        "a%2Fb",
        "ä",
        "a\r\nSet-Cookie:x=1",
        "a%0d%0aSet-Cookie:x=1",
        "a b",
        "admin",
        "Admin",
        "reversehttp",
        "static",
    ],
)
def test_rh03_invalid_or_reserved_labels_are_400(name: str) -> None:
    error = refused(400, name=name)
    assert error.message.startswith("Invalid label")
    assert not Registration.objects.exists()


def test_rh03_reserved_labels_follow_the_setting() -> None:
    with gateway(RESERVED_LABELS=["Private"]):
        refused(400, name="private")
        assert register("admin").created


@pytest.mark.parametrize("name", [None, ""])
def test_rh04_missing_name_is_400(name: str | None) -> None:
    assert refused(400, name=name).message == "Missing label parameter"


# RH-05, RH-06: leases


@pytest.mark.parametrize("lease", ["abc", "", "1.5", "1e3", " 30", "30s", "0x10"])
def test_rh05_bad_lease_is_400(lease: str) -> None:
    assert refused(400, lease=lease).message == "Invalid lease seconds setting"


@pytest.mark.parametrize(
    ("lease", "seconds"),
    [
        (None, 90),  # omitted: DEFAULT_LEASE
        ("5", 30),  # clamped up to MIN_LEASE
        ("-5", 30),
        ("+100", 100),
        ("0100", 100),
        ("86401", 86400),  # clamped down to MAX_LEASE
        ("99999999999999999999", 86400),
    ],
)
def test_rh06_lease_is_clamped_silently(lease: str | None, seconds: int) -> None:
    assert register(lease=lease).registration.lease_seconds == seconds


def test_rh06_clamp_follows_the_settings() -> None:
    with gateway(DEFAULT_LEASE=45, MIN_LEASE=40, MAX_LEASE=50):
        assert register("a").registration.lease_seconds == 45
        assert register("b", lease="10").registration.lease_seconds == 40
        assert register("c", lease="100").registration.lease_seconds == 50


# RH-92: the well-known token "-"


def test_rh92_hyphen_shared_is_an_ordinary_secret() -> None:
    with gateway(HYPHEN_TOKEN="shared"):
        assert register("app", "-").created
        assert not register("app", "-").created  # 204, like the reference
        refused(403, name="app", token="other")


def test_rh92_hyphen_random_is_like_no_token() -> None:
    with gateway(HYPHEN_TOKEN="random"):
        registration = register("app", "-").registration
        assert not credentials.matches("-", registration.token_digest)
        assert refused(403, name="app", token="-").message == "Bad token"


def test_rh92_hyphen_refused() -> None:
    with gateway(HYPHEN_TOKEN="refuse"):
        error = refused(400, name="app", token="-")
        assert "'-'" in error.message
        assert not Registration.objects.exists()
        assert register("app", "a-real-secret").created


# ENROLMENT "token": a usable access token is required


def test_enrolment_token_without_bearer_is_401() -> None:
    with gateway(ENROLMENT="token"):
        assert refused(401).message == "An access token is required to register"


@pytest.mark.parametrize(
    "authorization", ["Bearer not-a-token", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc"]
)
def test_enrolment_token_with_bad_bearer_is_401(authorization: str) -> None:
    make_token()
    with gateway(ENROLMENT="token"):
        refused(401, authorization=authorization)


@pytest.mark.parametrize(
    "fields",
    [{"revoked": True}, {"expires_at": timezone.now() - timedelta(seconds=1)}],
    ids=["revoked", "expired"],
)
def test_enrolment_token_unusable_token_is_401(fields: dict[str, Any]) -> None:
    _, token = make_token(**fields)
    with gateway(ENROLMENT="token"):
        error = refused(401, authorization=bearer(token))
        assert error.message == "Invalid, expired or revoked access token"


def test_enrolment_token_good_token_is_201() -> None:
    access, token = make_token(expires_at=timezone.now() + timedelta(days=1))
    with gateway(ENROLMENT="token"):
        enrolled = register(authorization=bearer(token))
    assert enrolled.created
    assert enrolled.registration.access_token == access
    access.refresh_from_db()
    assert close_to(access.last_used_at, 0)


def test_enrolment_token_scheme_is_case_insensitive() -> None:
    _, token = make_token()
    with gateway(ENROLMENT="token"):
        assert register(authorization=f"bearer  {token} ").created


def test_enrolment_token_patterns_not_covering_the_label_is_403() -> None:
    _, token = make_token(label_patterns="ci-*\nbuild-?")
    with gateway(ENROLMENT="token"):
        error = refused(403, name="prod", authorization=bearer(token))
        assert error.message == "This access token may not register that label"
        refused(403, name="build-10", authorization=bearer(token))
        assert register("CI-42", authorization=bearer(token)).created
        assert register("build-1", authorization=bearer(token)).created


def test_enrolment_open_still_rejects_a_bad_bearer() -> None:
    with gateway(ENROLMENT="open"):
        refused(401, authorization="Bearer wrong")
        assert register().created  # no bearer at all is fine


def test_enrolment_token_respects_claims() -> None:
    owner_token, _ = make_token("owner")
    _, other = make_token("other")
    LabelClaim.objects.create(pattern="team-*", access_token=owner_token)
    with gateway(ENROLMENT="token"):
        assert refused(403, name="team-a", authorization=bearer(other)).message == (
            "That label is claimed by someone else"
        )
        assert register("free", authorization=bearer(other)).created


# ENROLMENT "claims": open, except labels covered by a LabelClaim


@pytest.fixture
def claims() -> dict[str, Any]:
    alice = get_user_model().objects.create_user("alice", password="x")
    claimant, claimant_token = make_token("claimant")
    alices_first, _ = make_token("alice 1", owner=alice)
    _, alices_second = make_token("alice 2", owner=alice)
    _, strangers = make_token("stranger")
    LabelClaim.objects.create(pattern="team-*", access_token=claimant)
    LabelClaim.objects.create(pattern="alice", owner=alice)
    return {
        "claimant": bearer(claimant_token),
        "alices_second": bearer(alices_second),
        "stranger": bearer(strangers),
        "alices_first": alices_first,
    }


def test_enrolment_claims_claimed_label_by_another_token_is_403(claims: dict[str, Any]) -> None:
    with gateway(ENROLMENT="claims"):
        error = refused(403, name="team-x", authorization=claims["stranger"])
        assert error.message == "That label is claimed by someone else"
        refused(403, name="TEAM-Y", authorization=claims["alices_second"])
        refused(403, name="alice", authorization=claims["claimant"])


def test_enrolment_claims_claimed_label_without_token_is_403(claims: dict[str, Any]) -> None:
    with gateway(ENROLMENT="claims"):
        refused(403, name="team-x")
        refused(403, name="alice")


def test_enrolment_claims_by_the_owning_token_is_201(claims: dict[str, Any]) -> None:
    with gateway(ENROLMENT="claims"):
        assert register("team-x", authorization=claims["claimant"]).created


def test_enrolment_claims_by_a_token_of_the_owning_user_is_201(claims: dict[str, Any]) -> None:
    with gateway(ENROLMENT="claims"):
        assert register("alice", authorization=claims["alices_second"]).created


def test_enrolment_claims_unclaimed_label_is_open(claims: dict[str, Any]) -> None:
    with gateway(ENROLMENT="claims"):
        assert register("bob").created
        assert register("teamx", authorization=claims["stranger"]).created


def test_enrolment_open_ignores_claims(claims: dict[str, Any]) -> None:
    with gateway(ENROLMENT="open"):
        assert register("team-x").created


def test_claims_of_a_user_do_not_match_ownerless_tokens() -> None:
    _, ownerless = make_token("ownerless")
    LabelClaim.objects.create(pattern="nobody", owner=None, access_token=None)
    with gateway(ENROLMENT="claims"):
        refused(403, name="nobody", authorization=bearer(ownerless))


# Expired tombstones (RH-07, RH-23)


def test_expired_label_goes_to_another_token() -> None:
    old = register("app", "first").registration
    expire(old)
    enrolled = register("app", "second")
    assert enrolled.created
    new = enrolled.registration
    assert new.pk != old.pk
    assert new.nonce != old.nonce  # new private URL: the old one is dead
    assert not Registration.objects.filter(pk=old.pk).exists()
    assert credentials.matches("second", new.token_digest)
    assert registry.find("app", capabilities.registration_secret("app", old.nonce)) is None
    refused(403, name="app", token="first")


def test_expired_label_revived_by_the_same_token() -> None:
    old = register("app", "first", lease="60").registration
    expire(old)
    enrolled = register("app", "first", lease="45")
    assert enrolled.created  # 201: it was gone
    registration = enrolled.registration
    assert (registration.pk, registration.nonce) == (old.pk, old.nonce)
    assert registration.status == Registration.Status.ACTIVE
    assert registration.lease_seconds == 45
    assert close_to(registration.expires_at, 45)


# find() and revive(): the private URL's secret


def test_find_needs_the_secret() -> None:
    registration = register("app").registration
    secret = capabilities.registration_secret("app", registration.nonce)
    assert registry.find("app", secret) == registration
    assert registry.find("APP", secret) == registration
    assert registry.find("app", secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert registry.find("app", "") is None
    assert registry.find("other", secret) is None


def test_revive_reactivates_an_expired_registration() -> None:
    registration = register("app", lease="60").registration
    expire(registration)
    secret = capabilities.registration_secret("app", registration.nonce)
    revived = registry.revive("app", secret)
    assert revived is not None
    assert revived.pk == registration.pk
    assert revived.status == Registration.Status.ACTIVE
    assert close_to(revived.expires_at, 60)
    registration.refresh_from_db()
    assert registration.status == Registration.Status.ACTIVE


def test_revive_refuses_a_wrong_secret() -> None:
    registration = register("app").registration
    expire(registration)
    assert registry.revive("app", "not-the-secret") is None
    assert registry.revive("nope", "not-the-secret") is None
    registration.refresh_from_db()
    assert registration.status == Registration.Status.EXPIRED


def test_revive_leaves_an_active_registration_alone() -> None:
    registration = register("app").registration
    before = registration.refreshed_at
    revived = registry.revive("app", capabilities.registration_secret("app", registration.nonce))
    assert revived is not None
    assert revived.refreshed_at == before


# reconfigure(): PUT on the private URL (RH-82)


def test_reconfigure_changes_lease_and_token() -> None:
    registration = register("app", "old").registration
    registry.reconfigure(registration, token="new", lease="600")
    registration.refresh_from_db()
    assert registration.lease_seconds == 600
    assert credentials.matches("new", registration.token_digest)
    assert not register("app", "new").created
    refused(403, name="app", token="old")


def test_reconfigure_keeps_what_is_not_given() -> None:
    registration = register("app", "old", lease="200").registration
    registry.reconfigure(registration, token=None, lease=None)
    registration.refresh_from_db()
    assert registration.lease_seconds == 200
    assert credentials.matches("old", registration.token_digest)


def test_reconfigure_clamps_and_validates_the_lease() -> None:
    registration = register("app").registration
    registry.reconfigure(registration, token=None, lease="1")
    assert registration.lease_seconds == 30
    with pytest.raises(RegistrationError) as info:
        registry.reconfigure(registration, token=None, lease="soon")
    assert info.value.status == 400


def test_reconfigure_applies_the_hyphen_policy() -> None:
    registration = register("app").registration
    with gateway(HYPHEN_TOKEN="refuse"), pytest.raises(RegistrationError) as info:
        registry.reconfigure(registration, token="-", lease=None)
    assert info.value.status == 400


def test_reconfigure_reactivates() -> None:
    registration = register("app").registration
    expire(registration)
    registration.refresh_from_db()
    registry.reconfigure(registration, token=None, lease="120")
    registration.refresh_from_db()
    assert registration.status == Registration.Status.ACTIVE


# extend_lease(): the admin action


def test_extend_lease_pushes_expiry_back() -> None:
    registration = register("app", lease="60").registration
    registry.extend_lease(registration, 86400)
    registration.refresh_from_db()
    assert registration.lease_seconds == 86400
    assert registration.status == Registration.Status.ACTIVE
    assert close_to(registration.expires_at, 86400)
    assert close_to(registration.dormant_since, 0)


def test_extend_lease_never_shortens_the_lease() -> None:
    registration = register("app", lease="3600").registration
    registry.extend_lease(registration, 60)
    assert registration.lease_seconds == 3600
    assert close_to(registration.expires_at, 3600)


def test_extend_lease_revives_an_expired_registration() -> None:
    registration = register("app").registration
    expire(registration)
    registration.refresh_from_db()
    registry.extend_lease(registration, 86400)
    registration.refresh_from_db()
    assert registration.status == Registration.Status.ACTIVE


@pytest.mark.parametrize("enrolment", ["token", "claims"])
def test_revive_rechecks_enrolment(enrolment: str) -> None:
    access, token = make_token()
    with gateway(ENROLMENT=enrolment):
        registration = register(authorization=bearer(token)).registration
        expire(registration)
        AccessToken.objects.filter(pk=access.pk).update(revoked=True)
        other, _ = make_token("new owner")
        LabelClaim.objects.create(pattern="app", access_token=other)
        secret = capabilities.registration_secret("app", registration.nonce)
        assert registry.revive("app", secret) is None
