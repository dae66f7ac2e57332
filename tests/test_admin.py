"""The admin (``reversehttp_gateway/admin.py``): pages render, secrets stay hidden, actions work.

Runs against the example settings with SQLite; no Redis and no gateway process. Tests whose
admin code runs ``transaction.on_commit`` callbacks (broker updates, their messages) use
``transaction=True`` so that the callbacks run exactly as in production.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from reversehttp_gateway import capabilities, credentials
from reversehttp_gateway.models import AccessToken, LabelClaim, Registration
from reversehttp_gateway.queue.base import RegistrationGone
from reversehttp_gateway.queue.memory import MemoryBroker
from reversehttp_gateway.runtime import runtime

pytestmark = pytest.mark.django_db

EXPIRED = Registration.Status.EXPIRED
ACTIVE = Registration.Status.ACTIVE


def url(model: str, view: str, *args: Any) -> str:
    return reverse(f"admin:reversehttp_gateway_{model}_{view}", args=args)


def make_registration(label: str, **fields: Any) -> Registration:
    now = timezone.now()
    values: dict[str, Any] = {
        "nonce": capabilities.new_nonce(),
        "token_digest": credentials.digest(f"token-of-{label}"),
        "lease_seconds": 90,
        "dormant_since": now,
        "expires_at": now + timedelta(seconds=90),
        "registered_from": "192.0.2.7",
    }
    values.update(fields)
    return Registration.objects.create(label=label, **values)


def make_token(name: str = "ci", **fields: Any) -> tuple[AccessToken, str]:
    token = credentials.new_capability()
    access = AccessToken.objects.create(
        name=name, token_digest=credentials.digest(token), token_prefix=token[:8], **fields
    )
    return access, token


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def run_action(client: Client, model: str, action: str, objects: list[Any], **extra: str) -> Any:
    data: dict[str, Any] = {"action": action, "_selected_action": [obj.pk for obj in objects]}
    data.update(extra)
    return client.post(url(model, "changelist"), data, follow=True)


# Pages render, secrets stay out of them


@pytest.fixture
def sample(admin_user: Any) -> dict[str, Any]:
    access, token = make_token("deploy bot", owner=admin_user, label_patterns="app-*")
    registration = make_registration("app-1", access_token=access)
    make_registration("old", status=EXPIRED)
    claim = LabelClaim.objects.create(pattern="app-*", access_token=access, note="team app")
    return {"token": token, "access": access, "registration": registration, "claim": claim}


@pytest.mark.parametrize("model", ["registration", "accesstoken", "labelclaim"])
def test_changelists_render(admin_client: Client, sample: dict[str, Any], model: str) -> None:
    response = admin_client.get(url(model, "changelist"))
    assert response.status_code == 200
    content = response.content.decode()
    assert sample["token"] not in content
    assert sample["access"].token_digest not in content  # digests stay out of list views
    assert sample["registration"].nonce not in content
    assert sample["registration"].token_digest not in content


@pytest.mark.parametrize("model", ["registration", "accesstoken", "labelclaim"])
def test_change_pages_render(admin_client: Client, sample: dict[str, Any], model: str) -> None:
    obj = {
        "registration": sample["registration"],
        "accesstoken": sample["access"],
        "labelclaim": sample["claim"],
    }[model]
    response = admin_client.get(url(model, "change", obj.pk))
    assert response.status_code == 200
    content = response.content.decode()
    assert sample["token"] not in content


def test_registration_change_page_shows_no_private_url(
    admin_client: Client, sample: dict[str, Any]
) -> None:
    registration = sample["registration"]
    content = admin_client.get(url("registration", "change", registration.pk)).content.decode()
    assert capabilities.registration_secret(registration.label, registration.nonce) not in content
    assert registration.nonce in content  # not a secret, shown read-only
    assert "/app-1/" in content  # the public URL (path mode) or app-1.<domain>
    assert 'name="label"' not in content  # read-only: the label is the queue's identity
    assert url("accesstoken", "change", sample["access"].pk) in content  # linked token


def test_registrations_are_not_added_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get(url("registration", "add")).status_code == 403


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"app-1", "old", "polling"}),
        ("activity=polling", {"polling"}),
        ("activity=dormant", {"app-1"}),
        ("activity=expired", {"old"}),
        ("status=expired", {"old"}),
        ("q=app", {"app-1"}),
        ("q=192.0.2.7", {"app-1", "old", "polling"}),
    ],
)
def test_registration_filters_and_search(
    admin_client: Client, sample: dict[str, Any], query: str, expected: set[str]
) -> None:
    make_registration("polling", dormant_since=None, expires_at=None)
    response = admin_client.get(url("registration", "changelist") + "?" + query)
    assert response.status_code == 200
    shown = {r.label for r in response.context["cl"].result_list}
    assert shown == expected


def test_token_list_links_to_its_registrations(
    admin_client: Client, sample: dict[str, Any]
) -> None:
    access = sample["access"]
    content = admin_client.get(url("accesstoken", "changelist")).content.decode()
    link = url("registration", "changelist") + f"?access_token__id__exact={access.pk}"
    assert link in content
    response = admin_client.get(link)
    assert response.status_code == 200
    assert [r.label for r in response.context["cl"].result_list] == ["app-1"]
    claims = admin_client.get(
        url("labelclaim", "changelist") + f"?access_token__id__exact={access.pk}"
    )
    assert [c.pattern for c in claims.context["cl"].result_list] == ["app-*"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [("usable", {"good"}), ("revoked", {"revoked"}), ("expired", {"expired"}), ("", None)],
)
def test_token_state_filter(admin_client: Client, state: str, expected: set[str] | None) -> None:
    make_token("good")
    make_token("revoked", revoked=True)
    make_token("expired", expires_at=timezone.now() - timedelta(minutes=1))
    response = admin_client.get(url("accesstoken", "changelist") + f"?state={state}")
    assert response.status_code == 200
    shown = {t.name for t in response.context["cl"].result_list}
    assert shown == (expected or {"good", "revoked", "expired"})


# Access tokens: created in the admin, shown once


def test_token_add_form_does_not_ask_for_the_token(admin_client: Client) -> None:
    response = admin_client.get(url("accesstoken", "add"))
    assert response.status_code == 200
    fields = set(response.context["adminform"].form.fields)
    assert fields == {"name", "owner", "label_patterns", "expires_at"}
    assert "token_digest" not in response.content.decode()


def test_creating_a_token_shows_it_once_and_stores_its_digest(
    admin_client: Client, admin_user: Any
) -> None:
    response = admin_client.post(
        url("accesstoken", "add"),
        {
            "name": "ci runner",
            "owner": str(admin_user.pk),
            "label_patterns": "ci-*\nbuild-?",
            "expires_at_0": "",
            "expires_at_1": "",
        },
        follow=True,
    )
    assert response.status_code == 200
    shown = [m for m in messages_of(response) if "copy it now" in m]
    assert len(shown) == 1
    match = re.search(r"is: (\S+) —", shown[0])
    assert match is not None
    token = match.group(1)

    access = AccessToken.objects.get()
    assert access.name == "ci runner"
    assert access.owner == admin_user
    assert access.patterns == ["ci-*", "build-?"]
    assert credentials.matches(token, access.token_digest)
    assert access.token_digest != token
    assert access.token_prefix == token[:8]
    assert len(token) >= 32  # 192 bits, url-safe base64
    stored = {f.attname: getattr(access, f.attname) for f in AccessToken._meta.concrete_fields}
    assert token not in {str(value) for value in stored.values()}

    # Never shown again: not on the change page, not in the list, not in a later message.
    for page in (url("accesstoken", "change", access.pk), url("accesstoken", "changelist")):
        later = admin_client.get(page)
        assert token not in later.content.decode()
        assert access.token_prefix in later.content.decode()
        assert not any(token in m for m in messages_of(later))


def test_editing_a_token_keeps_its_digest(admin_client: Client) -> None:
    access, token = make_token("ci")
    response = admin_client.post(
        url("accesstoken", "change", access.pk),
        {
            "name": "renamed",
            "owner": "",
            "label_patterns": "",
            "expires_at_0": "",
            "expires_at_1": "",
            "revoked": "on",
        },
        follow=True,
    )
    assert response.status_code == 200
    access.refresh_from_db()
    assert access.name == "renamed"
    assert access.revoked
    assert credentials.matches(token, access.token_digest)
    assert not any("copy it now" in m for m in messages_of(response))


def test_revoke_action(admin_client: Client) -> None:
    first, _ = make_token("first")
    second, _ = make_token("second")
    kept, _ = make_token("kept")
    response = run_action(admin_client, "accesstoken", "revoke", [first, second])
    assert response.status_code == 200
    assert any("Revoked 2 access token(s)" in m for m in messages_of(response))
    assert set(AccessToken.objects.filter(revoked=True).values_list("name", flat=True)) == {
        "first",
        "second",
    }
    kept.refresh_from_db()
    assert not kept.revoked
    first.refresh_from_db()
    assert not first.is_usable()


def test_deleting_a_token_keeps_its_registrations(admin_client: Client) -> None:
    access, _ = make_token("gone")
    registration = make_registration("app", access_token=access)
    response = run_action(admin_client, "accesstoken", "delete_selected", [access], post="yes")
    assert response.status_code == 200
    assert not AccessToken.objects.exists()
    registration.refresh_from_db()
    assert registration.access_token is None


# Registrations: actions


def test_extend_lease_action(admin_client: Client) -> None:
    soon = make_registration("soon", lease_seconds=60)
    other = make_registration("other")
    response = run_action(admin_client, "registration", "extend_lease", [soon])
    assert response.status_code == 200
    assert any("Extended the lease of 1 registration(s)" in m for m in messages_of(response))
    soon.refresh_from_db()
    assert soon.lease_seconds == 86400
    assert soon.status == ACTIVE
    expected = timezone.now() + timedelta(days=1)
    assert soon.expires_at is not None
    assert abs((soon.expires_at - expected).total_seconds()) < 60
    other.refresh_from_db()
    assert other.lease_seconds == 90


@pytest.mark.django_db(transaction=True)
def test_extend_lease_revives_an_expired_registration(admin_client: Client) -> None:
    old = make_registration("old", status=EXPIRED, expires_at=timezone.now())
    response = run_action(admin_client, "registration", "extend_lease", [old])
    old.refresh_from_db()
    assert old.status == ACTIVE
    assert old.expires_at is not None and old.expires_at > timezone.now() + timedelta(hours=23)
    # No gateway loop in the test process: the lease keeper re-activates it.
    assert any("re-activates" in m and "EXPIRY_INTERVAL" in m for m in messages_of(response))


@pytest.mark.django_db(transaction=True)
def test_expire_now_action(admin_client: Client) -> None:
    live = make_registration("live")
    already = make_registration("already", status=EXPIRED)
    untouched = make_registration("untouched")
    response = run_action(admin_client, "registration", "expire_now", [live, already])
    assert response.status_code == 200
    texts = messages_of(response)
    assert any("Expired 1 registration(s); 1 already expired." in m for m in texts)
    assert any("No gateway loop runs in this admin process" in m for m in texts)
    live.refresh_from_db()
    assert live.status == EXPIRED
    assert live.expires_at is not None
    assert abs((live.expires_at - timezone.now()).total_seconds()) < 60
    untouched.refresh_from_db()
    assert untouched.status == ACTIVE


def test_delete_action_replaces_the_default_one(admin_client: Client) -> None:
    response = admin_client.get(url("registration", "changelist"))
    choices = dict(response.context["action_form"].fields["action"].choices)
    assert choices["delete_selected"] == "Delete selected registrations (waiting pollers get 410)"
    assert set(choices) == {"", "delete_selected", "extend_lease", "expire_now"}


@pytest.mark.django_db(transaction=True)
def test_delete_action_removes_rows_after_confirmation(admin_client: Client) -> None:
    doomed = [make_registration("one"), make_registration("two", status=EXPIRED)]
    kept = make_registration("kept")
    confirm = run_action(admin_client, "registration", "delete_selected", doomed)
    assert confirm.status_code == 200
    assert b"Are you sure" in confirm.content
    assert Registration.objects.count() == 3

    response = run_action(admin_client, "registration", "delete_selected", doomed, post="yes")
    assert response.status_code == 200
    assert list(Registration.objects.values_list("label", flat=True)) == [kept.label]
    texts = messages_of(response)
    assert any("Successfully deleted 2 registrations" in m for m in texts)
    assert any("No gateway loop runs in this admin process" in m for m in texts)


@pytest.mark.django_db(transaction=True)
def test_single_delete_view(admin_client: Client) -> None:
    registration = make_registration("single")
    response = admin_client.post(
        url("registration", "delete", registration.pk), {"post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert not Registration.objects.exists()
    assert any("EXPIRY_INTERVAL" in m for m in messages_of(response))


# Registrations: with a gateway loop in this process, waiting pollers get 410 at once


@pytest.fixture
def serving_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MemoryBroker, Any]]:
    """A MemoryBroker on an event loop in a thread, installed as this process's runtime."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    broker = MemoryBroker()

    def run(coroutine: Any, timeout: float = 5) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    run(broker.start())
    monkeypatch.setattr(runtime, "_loop", loop)
    monkeypatch.setattr(runtime, "_broker", broker)
    yield broker, run
    run(broker.close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _waiting_poller(broker: MemoryBroker, run: Any, registration: Registration) -> Any:
    """Activate ``registration`` and park one poller on it; returns the poller's future."""
    key = registration.broker_key
    run(broker.activate(key, registration.label))

    async def poll() -> Any:
        return await broker.take(key, 30, asyncio.Event())

    loop = runtime._loop
    assert loop is not None
    poller = asyncio.run_coroutine_threadsafe(poll(), loop)
    for _ in range(100):
        if run(broker.app_available(key, 0)):
            break
        threading.Event().wait(0.01)
    else:
        pytest.fail("the poller never started waiting")
    return poller


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["delete_action", "delete_view", "expire_now"])
def test_waiting_pollers_get_gone(
    admin_client: Client, serving_broker: tuple[MemoryBroker, Any], how: str
) -> None:
    broker, run = serving_broker
    registration = make_registration("live")
    poller = _waiting_poller(broker, run, registration)
    if how == "delete_action":
        response = run_action(
            admin_client, "registration", "delete_selected", [registration], post="yes"
        )
    elif how == "delete_view":
        response = admin_client.post(
            url("registration", "delete", registration.pk), {"post": "yes"}, follow=True
        )
    else:
        response = run_action(admin_client, "registration", "expire_now", [registration])
    assert response.status_code == 200
    with pytest.raises(RegistrationGone):
        poller.result(5)
    assert run(broker.lookup_label("live")) is None
    assert any(
        "Waiting pollers of 1 registration(s) got 410 Gone." in m for m in messages_of(response)
    )


@pytest.mark.django_db(transaction=True)
def test_extend_lease_reactivates_in_the_serving_broker(
    admin_client: Client, serving_broker: tuple[MemoryBroker, Any]
) -> None:
    broker, run = serving_broker
    old = make_registration("old", status=EXPIRED)
    response = run_action(admin_client, "registration", "extend_lease", [old])
    assert run(broker.lookup_label("old")) == old.broker_key
    assert any("Re-activated 1 expired registration(s)" in m for m in messages_of(response))


# Label claims: exactly one of owner and access token


def claim_form(**fields: str) -> dict[str, str]:
    return {"pattern": "team-*", "owner": "", "access_token": "", "note": "", **fields}


def test_label_claim_refuses_both_owner_and_token(admin_client: Client, admin_user: Any) -> None:
    access, _ = make_token()
    response = admin_client.post(
        url("labelclaim", "add"),
        claim_form(owner=str(admin_user.pk), access_token=str(access.pk)),
    )
    assert response.status_code == 200
    assert "Set exactly one of owner" in response.content.decode()
    assert not LabelClaim.objects.exists()


def test_label_claim_refuses_neither_owner_nor_token(admin_client: Client) -> None:
    response = admin_client.post(url("labelclaim", "add"), claim_form())
    assert response.status_code == 200
    assert "Set exactly one of owner" in response.content.decode()
    assert not LabelClaim.objects.exists()


@pytest.mark.parametrize("holder", ["owner", "access_token"])
def test_label_claim_with_one_holder_is_saved(
    admin_client: Client, admin_user: Any, holder: str
) -> None:
    access, _ = make_token()
    value = str(admin_user.pk if holder == "owner" else access.pk)
    response = admin_client.post(
        url("labelclaim", "add"), claim_form(pattern=" Team-* ", **{holder: value})
    )
    assert response.status_code == 302
    claim = LabelClaim.objects.get()
    assert claim.pattern == "team-*"
    assert (claim.owner_id, claim.access_token_id) == (
        (admin_user.pk, None) if holder == "owner" else (None, access.pk)
    )


def test_search_by_owner(admin_client: Client) -> None:
    alice = get_user_model().objects.create_user("alice", password="x")
    make_token("alices", owner=alice)
    make_token("anonymous")
    LabelClaim.objects.create(pattern="alice-*", owner=alice)
    tokens = admin_client.get(url("accesstoken", "changelist") + "?q=alice")
    assert [t.name for t in tokens.context["cl"].result_list] == ["alices"]
    claims = admin_client.get(url("labelclaim", "changelist") + "?q=alice")
    assert [c.pattern for c in claims.context["cl"].result_list] == ["alice-*"]
