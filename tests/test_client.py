"""End-to-end tests with the official nats-py client.

Each test runs against gnatsd.py and every installed Go nats-server (the
`any_server` fixture, or a `kind` parameter over the same ORACLES), so the
same client code is proven against the oracle.  Coroutines are driven by
`asyncio.run` inside plain test functions; every await has a timeout, so a
hung server fails a test instead of hanging the run.
"""
from __future__ import annotations

import asyncio
import functools
import os
import time

import pytest

nats = pytest.importorskip("nats")
from nats import errors as nats_errors  # noqa: E402

from conftest import GO_SERVERS, ORACLES, free_port  # noqa: E402

T = 5.0  # per-await timeout, seconds


# -- helpers ----------------------------------------------------------------


def run(coro, timeout: float = 20.0):
    """Run a coroutine to completion with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def aio(fn):
    """Decorator: an `async def test_…` body run by `asyncio.run`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run(fn(*args, **kwargs))
    return wrapper


class Clients:
    """Opens nats-py connections, records async errors, closes them all."""

    def __init__(self, url: str):
        self.url = url
        self.conns = []
        self.errors = []

    async def connect(self, **kw):
        async def error_cb(e):
            self.errors.append(e)

        opts = dict(servers=[self.url], connect_timeout=2, allow_reconnect=False,
                    max_reconnect_attempts=0, error_cb=error_cb, name="test_client")
        opts.update(kw)
        nc = await asyncio.wait_for(nats.connect(**opts), T)
        self.conns.append(nc)
        return nc

    async def close(self):
        for nc in self.conns:
            if not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.close(), T)
                except Exception:
                    pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def flush(*conns, timeout: float = 2.0):
    """A real barrier: each connection's writes reach the server, in order.

    nats-py 2.16.0's `flush()` writes its PING straight to the socket, ahead
    of commands still queued for the flusher task, so its PONG does not prove
    earlier PUB/SUB/UNSUBs were processed.  Push the queue out first (the
    forced flush waits until it is written), then PING.
    """
    for nc in conns:
        await nc._flush_pending(force_flush=True)
        await nc.flush(timeout=timeout)


async def collect(sub, n: int, timeout: float = T) -> list:
    """Read exactly `n` messages from a synchronous subscription."""
    return [await sub.next_msg(timeout=timeout) for _ in range(n)]


async def assert_silent(sub, timeout: float = 0.2):
    with pytest.raises(nats_errors.TimeoutError):
        msg = await sub.next_msg(timeout=timeout)
        pytest.fail("unexpected message %r on %r" % (msg.data, msg.subject))


async def raw_open(server):
    """A raw protocol connection: INFO read, CONNECT with headers sent."""
    r, w = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), T)
    line = await asyncio.wait_for(r.readline(), T)
    assert line.startswith(b"INFO "), line
    w.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
    return r, w


async def raw_readline(r) -> bytes:
    """The next protocol line, skipping async INFO updates (Go 2.10+ sends one)."""
    while True:
        line = await asyncio.wait_for(r.readline(), T)
        if not line.startswith(b"INFO "):
            return line


async def raw_ping(r, w):
    w.write(b"PING\r\n")
    await w.drain()
    assert await raw_readline(r) == b"PONG\r\n"


# -- connect and INFO -------------------------------------------------------


@aio
async def test_connect_exposes_server_info_the_client_relies_on(any_server):
    async with Clients(any_server.url) as cl:
        nc = await cl.connect()
        assert nc.is_connected
        assert nc.connected_url.port == any_server.port
        info = nc._server_info
        assert isinstance(info.get("server_id"), str) and info["server_id"]
        assert isinstance(info.get("version"), str)
        assert nc.connected_server_version.major == 2
        assert info.get("proto") == 1
        assert info.get("headers") is True
        assert nc.max_payload == info["max_payload"] == 1024 * 1024
        assert isinstance(nc.client_id, int) and nc.client_id > 0
        assert info.get("port") == any_server.port
        # A second client gets a different id.
        nc2 = await cl.connect()
        assert nc2.client_id != nc.client_id
        rtt = await nc.rtt(timeout=2)
        assert 0 <= rtt < 1.0
        await nc.close()
        assert nc.is_closed
        assert cl.errors == []


# -- pub/sub ------------------------------------------------------------------


@aio
async def test_pub_sub_with_flush_delivers(any_server):
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("greet.joe")
        await flush(sub_nc)
        await pub_nc.publish("greet.joe", b"hello")
        await pub_nc.publish("greet.ann", b"not for joe")
        await flush(pub_nc)
        msg = await sub.next_msg(timeout=T)
        assert (msg.subject, msg.data, msg.reply) == ("greet.joe", b"hello", "")
        await assert_silent(sub)
        assert cl.errors == []


@aio
async def test_same_connection_pub_sub_with_callback(any_server):
    async with Clients(any_server.url) as cl:
        nc = await cl.connect()
        got = asyncio.Queue()

        async def cb(msg):
            await got.put(msg)

        await nc.subscribe("cb.subject", cb=cb)
        await nc.publish("cb.subject", b"one")
        await flush(nc)
        msg = await asyncio.wait_for(got.get(), T)
        assert (msg.subject, msg.data) == ("cb.subject", b"one")


@aio
async def test_wildcard_subscriptions_match_tokens(any_server):
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        star = await sub_nc.subscribe("foo.*")
        full = await sub_nc.subscribe("foo.>")
        mid = await sub_nc.subscribe("*.bar.*")
        await flush(sub_nc)
        subjects = ["foo", "foo.bar", "foo.bar.baz", "x.bar.y", "foo.baz", "bar.foo"]
        for s in subjects:
            await pub_nc.publish(s, s.encode())
        await flush(pub_nc, sub_nc)

        async def drain_subjects(sub, n):
            msgs = await collect(sub, n)
            await assert_silent(sub, 0.1)
            return [m.subject for m in msgs]

        assert await drain_subjects(star, 2) == ["foo.bar", "foo.baz"]
        assert await drain_subjects(full, 3) == ["foo.bar", "foo.bar.baz", "foo.baz"]
        assert await drain_subjects(mid, 2) == ["foo.bar.baz", "x.bar.y"]


@aio
async def test_overlapping_subscriptions_on_one_connection_each_get_a_copy(any_server):
    async with Clients(any_server.url) as cl:
        nc = await cl.connect()
        a = await nc.subscribe("dup.x")
        b = await nc.subscribe("dup.*")
        await nc.publish("dup.x", b"m")
        await flush(nc)
        assert (await a.next_msg(timeout=T)).data == b"m"
        assert (await b.next_msg(timeout=T)).data == b"m"
        await assert_silent(a, 0.1)
        await assert_silent(b, 0.1)


# -- request / reply ----------------------------------------------------------


@aio
async def test_request_reply_round_trip(any_server):
    async with Clients(any_server.url) as cl:
        svc = await cl.connect()
        cli = await cl.connect()

        async def handler(msg):
            await msg.respond(b"re:" + msg.data)

        await svc.subscribe("svc.echo", cb=handler)
        await flush(svc)
        resp = await cli.request("svc.echo", b"ping", timeout=T)
        assert resp.data == b"re:ping"
        # Many concurrent requests share the client's wildcard inbox.
        resps = await asyncio.wait_for(asyncio.gather(
            *[cli.request("svc.echo", b"%d" % i, timeout=T) for i in range(50)]), T)
        assert [r.data for r in resps] == [b"re:%d" % i for i in range(50)]
        assert cl.errors == []


@aio
async def test_request_with_explicit_reply_subject(any_server):
    async with Clients(any_server.url) as cl:
        svc = await cl.connect()
        cli = await cl.connect()
        req_sub = await svc.subscribe("svc.raw")
        reply_sub = await cli.subscribe("my.reply")
        await flush(svc, cli)
        await cli.publish("svc.raw", b"q", reply="my.reply")
        await flush(cli)
        req = await req_sub.next_msg(timeout=T)
        assert (req.data, req.reply) == (b"q", "my.reply")
        await svc.publish(req.reply, b"a")
        await flush(svc)
        assert (await reply_sub.next_msg(timeout=T)).data == b"a"


@aio
async def test_request_without_responders_fails_fast(any_server):
    async with Clients(any_server.url) as cl:
        nc = await cl.connect()
        start = time.monotonic()
        with pytest.raises(nats_errors.NoRespondersError):
            await nc.request("nobody.home", b"?", timeout=4)
        assert time.monotonic() - start < 1.0
        # The connection is still usable afterwards.
        await flush(nc)
        assert nc.is_connected


# -- queue groups -------------------------------------------------------------


@aio
async def test_queue_group_delivers_each_message_to_exactly_one_member(any_server):
    n = 200
    async with Clients(any_server.url) as cl:
        m1 = await cl.connect()
        m2 = await cl.connect()
        pub = await cl.connect()
        got = {"a": [], "b": [], "plain": []}

        def sink(key):
            async def cb(msg):
                got[key].append(int(msg.data))
            return cb

        await m1.subscribe("jobs", queue="workers", cb=sink("a"))
        await m2.subscribe("jobs", queue="workers", cb=sink("b"))
        await m2.subscribe("jobs", cb=sink("plain"))  # non-queue: sees everything
        await flush(m1, m2)
        for i in range(n):
            await pub.publish("jobs", b"%d" % i)
        await flush(pub, m1, m2)
        deadline = time.monotonic() + T
        while (len(got["a"]) + len(got["b"]) < n or len(got["plain"]) < n) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        a, b = set(got["a"]), set(got["b"])
        assert len(got["a"]) + len(got["b"]) == n, (len(got["a"]), len(got["b"]))
        assert a.isdisjoint(b)
        assert a | b == set(range(n))
        assert a and b, "both queue members must be used"
        assert got["plain"] == list(range(n))


# -- headers ------------------------------------------------------------------


@aio
async def test_headers_round_trip(any_server):
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("hdr")
        await flush(sub_nc)
        hdrs = {"Foo": "Bar", "X-Trace-Id": "abc-123", "Multi": "one, two, three",
                "Empty-Ish": "-"}
        await pub_nc.publish("hdr", b"body", headers=hdrs)
        await pub_nc.publish("hdr", b"", headers={"Only": "header"})
        resp_sub = await pub_nc.subscribe("hdr.reply")
        await flush(pub_nc)
        msg = await sub.next_msg(timeout=T)
        assert msg.data == b"body"
        assert msg.headers == hdrs
        msg = await sub.next_msg(timeout=T)
        assert msg.data == b"" and msg.headers == {"Only": "header"}
        # A plain PUB after an HPUB has no headers.
        await pub_nc.publish("hdr", b"plain")
        await flush(pub_nc)
        msg = await sub.next_msg(timeout=T)
        assert msg.data == b"plain" and not msg.headers
        # Headers with a reply subject (HPUB subject reply hdr total).
        await pub_nc.publish("hdr", b"r", reply="hdr.reply", headers={"K": "v"})
        await flush(pub_nc)
        msg = await sub.next_msg(timeout=T)
        assert (msg.data, msg.reply, msg.headers) == (b"r", "hdr.reply", {"K": "v"})
        await msg.respond(b"back")
        await flush(sub_nc)
        assert (await resp_sub.next_msg(timeout=T)).data == b"back"


@aio
async def test_multi_valued_headers_forwarded_byte_exact(any_server):
    """Repeated header names travel intact; nats-py keeps the last value."""
    async with Clients(any_server.url) as cl:
        nc = await cl.connect()
        sub = await nc.subscribe("mhdr")
        await flush(nc)
        r_sub, w_sub = await raw_open(any_server)
        w_sub.write(b"SUB mhdr 1\r\n")
        await raw_ping(r_sub, w_sub)

        r, w = await raw_open(any_server)
        hdr = b"NATS/1.0\r\nX-Val: a\r\nX-Val: b\r\nOther: z\r\n\r\n"
        payload = b"multi"
        w.write(b"HPUB mhdr %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(payload),
                                                  hdr, payload))
        await raw_ping(r, w)

        msg = await sub.next_msg(timeout=T)
        assert msg.data == payload
        assert msg.headers == {"X-Val": "b", "Other": "z"}
        line = await raw_readline(r_sub)
        assert line == b"HMSG mhdr 1 %d %d\r\n" % (len(hdr), len(hdr) + len(payload))
        body = await asyncio.wait_for(r_sub.readexactly(len(hdr) + len(payload) + 2), T)
        assert body == hdr + payload + b"\r\n"
        for wr in (w, w_sub):
            wr.close()


# -- auto-unsubscribe ---------------------------------------------------------


@aio
async def test_subscribe_max_msgs_auto_unsubscribes(any_server):
    # nats-py enforces `max_msgs` client-side (no UNSUB limit on the wire).
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("auto", max_msgs=3)
        await flush(sub_nc)
        for i in range(10):
            await pub_nc.publish("auto", b"%d" % i)
        await flush(pub_nc, sub_nc)
        msgs = await collect(sub, 3)
        assert [m.data for m in msgs] == [b"0", b"1", b"2"]
        assert sub.delivered == 3
        await assert_silent(sub, 0.1)


@aio
async def test_unsubscribe_with_limit(any_server):
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("limited")
        await flush(sub_nc)
        await pub_nc.publish("limited", b"before")
        await flush(pub_nc, sub_nc)
        assert (await sub.next_msg(timeout=T)).data == b"before"
        # Limit counts messages already delivered: 1 so far, 4 more allowed.
        await sub.unsubscribe(limit=5)
        await flush(sub_nc)
        for i in range(10):
            await pub_nc.publish("limited", b"%d" % i)
        await flush(pub_nc, sub_nc)
        msgs = await collect(sub, 4)
        assert [m.data for m in msgs] == [b"0", b"1", b"2", b"3"]
        assert sub_nc.stats["in_msgs"] == 5


@aio
async def test_unsubscribe_stops_delivery(any_server):
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("gone")
        await flush(sub_nc)
        await sub.unsubscribe()
        await flush(sub_nc)
        await pub_nc.publish("gone", b"x")
        await flush(pub_nc, sub_nc)
        assert sub_nc.stats["in_msgs"] == 0


# -- drain --------------------------------------------------------------------


@aio
async def test_subscription_drain_loses_no_messages(any_server):
    n = 500
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        got = []

        async def cb(msg):
            if len(got) % 50 == 0:
                await asyncio.sleep(0)  # a slowish consumer
            got.append(int(msg.data))

        sub = await sub_nc.subscribe("drain.sub", cb=cb)
        await flush(sub_nc)
        for i in range(n):
            await pub_nc.publish("drain.sub", b"%d" % i)
        await flush(pub_nc)
        await asyncio.wait_for(sub.drain(), T)
        assert got == list(range(n))
        # After drain the interest is gone.
        await flush(sub_nc)
        await pub_nc.publish("drain.sub", b"late")
        await flush(pub_nc, sub_nc)
        assert sub_nc.stats["in_msgs"] == n
        assert sub_nc.is_connected


@aio
async def test_connection_drain_loses_no_messages(any_server):
    n = 500
    async with Clients(any_server.url) as cl:
        closed = asyncio.Event()

        async def closed_cb():
            closed.set()

        sub_nc = await cl.connect(closed_cb=closed_cb)
        pub_nc = await cl.connect()
        got = {"a": 0, "b": 0}

        def counter(key):
            async def cb(msg):
                got[key] += 1
            return cb

        await sub_nc.subscribe("drain.conn.a", cb=counter("a"))
        await sub_nc.subscribe("drain.conn.*", cb=counter("b"))
        await flush(sub_nc)
        for i in range(n):
            await pub_nc.publish("drain.conn.a", b"%d" % i)
        await flush(pub_nc)
        await asyncio.wait_for(sub_nc.drain(), T)
        await asyncio.wait_for(closed.wait(), T)
        assert sub_nc.is_closed
        assert got == {"a": n, "b": n}


@aio
async def test_drain_of_publishing_connection_flushes_its_messages(any_server):
    n = 300
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("drain.pub")
        await flush(sub_nc)
        for i in range(n):
            await pub_nc.publish("drain.pub", b"%d" % i)
        await asyncio.wait_for(pub_nc.drain(), T)
        assert pub_nc.is_closed
        msgs = await collect(sub, n)
        assert [int(m.data) for m in msgs] == list(range(n))


# -- flush, payload sizes, ordering -------------------------------------------


@aio
async def test_flush_does_not_time_out(any_server):
    async with Clients(any_server.url) as cl:
        nc = await cl.connect()
        for _ in range(50):
            await nc.flush(timeout=1)
        for i in range(5000):
            await nc.publish("nobody.listens", b"x" * 64)
        await nc.flush(timeout=2)
        await flush(nc)
        # The server answers PING only after the MSGs queued before it.
        await nc.subscribe("busy")
        for i in range(2000):
            await nc.publish("busy", b"y" * 64)
        await nc.flush(timeout=2)
        await flush(nc)
        assert nc.stats["in_msgs"] == 2000
        assert nc.is_connected
        assert cl.errors == []


@pytest.mark.parametrize("short", [1024, 0], ids=["max_minus_1k", "exactly_max"])
def test_large_payload_near_max_payload_delivered_intact(any_server, short):
    @aio
    async def body():
        async with Clients(any_server.url) as cl:
            sub_nc = await cl.connect()
            pub_nc = await cl.connect()
            size = pub_nc.max_payload - short
            payload = os.urandom(size)
            sub = await sub_nc.subscribe("big")
            await flush(sub_nc)
            await pub_nc.publish("big", payload)
            await pub_nc.publish("big", b"after")
            await flush(pub_nc)
            msg = await sub.next_msg(timeout=T)
            assert len(msg.data) == size
            assert msg.data == payload
            assert (await sub.next_msg(timeout=T)).data == b"after"
            assert cl.errors == []
    body()


@aio
async def test_zero_byte_payload(any_server):
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("empty")
        await flush(sub_nc)
        await pub_nc.publish("empty", b"")
        await pub_nc.publish("empty", b"", reply="some.reply")
        await flush(pub_nc)
        m1, m2 = await collect(sub, 2)
        assert (m1.data, m1.reply) == (b"", "")
        assert (m2.data, m2.reply) == (b"", "some.reply")


@aio
async def test_thousand_messages_arrive_in_order(any_server):
    n = 1000
    async with Clients(any_server.url) as cl:
        sub_nc = await cl.connect()
        pub_nc = await cl.connect()
        sub = await sub_nc.subscribe("seq")
        await flush(sub_nc)
        for i in range(n):
            await pub_nc.publish("seq", b"%d" % i)
        await flush(pub_nc)
        msgs = await collect(sub, n)
        assert [int(m.data) for m in msgs] == list(range(n))
        await flush(sub_nc)
        await assert_silent(sub, 0.1)


# -- no_echo ------------------------------------------------------------------


@aio
async def test_no_echo_suppresses_own_messages(any_server):
    async with Clients(any_server.url) as cl:
        quiet = await cl.connect(no_echo=True)
        other = await cl.connect()
        echo = await cl.connect()
        q_sub = await quiet.subscribe("echo.test")
        e_sub = await echo.subscribe("echo.test")
        await flush(quiet, echo)
        await quiet.publish("echo.test", b"from-quiet")
        await flush(quiet)
        await other.publish("echo.test", b"from-other")
        await flush(other)
        await echo.publish("echo.test", b"from-echo")
        await flush(echo, quiet)
        # The no_echo connection gets others' messages but never its own.
        assert [m.data for m in await collect(q_sub, 2)] == [b"from-other", b"from-echo"]
        await assert_silent(q_sub, 0.1)
        assert quiet.stats["in_msgs"] == 2
        # Its messages still reach other subscribers; echo is on by default.
        got = [m.data for m in await collect(e_sub, 3)]
        assert got == [b"from-quiet", b"from-other", b"from-echo"]


# -- reconnect ----------------------------------------------------------------


def _start_on_port(server_factory, kind: str, port: int):
    args = ("-a", "127.0.0.1", "-p", str(port))
    if kind == "gnatsd":
        return server_factory("gnatsd", *args, addr=False, port=False)
    ver = kind[2:]
    if ver not in GO_SERVERS:
        pytest.skip("Go nats-server %s is not installed" % ver)
    return server_factory("go", *args, addr=False, port=False, version=ver)


@pytest.mark.parametrize("kind", ORACLES)
def test_client_reconnects_after_server_restart_and_resumes_subscriptions(
        server_factory, kind):
    port = free_port()
    first = _start_on_port(server_factory, kind, port)
    assert first.port == port

    @aio
    async def body():
        disconnected = asyncio.Event()
        reconnected = asyncio.Event()

        async def disconnected_cb():
            disconnected.set()

        async def reconnected_cb():
            reconnected.set()

        async with Clients(first.url) as cl:
            nc = await cl.connect(allow_reconnect=True, max_reconnect_attempts=-1,
                                  reconnect_time_wait=0.05, ping_interval=60,
                                  dont_randomize=True,
                                  disconnected_cb=disconnected_cb,
                                  reconnected_cb=reconnected_cb)
            sub = await nc.subscribe("resume.me")
            qsub = await nc.subscribe("resume.q", queue="grp")
            await nc.publish("resume.me", b"before")
            await flush(nc)
            assert (await sub.next_msg(timeout=T)).data == b"before"

            first.kill()
            await asyncio.wait_for(disconnected.wait(), T)
            assert not nc.is_connected

            second = await asyncio.get_running_loop().run_in_executor(
                None, _start_on_port, server_factory, kind, port)
            assert second.port == port
            await asyncio.wait_for(reconnected.wait(), 10)
            assert nc.is_connected
            await flush(nc)  # resent SUBs are processed by now

            # Messages from a fresh client on the new server reach the old subs.
            other = await cl.connect()
            await other.publish("resume.me", b"after")
            await other.publish("resume.q", b"queued")
            await flush(other)
            assert (await sub.next_msg(timeout=T)).data == b"after"
            assert (await qsub.next_msg(timeout=T)).data == b"queued"
            # And the reconnected client can publish and request again.
            await nc.publish("resume.me", b"self")
            await flush(nc)
            assert (await sub.next_msg(timeout=T)).data == b"self"
            with pytest.raises(nats_errors.NoRespondersError):
                await nc.request("nobody.here", b"", timeout=2)
            assert nc.stats["reconnects"] >= 1

    body()
