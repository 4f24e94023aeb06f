"""The safety audit: a relay that grants permission towards private peers is flagged unsafe,
with the exact peers it accepted, and is not assigned without an admin's override."""

import re
from pathlib import Path

import pytest

from relays.models import Relay, RelayEvent
from relays.probes import AUDIT_PEERS
from relays.selectors import select_relays_for
from relays.services import relay_create, relay_sweep
from tests.conftest import free_port, loopback_relay, need_binary
from tests.relays.conftest import probe

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def test_a_relay_that_reaches_private_peers_is_flagged_unsafe(coturn, alice):
    server = coturn(allow_loopback_peers=True)  # allow-loopback-peers and no denied-peer-ip
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="leaky",
        urls=server.urls,
        secret=server.secret,
    )
    (outcome,) = relay_sweep()
    relay.refresh_from_db()
    assert relay.unsafe
    assert {
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
    } <= set(relay.accepted_peers)
    assert relay.status == "up"  # it works, which is the problem: it works for attackers too
    assert select_relays_for(user=alice) == []
    event = RelayEvent.objects.get(relay=relay, kind="unsafe")
    assert "127.0.0.1" in event.detail
    assert "UNSAFE" in relay.last_error
    # The data plane works on this relay (it takes its own loopback address as a peer).
    dp = outcome.report.data_plane
    assert dp.ok and dp.sent == dp.received == 10 and dp.loss == 0 and dp.rtt_ms > 0


def test_a_safe_relay_refuses_every_private_peer(coturn):
    server = coturn(allow_loopback_peers=False)
    report = probe(server.urls, server.secret, audit=True, packets=10)
    assert report.audit.ran and not report.audit.unsafe
    assert sorted(report.audit.refused) == sorted(AUDIT_PEERS)
    # With only 127.0.0.1 to relay from, the data plane can't be measured on a safe relay:
    # it refuses its own relayed address, as it must.
    assert report.data_plane.not_measurable and report.data_plane.error == "403"


def test_the_audit_only_asks_for_permission_and_sends_no_data(coturn):
    server = coturn(allow_loopback_peers=True, extra=["verbose"])
    probe(server.urls, server.secret, audit=True)
    log = server.log
    assert "CREATE_PERMISSION" in log
    for peer in ("10.0.0.1", "169.254.169.254", "192.168.0.1"):
        assert not re.search(rf"(SEND|CHANNEL_BIND|DATA).*{re.escape(peer)}", log), peer


def test_the_deploy_example_passes_the_audit(tmp_path):
    """deploy/coturn/turnserver.conf, moved onto loopback, refuses every private peer."""
    import subprocess
    import time

    binary = need_binary("turnserver")
    port = free_port()
    conf = (ROOT / "deploy" / "coturn" / "turnserver.conf").read_text()
    conf = re.sub(r"^(listening-ip|relay-ip)=.*$", r"\1=127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^listening-port=.*$", f"listening-port={port}", conf, flags=re.M)
    conf = re.sub(r"^static-auth-secret=.*$", "static-auth-secret=deploy-test", conf, flags=re.M)
    conf = (
        re.sub(r"^(min-port|max-port)=.*$", "", conf, flags=re.M)
        + "min-port=61000\nmax-port=61040\n"
    )
    conf = re.sub(r"^(tls-listening-port|cert|pkey)=.*$", "", conf, flags=re.M) + "no-tls\n"
    conf = re.sub(r"^(log-file|pidfile|userdb)=.*$", "", conf, flags=re.M)
    conf += f"log-file={tmp_path / 'turn.log'}\npidfile={tmp_path / 'pid'}\nuserdb={tmp_path / 'db.sqlite'}\n"
    (tmp_path / "turnserver.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "turnserver.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        report = probe(
            [f"turn:127.0.0.1:{port}?transport=udp"], "deploy-test", audit=True, timeout=3
        )
        assert report.ok, report.error
        assert report.audit.ran and report.audit.accepted == []
    finally:
        proc.terminate()
        proc.wait(5)


def test_the_local_relay_of_the_run_command_passes_the_audit(coturn):
    """dev.py run's relay (relays.coturn.run_command_relay_options) refuses every audited peer
    and still relays between its own allocations: the data plane is measured through it, which
    a relay refusing all of loopback can't be (its allocations are on loopback)."""
    relay, server = loopback_relay(coturn, "local", like_run_command=True)
    assert "allowed-peer-ip=127.0.0.2" in server.conf.read_text()
    (outcome,) = relay_sweep()
    relay.refresh_from_db()
    assert not relay.unsafe and relay.accepted_peers == [] and relay.status == "up"
    assert sorted(outcome.report.audit.refused) == sorted(AUDIT_PEERS)
    dp = outcome.report.data_plane
    assert dp.ok and not dp.not_measurable and dp.sent == dp.received == 10, dp
    assert relay.last_loss == 0


def test_a_safe_loopback_relay_can_not_measure_its_data_plane(coturn):
    """The baseline for the test above: refusing all of loopback, a relay on 127.0.0.1 can't
    relay between its own allocations, and the sweep says so rather than call it loss."""
    loopback_relay(coturn, "plain")
    (outcome,) = relay_sweep()
    dp = outcome.report.data_plane
    assert not dp.ok and dp.not_measurable and "127.0.0.1" in dp.detail, dp


def test_relaying_between_own_allocations_needs_an_address_of_its_own():
    from relays.coturn import render_coturn_config

    common = {"port": 3478, "secret": "s" * 32, "realm": "r", "state_dir": "/tmp"}
    for bad in (
        {"listen_ip": "127.0.0.1"},  # no relay address
        {"listen_ip": "127.0.0.1", "relay_ip": "127.0.0.1"},  # everything on 127.0.0.1
        {"listen_ip": "127.0.0.1", "relay_ip": "10.0.0.5"},  # not loopback
        {"listen_ip": "127.0.0.1", "relay_ip": "127.0.0.2", "allow_loopback_peers": True},
    ):
        with pytest.raises(ValueError):
            render_coturn_config(**common, **bad, between_own_allocations=True)
    conf = render_coturn_config(
        **common, listen_ip="127.0.0.1", relay_ip="127.0.0.2", between_own_allocations=True
    )
    assert "allowed-peer-ip=127.0.0.2" in conf.splitlines()
    assert "denied-peer-ip=127.0.0.0-127.255.255.255" in conf.splitlines()


def test_override_is_recorded_and_lets_the_relay_be_assigned(coturn, alice, django_user_model):
    from relays.services import relay_set_unsafe_override

    admin = django_user_model.objects.create_superuser("root", password="x")
    server = coturn(allow_loopback_peers=True)
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="rig",
        urls=server.urls,
        secret=server.secret,
    )
    relay_sweep()
    relay.refresh_from_db()
    assert relay.unsafe and select_relays_for(user=alice) == []
    relay_set_unsafe_override(
        relay=relay, override=True, actor=admin, reason="loopback browser test rig"
    )
    assert [r.name for r in select_relays_for(user=alice)] == ["rig"]
    event = RelayEvent.objects.get(relay=relay, kind="override")
    assert event.actor == admin and "loopback browser test rig" in event.detail
    assert Relay.objects.get(pk=relay.pk).unsafe  # still flagged: the override doesn't hide it


def test_a_safe_relay_with_its_own_address_passes_both_the_data_plane_and_the_audit(
    coturn, relay_netns
):
    server = coturn(allow_loopback_peers=False, netns=relay_netns)
    relay = relay_create(
        allow_private=True,
        private_reason="a test rig on loopback",
        name="netns-relay",
        urls=server.urls,
        secret=server.secret,
    )
    (outcome,) = relay_sweep()
    relay.refresh_from_db()
    report = outcome.report
    assert report.ok, report.error
    assert report.audit.ran and report.audit.accepted == []  # refuses every private peer
    dp = report.data_plane
    assert dp.ok and not dp.not_measurable and dp.sent == dp.received == 10, dp
    assert dp.loss == 0 and dp.rtt_ms > 0 and dp.jitter_ms is not None
    assert relay.status == "up" and not relay.unsafe and relay.last_loss == 0
    assert outcome.observation == "ok"


def test_ipv6_urls_are_probed_where_advertised(coturn):
    server = coturn(allow_loopback_peers=False, extra=["listening-ip=::1"])
    urls = [f"turn:[::1]:{server.port}?transport=udp", f"turn:[::1]:{server.port}?transport=tcp"]
    report = probe(urls, server.secret)
    assert report.ok, report.error
    assert [r.url for r in report.results] == [f"stun:[::1]:{server.port}", *urls]
