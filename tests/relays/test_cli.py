"""manage.py relays add|list|remove and manage.py probe_relays."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from relays.models import Relay

pytestmark = pytest.mark.django_db


@pytest.fixture
def secret_file(tmp_path):
    def make(value: str):
        path = tmp_path / "secret"
        path.write_text(value + "\n")
        return str(path)

    return make


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
        secret_file("abc"),
        "--region",
        "eu",
    )
    relay = Relay.objects.get(name="ams-1")
    assert relay.secret == "abc" and relay.region == "eu" and len(relay.urls) == 2
    call_command("relays", "list")
    out = capsys.readouterr().out
    assert "ams-1" in out and "unknown" in out and "abc" not in out
    call_command("relays", "remove", "ams-1")
    assert not Relay.objects.exists()


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
    assert not Relay.objects.exists()


def test_probe_relays_prints_results_and_fails_when_one_is_down(capsys, coturn, secret_file):
    good = coturn(allow_loopback_peers=False)
    bad = coturn(allow_loopback_peers=False)
    call_command(
        "relays",
        "add",
        "good",
        *sum((["--url", u] for u in good.urls), []),
        "--secret-file",
        secret_file(good.secret),
    )
    call_command(
        "relays",
        "add",
        "bad",
        *sum((["--url", u] for u in bad.urls), []),
        "--secret-file",
        secret_file("wrong"),
    )
    capsys.readouterr()

    call_command("probe_relays", "--relay", "good")
    out = capsys.readouterr().out
    assert "good" in out and "up" in out and "bad" not in out

    with pytest.raises(CommandError, match="down"):
        call_command("probe_relays", "--json")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["name"]: line["status"] for line in lines} == {"good": "up", "bad": "down"}
    bad_line = next(line for line in lines if line["name"] == "bad")
    assert {u["error"] for u in bad_line["urls"] if u["url"].startswith("turn:")} == {"401"}
