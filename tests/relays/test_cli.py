"""manage.py relays … and manage.py probe_relays."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from relays.models import Relay

pytestmark = pytest.mark.django_db


@pytest.fixture
def secret_file(tmp_path):
    def make(value: str, name: str = "secret"):
        path = tmp_path / name
        path.write_text(value + "\n")
        return str(path)

    return make


def urls_args(server):
    # Test relays are on loopback: a test rig, registered with --allow-private.
    return [*sum((["--url", u] for u in server.urls), []), "--allow-private"]


@pytest.mark.smoke
def test_add_list_remove(capsys, secret_file):
    call_command(
        "relays",
        "add",
        "ams-1",
        "--url",
        "turn:ams1.example:3478?transport=udp",
        "--url",
        "turns:ams1.example:443?transport=tcp",
        "--secret-file",
        secret_file("abc-long-enough-secret"),
        "--region",
        "eu",
        "--allow-private",  # example names don't resolve
    )
    relay = Relay.objects.get(name="ams-1")
    assert relay.secret == "abc-long-enough-secret" and relay.region == "eu"
    assert len(relay.urls) == 2
    call_command("relays", "list")
    out = capsys.readouterr().out
    assert "ams-1" in out and "unknown" in out and "abc-long-enough-secret" not in out
    call_command("relays", "remove", "ams-1")
    assert not Relay.objects.exists()


@pytest.mark.smoke
def test_drain_disable_enable_and_rotate(capsys, secret_file):
    call_command(
        "relays",
        "add",
        "x",
        "--url",
        "turn:x.example",
        "--secret-file",
        secret_file("one-long-enough-secret"),
        "--allow-private",
    )
    call_command("relays", "drain", "x")
    assert Relay.objects.get().draining
    call_command("relays", "disable", "x")
    call_command("relays", "list")
    assert "disabled" in capsys.readouterr().out
    call_command("relays", "enable", "x")
    relay = Relay.objects.get()
    assert relay.enabled and not relay.draining
    call_command(
        "relays", "rotate", "x", "--next-secret-file", secret_file("two-long-enough-secret", "next")
    )
    relay.refresh_from_db()
    assert relay.secret == "one-long-enough-secret"
    assert relay.next_secret == "two-long-enough-secret"
    assert [e.kind for e in relay.events.order_by("at", "id")] == [
        "created",
        "allow-private",
        "drained",
        "disabled",
        "enabled",
        "secret-staged",
    ]


@pytest.mark.smoke
def test_bad_input_is_a_clear_error(secret_file, tmp_path):
    with pytest.raises(CommandError, match="not an ICE URL"):
        call_command("relays", "add", "x", "--url", "http://x", "--secret-file", secret_file("abc"))
    with pytest.raises(CommandError, match="cannot read the secret file"):
        call_command(
            "relays",
            "add",
            "x",
            "--url",
            "turn:x.example",
            "--secret-file",
            str(tmp_path / "missing"),
        )
    with pytest.raises(CommandError, match="empty"):
        call_command(
            "relays", "add", "x", "--url", "turn:x.example", "--secret-file", secret_file("")
        )
    with pytest.raises(CommandError, match="no relay named"):
        call_command("relays", "remove", "nope")
    with pytest.raises(CommandError, match="no relay named"):
        call_command("probe_relays", "--relay", "nope")
    assert not Relay.objects.exists()


def test_probe_relays_shows_progress_and_a_summary(capsys, coturn, secret_file):
    good = coturn(allow_loopback_peers=False)
    call_command(
        "relays", "add", "good", *urls_args(good), "--secret-file", secret_file(good.secret)
    )
    capsys.readouterr()
    call_command("probe_relays")
    captured = capsys.readouterr()
    assert "probing 1 relay(s)" in captured.err and "[1/1] ok good" in captured.err
    assert "RELAY" in captured.out and "good" in captured.out and "up" in captured.out


def test_probe_relays_json_and_exit_code(capsys, coturn, secret_file):
    good = coturn(allow_loopback_peers=False)
    bad = coturn(allow_loopback_peers=False)
    leaky = coturn(allow_loopback_peers=True)
    call_command(
        "relays", "add", "good", *urls_args(good), "--secret-file", secret_file(good.secret, "g")
    )
    call_command(
        "relays",
        "add",
        "bad",
        *urls_args(bad),
        "--secret-file",
        secret_file("wrong-but-long-enough", "b"),
    )
    call_command(
        "relays", "add", "leaky", *urls_args(leaky), "--secret-file", secret_file(leaky.secret, "l")
    )
    capsys.readouterr()

    call_command("probe_relays", "--relay", "good")  # exit 0: the one probed is up and safe
    capsys.readouterr()

    with pytest.raises(CommandError, match="down or unsafe: bad, leaky"):
        call_command("probe_relays", "--json")
    lines = {line["name"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {n: (v["status"], v["unsafe"]) for n, v in lines.items()} == {
        "good": ("up", False),
        "bad": ("down", False),
        "leaky": ("up", True),
    }
    assert "10.0.0.1" in lines["leaky"]["accepted_peers"] and lines["good"]["accepted_peers"] == []
    for line in lines.values():
        assert set(line) >= {"name", "status", "unsafe", "accepted_peers", "urls"}
        assert all(set(u) == {"url", "ok", "ms", "error"} for u in line["urls"])
    assert {u["error"] for u in lines["bad"]["urls"] if u["url"].startswith("turn:")} == {"401"}


@pytest.mark.smoke
def test_add_with_update_is_idempotent_provisioning(secret_file):
    args = ["--url", "turn:a.example:3478?transport=udp", "--region", "eu", "--allow-private"]
    call_command(
        "relays",
        "add",
        "prov",
        *args,
        "--secret-file",
        secret_file("one-long-enough-secret", "s1"),
        "--update",
    )
    relay = Relay.objects.get()
    Relay.objects.filter(pk=relay.pk).update(deep_checked_at=relay.created_at)
    with pytest.raises(CommandError, match="already exists"):
        call_command(
            "relays",
            "add",
            "prov",
            *args,
            "--secret-file",
            secret_file("one-long-enough-secret", "s1"),
        )
    call_command(
        "relays",
        "add",
        "prov",
        "--url",
        "turn:b.example:3478?transport=tcp",
        "--secret-file",
        secret_file("two-long-enough-secret", "s2"),
        "--update",
    )
    relay.refresh_from_db()
    assert (
        relay.urls == ["turn:b.example:3478?transport=tcp"]
        and relay.secret == "two-long-enough-secret"
        and relay.region == ""
    )
    assert relay.deep_checked_at is None  # the new config is audited at the next sweep
    assert Relay.objects.count() == 1
