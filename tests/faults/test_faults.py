"""The platform under faults, with real processes. Each test states what was measured here.

- coturn killed, then restarted: out of ICE responses within 2 sweeps, back after recovery.
- Redis restarted mid-call: the signaling sockets come back and media never stops.
- Redis frozen: sign-in and call start answer 503 within seconds, and no call is half-made.
- Celery worker stopped: relays go stale and are withdrawn; health comes back when it restarts.
- The database unreachable for 10 s: 503s, then recovery, nothing half-written.
- Redis restarted three times under a running worker: it takes tasks again after each, and its
  own steps log no error.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client

from calls.models import Call, ParticipantState
from relays.selectors import select_relays_for
from relays.services import relay_sweep
from tests.conftest import database_proxy, loopback_relay, seconds_until, wait_for
from tests.e2e.conftest import CONNECTED, dial_and_answer, sign_in, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FIGURES: list[str] = []


@pytest.fixture(autouse=True)
def _report(e2e_figures):
    yield
    e2e_figures.extend(FIGURES)
    FIGURES.clear()


def signed_in_opener(base: str, user) -> tuple[urllib.request.OpenerDirector, str]:
    """An HTTP client with alice's session (made in the shared database) and a CSRF token."""
    client = Client()
    client.force_login(user)
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    host = urllib.parse.urlsplit(base).hostname
    jar.set_cookie(
        http.cookiejar.Cookie(
            0,
            "sessionid",
            client.cookies["sessionid"].value,
            None,
            False,
            host,
            False,
            False,
            "/",
            True,
            False,
            None,
            True,
            None,
            None,
            {},
        )
    )
    page = opener.open(base + "/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    return opener, token


def request(opener, method: str, url: str, *, body=None, token=None, form=False):
    data = None
    headers = {"Referer": url}
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    if token:
        headers["X-CSRFToken"] = token
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with opener.open(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_killed_relay_leaves_ice_responses_within_two_sweeps_and_comes_back(
    stack, coturn, alice, settings
):
    """Measured here in 5 runs (sweep every 2 s, probe timeout 0.5 s, down after 2 bad sweeps):
    out of GET /api/v1/ice-servers/ 4.4-4.6 s after the kill; back 3.3-3.6 s after the restart
    (2 good sweeps)."""
    interval = 2.0
    settings.RELAY_SWEEP_INTERVAL = interval
    relay, server = loopback_relay(coturn, "fault-relay")
    # The test asks for ICE servers every 0.2 s: past ICE_ISSUE_RATE (60/m) it was refused with
    # 429 when the relay took a little longer to come back (seen in CI).
    s = stack(
        RELAY_SWEEP_INTERVAL=interval,
        RELAY_PROBE_TIMEOUT=0.5,
        RELAY_SWEEP_ON_WORKER_START="true",
        ICE_ISSUE_RATE="100000/m",
    )
    s.start("web")
    s.start("worker")
    s.start("beat")
    opener, _ = signed_in_opener(s.base, alice)

    def offered() -> bool:
        status, body = request(opener, "GET", s.base + "/api/v1/ice-servers/")
        assert status == 200, body
        return [r["name"] for r in json.loads(body)["relays"]] == ["fault-relay"]

    wait_for(offered, timeout=30)
    server.stop()
    gone = seconds_until(lambda: not offered(), timeout=6 * interval, step=0.2)
    assert gone <= 2 * interval + 2 * 0.5 + interval  # 2 sweeps (+ their probes, + beat's phase)
    server.start()
    back = seconds_until(offered, timeout=6 * interval, step=0.2)
    relay.refresh_from_db()
    kinds = list(relay.events.values_list("kind", flat=True).order_by("at", "id"))
    assert kinds[-2:] == ["down", "up"], kinds
    FIGURES.append(
        f"fault: coturn killed -> out of ICE responses in {gone:.1f} s; restarted -> back in "
        f"{back:.1f} s (sweep every {interval:.0f} s)"
    )


@pytest.mark.parametrize("fault", ["redis", "web"])
def test_signaling_restarted_mid_call_media_never_stops(
    fault, stack, private_redis, coturn, browser, alice, bob, password
):
    """Measured here. `redis`: Redis killed and started again 2 s later; both pages' sockets
    came back (a resume, no renegotiation) 0.1-3.9 s after Redis did (3 runs). `web`: Daphne stopped
    (SIGTERM) and started again 2 s later on the same port; the new process handed the old one's
    devices their grace window at start-up, and both pages resumed 0.2-3.8 s after it answered
    (2 runs; the pages' reconnect back-off grows while it is down).
    Either way inbound media grew in every sample and the call record kept its join times."""
    loopback_relay(coturn, "fault-rig", rig=True)
    # (in a thread: Playwright's sync API runs an event loop in this one)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(relay_sweep).result()
    s = stack(REDIS_URL=private_redis.url)
    s.start("web")
    a = sign_in(browser, s.base, "alice", password)
    b = sign_in(browser, s.base, "bob", password)
    dial_and_answer(a, b, "bob")
    connected = CONNECTED
    for page in (a, b):
        wait_until(page, "window.traverseCall.report !== null")
        # "Connected" comes before the media (the connection was up while it rang): the claim
        # is that media that flows keeps flowing through the fault, so it flows first.
        wait_until(page, "window.traverseCall.mediaFlowingAt !== null", timeout=10_000)
    call = Call.objects.get()
    joined_at = {p.user_id: p.joined_at for p in call.participants.all()}
    bytes_before = {p: p.evaluate("window.traverseCall.inboundBytes()") for p in (a, b)}
    assert all(bytes_before.values()), bytes_before

    if fault == "redis":
        private_redis.kill()
    else:
        s.stop("web", signal.SIGTERM)
    time.sleep(2)
    for page in (a, b):  # media flows while signaling is down
        later = page.evaluate("window.traverseCall.inboundBytes()")
        assert later > bytes_before[page]
        bytes_before[page] = later
    if fault == "redis":
        private_redis.start()
    else:
        s.start("web")
    restarted = time.monotonic()
    for page in (a, b):
        wait_until(page, "window.traverseCall.signalingSessions >= 2", timeout=30_000)
    # Each page is `connected` again once the other one is back too: the other may still be in
    # its reconnect back-off (up to 10 s between tries), so this waits as long as that.
    for page in (a, b):
        try:
            wait_until(page, connected, timeout=30_000)
        except TimeoutError:
            print(
                page.evaluate(
                    "JSON.stringify([window.traverseCall.status, window.traverseCall.peerList()])"
                )
            )
            raise
    resumed = time.monotonic() - restarted
    time.sleep(2)
    stale = []  # frames about the peer that arrived after newer ones (see call.js: stale())
    for page in (a, b):
        state = page.evaluate(
            "async () => ({connections: window.traverseCall.connections,"
            " bytes: await window.traverseCall.inboundBytes(),"
            " stale: window.traverseCall.staleFrames})"
        )
        stale.append(state["stale"])
        assert state["connections"] == 1, state  # the same peer connection throughout
        assert state["bytes"] > bytes_before[page]
    wait_for(lambda: all(p.state == ParticipantState.JOINED for p in call.participants.all()), 10)
    for p in call.participants.all():
        assert p.joined_at == joined_at[p.user_id]
    call.refresh_from_db()
    assert call.state == "connected"
    a.click("#hangup")
    b.wait_for_url("**/details/", timeout=10_000)
    for page in (a, b):
        page.context.close()
    what = "Redis killed" if fault == "redis" else "Daphne stopped"
    FIGURES.append(
        f"fault: {what} for 2 s mid-call -> sockets resumed {resumed:.1f} s after it was "
        f"back, 1 peer connection each, media never stopped; frames out of date ignored: {stale}"
    )


def test_redis_frozen_gives_503s_and_no_half_made_call(stack, private_redis, alice, bob, password):
    """Measured before the fix: with Redis frozen, sign-in answered 500, and POST /api/v1/calls/
    answered 500 yet created a call nobody was rung for. Now (SIGSTOP on redis-server): sign-in
    and call start both answer 503 after 2.0-2.1 s (the cache's read timeout: the rate-limit counter
    is read first) in 4 runs, no call is stored, and both work again once Redis thaws."""
    s = stack(REDIS_URL=private_redis.url)
    s.start("web")
    opener, token = signed_in_opener(s.base, alice)
    anon = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    page = anon.open(s.base + "/accounts/login/").read().decode()
    login_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    private_redis.freeze()
    try:
        t0 = time.monotonic()
        status, body = request(
            anon,
            "POST",
            s.base + "/accounts/login/",
            form=True,
            body={"username": "bob", "password": password, "csrfmiddlewaretoken": login_token},
        )
        sign_in_s = time.monotonic() - t0
        assert status == 503 and b"Redis" in body
        t0 = time.monotonic()
        status, body = request(
            opener, "POST", s.base + "/api/v1/calls/", body={"callee": "bob"}, token=token
        )
        call_s = time.monotonic() - t0
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "unavailable"
        assert not Call.objects.exists()
    finally:
        private_redis.thaw()
    status, body = request(
        opener, "POST", s.base + "/api/v1/calls/", body={"callee": "bob"}, token=token
    )
    assert status == 201, body
    assert Call.objects.count() == 1
    FIGURES.append(
        f"fault: Redis frozen -> sign-in 503 in {sign_in_s:.1f} s, call start 503 in "
        f"{call_s:.1f} s with nothing stored; 201 once thawed"
    )


def test_a_stopped_worker_withdraws_relays_and_its_return_restores_them(
    stack, coturn, alice, settings
):
    """Measured here in 5 runs (sweep every 1.5 s, stale after 3 sweeps = 4.5 s): with the
    worker killed, the relay left the selection 4.5 s later (stale, shown as such); restarted,
    it was offered again 1.0-1.5 s later."""
    interval = 1.5
    settings.RELAY_SWEEP_INTERVAL = interval
    relay, _ = loopback_relay(coturn, "beat-relay")
    # The test asks for ICE servers every 0.2 s: past ICE_ISSUE_RATE (60/m) it was refused with
    # 429 when the relay took a little longer to come back (seen in CI).
    s = stack(
        RELAY_SWEEP_INTERVAL=interval,
        RELAY_PROBE_TIMEOUT=0.5,
        RELAY_SWEEP_ON_WORKER_START="true",
        ICE_ISSUE_RATE="100000/m",
    )
    s.start("worker")
    s.start("beat")

    def offered() -> bool:
        return [r.name for r in select_relays_for(user=alice)] == ["beat-relay"]

    wait_for(offered, timeout=30)
    s.stop("worker")
    gone = seconds_until(lambda: not offered(), timeout=10 * interval, step=0.2)
    relay.refresh_from_db()
    assert relay.display_status() == "stale"
    s.start("worker")
    back = seconds_until(offered, timeout=20, step=0.2)
    FIGURES.append(
        f"fault: worker killed -> relay withdrawn (stale) in {gone:.1f} s; worker back -> "
        f"offered again in {back:.1f} s (sweep every {interval} s)"
    )


def test_the_database_unreachable_for_10_s(stack, alice, bob):
    """Measured here: with every connection to PostgreSQL cut for 10 s (a proxy in between),
    API requests answered 503 (JSON, Retry-After) throughout (20 of 20), the first 201 came
    0.03-0.06 s after the network was back (6 runs), and the calls stored were exactly the ones
    answered 201. With the connection pool (config.postgresql): 20 of 20, 0.07-0.09 s."""
    with database_proxy() as (proxy, url):
        # A pool that waited out its timeout for a connection it couldn't make answered one
        # request in the 10 s (each after the whole wait): with a 30-s timeout, none at all.
        s = stack(DATABASE_URL=url, DATABASE_POOL_TIMEOUT="30")
        s.start("web")
        opener, token = signed_in_opener(s.base, alice)
        codes: list[int] = []
        created = 0
        proxy.cut()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < 10:
            status, body = request(
                opener, "POST", s.base + "/api/v1/calls/", body={"callee": "bob"}, token=token
            )
            codes.append(status)
            assert status == 503, body
            assert json.loads(body)["error"]["code"] == "unavailable"
            time.sleep(0.5)
        assert len(codes) >= 10  # each 503 at once, not after the pool's timeout
        proxy.restore()
        back_at = time.monotonic()
        while True:
            status, body = request(
                opener, "POST", s.base + "/api/v1/calls/", body={"callee": "bob"}, token=token
            )
            if status == 201:
                created += 1
                break
            assert status == 503 and time.monotonic() - back_at < 10, (status, body)
            time.sleep(0.1)
        recovered = time.monotonic() - back_at
        assert Call.objects.count() == created == 1
        assert all(c.participants.count() == 2 for c in Call.objects.all())
    FIGURES.append(
        f"fault: database cut for 10 s -> {len(codes)} requests, all 503; first 201 "
        f"{recovered:.2f} s after it was back; nothing half-written"
    )


def test_a_webhook_survives_a_stopped_worker_and_a_lost_queue(stack, private_redis, settings):
    """The call starts while no worker runs; then Redis restarts empty (the queued delivery task
    is lost with it). The event was stored with the call (the outbox): once the worker and beat
    are back, the due sweep delivers it, signed. Measured here: delivered 1-3 s after they
    started (the sweep runs every second in this test)."""
    from standardwebhooks.webhooks import Webhook

    from integrations.models import WebhookDelivery
    from tests.integrations.test_api_keys import make_key
    from tests.integrations.test_webhooks import Receiver

    settings.WEBHOOK_ALLOW_PRIVATE = True
    receiver = Receiver()
    key = make_key("users:write", "calls:write", "webhooks")
    s = stack(REDIS_URL=private_redis.url, WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_SWEEP_SECONDS=1)
    s.start("web")
    api = urllib.request.build_opener()

    def call_api(method, path, body=None):
        req = urllib.request.Request(
            s.base + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with api.open(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    for ext in ("u-1", "u-2"):
        assert call_api("POST", "/api/v1/users/", {"externalId": ext, "displayName": ext})[0] == 201
    status, hook = call_api("POST", "/api/v1/webhooks/", {"url": receiver.url})
    assert status == 201
    status, call = call_api("POST", "/api/v1/calls/", {"participants": ["u-1", "u-2"]})
    assert status == 201, call
    delivery = WebhookDelivery.objects.get(message__type="call.started")
    assert delivery.state == "pending" and receiver.got == []
    private_redis.kill()  # the queued task goes with it
    private_redis.start()
    started = time.monotonic()
    s.start("worker")
    s.start("beat")
    took = seconds_until(lambda: len(receiver.got) > 0, timeout=60, step=0.2)
    (event,) = [Webhook(hook["secret"]).verify(body, headers) for headers, body in receiver.got[:1]]
    assert event["type"] == "call.started" and event["data"]["call"]["id"] == call["id"]

    def recorded() -> bool:
        # The worker writes the outcome once the receiver has answered, so after the receiver
        # has the body: read at once, it was still "pending" once in 760 tests.
        delivery.refresh_from_db()
        return delivery.state == "delivered"

    wait_for(recorded, timeout=10, what="the delivery recorded as delivered")
    # Once: the lost task's sweep and any later sweep found it claimed (the lease), or done.
    assert delivery.attempts == 1 and len(receiver.got) == 1
    receiver.server.shutdown()
    FIGURES.append(
        f"fault: call event while no worker ran and its queued task lost with Redis -> delivered "
        f"{took:.1f} s after the worker and beat came back ({time.monotonic() - started:.1f} s)"
    )


def test_the_worker_takes_tasks_across_redis_restarts(stack, private_redis):
    """Redis killed and started again, three times, under a worker run as the run command runs
    it (dev.WORKER_FLAGS, two processes): a task sent after each restart is done, and the
    worker's own steps log no error. (Celery 5.2-5.3 workers stopped taking tasks after a Redis
    restart, celery#8030: this holds an upgrade of the lock to it.) Each task is sent by a
    client of its own, and its effect is read from the database: no result store, whose own
    reconnects are not the worker's."""
    from datetime import timedelta

    from celery import Celery
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    s = stack(REDIS_URL=private_redis.url)
    s.concurrency = 2
    s.start("worker")
    wait_for(lambda: " ready." in (s.logs / "worker.log").read_text(), timeout=60)

    def task_done() -> float:
        started = time.monotonic()
        Session.objects.create(
            session_key="expired-probe",
            session_data="",
            expire_date=timezone.now() - timedelta(days=1),
        )
        # Not the current app: the later tests' .delay() go through the project's app, not to
        # this test's Redis (a draft that forgot this broke every test after it).
        client = Celery(broker=private_redis.url, set_as_current=False)
        try:
            client.send_task("accounts.tasks.clear_expired_sessions", ignore_result=True)
        finally:
            client.close()
        wait_for(
            lambda: not Session.objects.filter(session_key="expired-probe").exists(), timeout=60
        )
        return time.monotonic() - started

    took = [task_done()]
    for _ in range(3):
        private_redis.kill()
        time.sleep(3)  # the worker notices, and retries against a closed port
        private_redis.start()
        took.append(task_done())
    log = (s.logs / "worker.log").read_text()
    assert "ERROR celery.bootsteps" not in log, log[-3000:]
    assert log.count("Connection to broker lost") >= 3, log[-3000:]
    FIGURES.append(
        "fault: Redis restarted 3 times under the worker -> a task done "
        + ", ".join(f"{t:.1f}" for t in took)
        + " s after it was sent (before, then after each restart)"
    )
