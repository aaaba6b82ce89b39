"""The system account's requests (`$SYS.REQ.SERVER...`), as natscli sends them.

A user of the system account publishes a request with a reply inbox; every
server (PING) or the one named by id answers with Go's envelope:
`{"server": {...}, "statsz": {...}}` for STATSZ, `{"server": ..., "data":
...}` for the monitor's endpoints, the bare `{"name","host","id"}` for IDZ.
The same requests go to Go 2.15 with the same config, and the key paths
and JSON types of the answers are compared, as tests/test_monitor.py does
for HTTP (values differ: ids, times, counts).  In a cluster the requests
and answers travel over routes, so a PING counts every node, gnatsd.py and
Go alike.
"""
from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from conftest import (go_server_path, server_id as id_of, start_gnatsd, start_go, wait_mesh, wait_routes,
                      write_conf)

# The subscriptions a gnatsd.py server holds for the $SYS requests it
# answers: PING, PING.<X>, <its id>.<X>, ACCOUNT.*.CONNZ and ACCOUNT.*.STATZ
# (Go holds many more).
SYS_SUBS = 5

ACCOUNTS = """
accounts {
  SYS { users: [{user: sys, password: sys}] }
  APP { users: [{user: app, password: app}] }
}
system_account: SYS
"""


def request_all(port: int, subject: str, body: bytes = b"", user: str = "sys",
                wait: float = 0.5, count: int | None = None) -> list:
    """Publish `subject` with a reply inbox as `user`; the JSON answers that
    came within `wait` s of the last one (or as soon as `count` came)."""
    async def run():
        nc = await nats.connect("nats://%s:%s@127.0.0.1:%d" % (user, user, port))
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.flush()
            await nc.publish(subject, body, reply=inbox)
            got = []
            while count is None or len(got) < count:
                try:
                    msg = await sub.next_msg(timeout=wait)
                except nats.errors.TimeoutError:
                    break
                if msg.headers and msg.headers.get("Status") == "503":
                    continue        # no responders: nobody in the account answered
                got.append(json.loads(msg.data))
            return got
        finally:
            await nc.close()
    return asyncio.run(run())


def shape(value):
    """The key paths and JSON types of a value (lists by their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def missing_paths(ours, go, path="") -> list:
    """Key paths Go has that ours lacks, or has with another type."""
    if isinstance(go, dict):
        if not isinstance(ours, dict):
            return [path or "."]
        out = []
        for key, item in go.items():
            if key not in ours:
                out.append(path + "/" + key)
            else:
                out += missing_paths(ours[key], item, path + "/" + key)
        return out
    if isinstance(go, list) and go and isinstance(ours, list) and ours:
        return missing_paths(ours[0], go[0], path + "[]")
    return [] if ours == go or isinstance(go, list) else [path + " (%s vs %s)" % (ours, go)]


# Server-info fields Go 2.15 has that gnatsd.py does not claim (2.15-only).
GO_ONLY = {"/server/feature_flags", "/statsz/sent_to_clients", "/statsz/received_from_clients",
           "/statsz/gomaxprocs"}


@pytest.mark.parametrize("subject,body", [
    ("$SYS.REQ.SERVER.PING", b""),
    ("$SYS.REQ.SERVER.PING.STATSZ", b""),
    ("$SYS.REQ.SERVER.PING.VARZ", b""),
    ("$SYS.REQ.SERVER.PING.CONNZ", b'{"subscriptions": true}'),
    ("$SYS.REQ.SERVER.PING.SUBSZ", b""),
    ("$SYS.REQ.SERVER.PING.ROUTEZ", b""),
    ("$SYS.REQ.SERVER.PING.HEALTHZ", b""),
    ("$SYS.REQ.SERVER.PING.ACCOUNTZ", b""),
    ("$SYS.REQ.SERVER.PING.IDZ", b""),
    ("$SYS.REQ.ACCOUNT.SYS.CONNZ", b""),
    ("$SYS.REQ.ACCOUNT.SYS.STATZ", b""),
], ids=lambda v: v.replace("$SYS.REQ.", "").replace(".", "-") if isinstance(v, str) else None)
def test_each_request_gets_an_answer_shaped_as_go_s(tmp_path, subject, body):
    if go_server_path("2.15") is None:
        pytest.skip("Go nats-server 2.15 is not installed")
    conf = write_conf(tmp_path, ACCOUNTS, "sys.conf")
    ours, go = start_gnatsd("-c", conf), start_go("-c", conf, version="2.15")
    try:
        (mine,) = request_all(ours.port, subject, body, count=1)
        (theirs,) = request_all(go.port, subject, body, count=1)
    finally:
        ours.stop()
        go.stop()
    # (The monitor's answers inside "data" are compared field by field over
    # HTTP in test_monitor.py; here, the envelope and STATSZ.)
    problems = [p for p in missing_paths(shape(mine), shape(theirs)) if p not in GO_ONLY
                and not p.startswith(("/data/", "/server/feature_flags"))]
    assert problems == [], problems
    assert ("data" in mine) == ("data" in theirs)


def test_ping_answers_and_a_server_by_id(tmp_path):
    conf = write_conf(tmp_path, ACCOUNTS, "sys.conf")
    srv = start_gnatsd("-c", conf)
    try:
        (ping,) = request_all(srv.port, "$SYS.REQ.SERVER.PING", count=1)
        server_id = ping["server"]["id"]
        assert ping["statsz"]["connections"] == 1
        (varz,) = request_all(srv.port, "$SYS.REQ.SERVER.%s.VARZ" % server_id, count=1)
        assert varz["data"]["server_id"] == server_id and varz["server"]["id"] == server_id
        # Another server's id: nobody answers.
        assert request_all(srv.port, "$SYS.REQ.SERVER.NOSUCHID.VARZ", wait=0.3) == []
        # A user of another account does not reach the system account.
        assert request_all(srv.port, "$SYS.REQ.SERVER.PING", user="app", wait=0.3) == []
        # Filters: a server_name that is not ours leaves this server out.
        assert request_all(srv.port, "$SYS.REQ.SERVER.PING.VARZ", b'{"server_name":"zzz"}',
                           wait=0.3) == []
        # Account requests: CONNZ of one account; STATZ only of one in use.
        (mine,) = request_all(srv.port, "$SYS.REQ.ACCOUNT.SYS.CONNZ", count=1)
        assert mine["data"]["num_connections"] == 1     # the requester
        assert request_all(srv.port, "$SYS.REQ.ACCOUNT.APP.CONNZ", count=1)[0][
            "data"]["num_connections"] == 0
        assert request_all(srv.port, "$SYS.REQ.ACCOUNT.APP.STATZ", wait=0.3) == []
        (unused,) = request_all(srv.port, "$SYS.REQ.ACCOUNT.APP.STATZ",
                                b'{"include_unused": true}', count=1)
        assert [a["acc"] for a in unused["data"]["account_statz"]] == ["APP"]
        (bad,) = request_all(srv.port, "$SYS.REQ.SERVER.PING.CONNZ", b'{"sort":"nope"}',
                             count=1)
        assert bad["error"]["code"] == 400 and "sort" in bad["error"]["description"]
    finally:
        srv.stop()


@pytest.mark.parametrize("kinds", [("gnatsd", "gnatsd", "go2.15"), ("go2.15", "gnatsd", "gnatsd")],
                         ids=["gnatsd-first", "go-first"])
def test_ping_counts_every_node_of_a_mixed_cluster(cluster_factory, kinds):
    """Two gnatsd.py nodes and a Go 2.15 node: a system user on any node
    gets three PING answers, and each node's VARZ by id."""
    if go_server_path("2.15") is None:
        pytest.skip("Go nats-server 2.15 is not installed")
    cluster = cluster_factory("sys")
    nodes = []
    for kind in kinds:
        nodes.append(cluster.start(kind, routes=nodes[-1:], top=ACCOUNTS))
    wait_mesh(nodes)
    ids = set()
    for node in nodes:
        deadline = time.monotonic() + 10
        while True:
            answers = request_all(node.port, "$SYS.REQ.SERVER.PING", count=3, wait=1.0)
            if len(answers) == 3 or time.monotonic() > deadline:
                break
        assert len(answers) == 3, [a["server"]["name"] for a in answers]
        ids = {a["server"]["id"] for a in answers}
    for node in nodes:
        for server_id in ids:
            (varz,) = request_all(node.port, "$SYS.REQ.SERVER.%s.VARZ" % server_id, count=1,
                                  wait=2.0)
            assert varz["data"]["server_id"] == server_id


def test_kick_ldm_and_reload_by_id(tmp_path):
    """KICK closes the client named by cid (reason "Kicked"), LDM sends it
    an INFO with `ldm`, RELOAD applies a changed file; each answers with
    the server envelope, or Go's error when the cid is unknown."""
    from conftest import RawConn, t_ping_pong, t_read_until_closed
    conf = write_conf(tmp_path, ACCOUNTS, "sys.conf")
    srv = start_gnatsd("-c", conf, "-m", "-1")
    try:
        (ping,) = request_all(srv.port, "$SYS.REQ.SERVER.PING", count=1)
        base = "$SYS.REQ.SERVER.%s." % ping["server"]["id"]
        victim = RawConn(srv.host, srv.port)
        victim.read_info()
        victim.send(b'CONNECT {"verbose":false,"user":"app","pass":"app","protocol":1}\r\n')
        t_ping_pong(victim)
        (connz,) = request_all(srv.port, "$SYS.REQ.SERVER.PING.CONNZ", b'{"acc":"APP"}', count=1)
        cid = connz["data"]["connections"][0]["cid"]
        (ldm,) = request_all(srv.port, base + "LDM", b'{"cid": %d}' % cid, count=1)
        assert "error" not in ldm and ldm["server"]["id"] == ping["server"]["id"]
        data = bytes(victim.buf)            # (t_expect would drop an INFO as unasked)
        victim.sock.settimeout(5)
        while b" \r\n" not in data[data.find(b"INFO "):]:
            chunk = victim.sock.recv(65536)
            assert chunk, data
            data += chunk
        start = data.index(b"INFO ") + 5
        info = json.loads(data[start:data.index(b" \r\n", start)])
        assert info["ldm"] is True
        (kick,) = request_all(srv.port, base + "KICK", b'{"cid": %d}' % cid, count=1)
        assert "error" not in kick
        assert t_read_until_closed(victim) == b""
        (gone,) = request_all(srv.port, base + "KICK", b'{"cid": %d}' % cid, count=1)
        assert gone["error"] == {"code": 500, "description": "no such client or leafnode id"}
        # RELOAD: a new user in APP can log in afterwards.
        write_conf(tmp_path, ACCOUNTS.replace("{user: app, password: app}",
                                              "{user: app, password: app}, {user: b, password: b}"),
                   "sys.conf")
        (reload,) = request_all(srv.port, base + "RELOAD", count=1)
        assert "error" not in reload, reload
        assert request_all(srv.port, "$SYS.REQ.SERVER.PING", user="b", wait=0.3) == []
        (closed,) = request_all(srv.port, "$SYS.REQ.SERVER.PING.CONNZ",
                                b'{"state": 1, "acc": "APP"}', count=1)
        assert closed["data"]["connections"][0]["reason"] == "Kicked"
    finally:
        srv.stop()


def events_seen(port: int, account: str = "APP") -> list:
    """(subject, event) of a system user's view while an `account` client
    connects, publishes once and closes."""
    async def run():
        nc = await nats.connect("nats://sys:sys@127.0.0.1:%d" % port)
        got = []

        async def note(msg):
            got.append((msg.subject, json.loads(msg.data)))
        await nc.subscribe("$SYS.ACCOUNT.%s.CONNECT" % account, cb=note)
        await nc.subscribe("$SYS.ACCOUNT.%s.DISCONNECT" % account, cb=note)
        await nc.flush()
        user = account.lower()
        other = await nats.connect("nats://%s:%s@127.0.0.1:%d" % (user, user, port), name="evt")
        await other.publish("x", b"hello")
        await other.flush()
        await other.close()
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await nc.close()
        return got
    return asyncio.run(run())


def test_connect_and_disconnect_events_as_go_sends_them(tmp_path):
    """A client of APP logging in and out gives `$SYS.ACCOUNT.APP.CONNECT`
    and `.DISCONNECT` with Go's fields: who (client info), and on the way
    out what it sent and received and why it left."""
    conf = write_conf(tmp_path, ACCOUNTS, "sys.conf")
    srv = start_gnatsd("-c", conf)
    try:
        ours = events_seen(srv.port)
    finally:
        srv.stop()
    assert [s for s, _ in ours] == ["$SYS.ACCOUNT.APP.CONNECT", "$SYS.ACCOUNT.APP.DISCONNECT"]
    connect, disconnect = ours[0][1], ours[1][1]
    assert connect["type"] == "io.nats.server.advisory.v1.client_connect"
    assert (connect["client"]["acc"], connect["client"]["user"], connect["client"]["name"]) == \
        ("APP", "app", "evt")
    assert disconnect["type"] == "io.nats.server.advisory.v1.client_disconnect"
    assert disconnect["sent"] == {"msgs": 1, "bytes": 5}
    assert disconnect["reason"] == "Client Closed"
    if go_server_path("2.15") is not None:
        go = start_go("-c", conf, version="2.15")
        try:
            theirs = events_seen(go.port)
        finally:
            go.stop()
        for (_, mine), (_, their) in zip(ours, theirs):
            problems = [p for p in missing_paths(shape(mine), shape(their))
                        if not p.startswith(("/server/feature_flags", "/client/rtt"))]
            assert problems == [], problems


def subjects_seen(port: int, subjects: list, action, want: int, into: list | None = None,
                  until=None) -> list:
    """(subject, event) a system user sees on `subjects` while
    `action(port)` (a coroutine function) runs, until `want` arrived (or
    `until()` holds) or 5 s; `into` is the list they are gathered in."""
    async def run():
        nc = await nats.connect("nats://sys:sys@127.0.0.1:%d" % port)
        got = into if into is not None else []

        async def note(msg):
            got.append((msg.subject, json.loads(msg.data)))
        for subject in subjects:
            await nc.subscribe(subject, cb=note)
        await nc.flush()
        await action(port)
        deadline = time.monotonic() + 5
        while not (until() if until else len(got) >= want) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await nc.close()
        return got
    return asyncio.run(run())


async def _app_client_comes_and_goes(port: int):
    other = await nats.connect("nats://app:app@127.0.0.1:%d" % port, name="evt")
    await other.flush()
    await other.close()


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_account_connection_count_events(kind, tmp_path):
    """A client of APP coming and going: `$SYS.ACCOUNT.APP.SERVER.CONNS`
    (and the older `$SYS.SERVER.ACCOUNT.APP.CONNS`) with the account's
    count, 1 then 0, in Go's account_connections event."""
    conf = write_conf(tmp_path, ACCOUNTS, "sys.conf")
    srv = start_gnatsd("-c", conf) if kind == "gnatsd" else start_go("-c", conf, version="2.15")
    try:
        seen = subjects_seen(srv.port, ["$SYS.ACCOUNT.APP.SERVER.CONNS",
                                        "$SYS.SERVER.ACCOUNT.APP.CONNS"],
                             _app_client_comes_and_goes, 4)
    finally:
        srv.stop()
    new = [event for subject, event in seen if subject == "$SYS.ACCOUNT.APP.SERVER.CONNS"]
    old = [event for subject, event in seen if subject == "$SYS.SERVER.ACCOUNT.APP.CONNS"]
    assert [e["conns"] for e in new] == [e["conns"] for e in old] == [1, 0], seen
    for event in new:
        assert event["type"] == "io.nats.server.advisory.v1.account_connections"
        assert event["acc"] == "APP" and event["total_conns"] == event["conns"]
        assert isinstance(event["server"]["id"], str) and "num_subscriptions" in event


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_a_shutdown_event_reaches_a_peer(kind, cluster_factory):
    """A node that stops sends `$SYS.SERVER.<id>.SHUTDOWN` (its server
    info) over the route before it goes; a system user on its peer (a
    gnatsd.py node) sees it."""
    cluster = cluster_factory()
    top = ACCOUNTS
    peer = cluster.start("gnatsd", conf="", top=top)
    leaving = cluster.start(kind, routes=[peer], conf="", top=top)
    wait_routes(peer, 1)
    leaving_id = id_of(leaving)

    async def stop(_port):
        # Until the leaving node knows of the subscription: a probe it
        # routes reaches the peer's system user.
        nc = await nats.connect("nats://sys:sys@127.0.0.1:%d" % leaving.port)
        probe = "$SYS.SERVER.PROBE.SHUTDOWN"
        deadline = time.monotonic() + 5
        while probe not in [s for s, _ in seen] and time.monotonic() < deadline:
            await nc.publish(probe, b"{}")
            await nc.flush()
            await asyncio.sleep(0.05)
        await nc.close()
        leaving.stop()
    seen = []
    got = subjects_seen(peer.port, ["$SYS.SERVER.*.SHUTDOWN"], stop, 1, into=seen,
                        until=lambda: any("PROBE" not in s for s, _ in seen))
    events = [(s, e) for s, e in got if "PROBE" not in s]
    assert [subject for subject, _ in events] == ["$SYS.SERVER.%s.SHUTDOWN" % leaving_id], got
    assert events[0][1]["id"] == leaving_id and "name" in events[0][1]
