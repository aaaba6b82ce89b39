"""Route pooling and pinned accounts (Go nats-server 2.10+), issue 16.

Every transcript here was first run against Go 2.15.1 (`.venv/bin/nats-server`)
and is then run, unchanged, against gnatsd.py; where the two are compared
the test is parametrised over "go" and "gnatsd" and asserts Go's answer.
Fake peers are Python sockets speaking the route protocol: one that dials
a server's cluster port (the accepting side under test), and a listener
that a server is configured to dial (the dialing side under test).

What Go 2.15.1 does (verified with the fakes and with real clusters):

Pool and pinned routes
* A server's route INFO has "route_pool_size": 3 by default.  Between two
  pooling servers there are 3 connections, plus one per pinned account:
  `cluster { accounts: [...] }` and always the system account ($SYS by
  default).  A three-node mesh therefore shows num_routes 8 in every
  node's /routez, 4 per peer, exactly one of them per peer carrying
  "account": "$SYS"; a pair with `accounts: [P]` has 5 connections.
* An account is carried by the slot FNV-1a-32(name) % 3 (A, B, D -> 0;
  C, E, F -> 1; G -> 2), or by its pinned route.  A dialing fake that
  opens slots 0, 1, 2 and a $SYS route sees `RS+ <account> <subject>` for
  a client's SUB on exactly that slot, and `RS+ <subject>` (no account) on
  the $SYS route; `RMSG <subject> <size>` sent on the $SYS route reaches a
  $SYS subscriber.
* The dialing side sends CONNECT only, waits for the peer's INFO, then
  sends its own INFO: route_pool_size 3 and route_pool_idx 1 or 2 (omitted
  for slot 0), or route_account "$SYS" for the pinned route.  Go dials the
  slots and the pinned route one after the other, in no fixed order (the
  pinned one may come first).  A slot connection that the peer closes is
  dialed again, with the same route_pool_idx.
* /varz cluster.pool_size is 3 (-1 with `pool_size: -1`).
* Pools of different sizes (5 and 3): both sides keep the bigger pool (5
  connections and the $SYS route); each sends an account's interest on
  the slot FNV(name) modulo its own size, so the two directions of one
  account may use different connections.

Refusals (-ERR 'text', then the connection is closed)
* Accepted pinned route whose INFO has no route_pool_size: `Not possible
  to have a dedicated route for account "$SYS" between those servers`.
* Accepted route with route_pool_idx 7 (or 3, or -1) and pool size 3:
  `Invalid route pool index: 7 - pool size is 3` (the size is the peer's:
  idx 5 with route_pool_size 5 says `... 5 - pool size is 5`).
* Accepted route pinned to an account that exists but is not pinned here:
  `No route for account "A"`; to an account that does not exist: `Unable to
  lookup account "X": account missing`.
* A dialed route whose peer INFO sets route_pool_idx 1: `Route pool index
  should not be set but is set to 1`.  The route being a configured one,
  Go dials it again (about every half second), and is refused again.

Peers that do not pool
* A peer with `pool_size: -1` sends no route_pool_size.  With such a peer
  Go 2.15 keeps one connection, over which messages cross, and logs
  `[ERR] ... Not possible to have a dedicated route for account "$SYS"
  between those servers` (its $SYS route is refused).
* Go 2.9 does not pool: one connection with a pooling peer, no [ERR].

Config errors (stderr `nats-server: <text>`, exit status 1)
* `pool_size: -1` with `accounts`: `pool_size cannot be negative if pinned
  accounts are specified`.
* A duplicate in `accounts: [A, A]`: `found duplicate account name "A" in
  pinned accounts list ["A" "A" "$SYS"]`: the list as Go has it by then,
  with the system account appended (`"SYS"` with `system_account: SYS`).
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from test_cluster import nats_barrier
from conftest import (GO_SERVERS, RawConn, go_server_path, layout_kinds, monitor_json,
                      server_id, start_kind, wait_mesh, write_conf, GNATSD, SERVER_PYTHON)

KINDS = ["go", "gnatsd"]


def kind_of(kind: str) -> str:
    """The conftest kind for "go" (Go 2.15, skipped if absent) or "gnatsd"."""
    if kind == "gnatsd":
        return "gnatsd"
    if "2.15" not in GO_SERVERS:
        pytest.skip("Go nats-server 2.15 is not installed")
    return "go2.15"


def pool_index(name: str, size: int = 3) -> int:
    """Go's computeRoutePoolIdx: FNV-1a 32 of the name, modulo the size."""
    h = 0x811C9DC5
    for byte in name.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % size


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# Accounts with users; the system account is Go's default, $SYS.
def accounts_conf(*names: str) -> str:
    users = "".join("  %s { users: [{user: %s, password: %s}] }\n" % (n, n.lower(), n.lower())
                    for n in names)
    return "accounts {\n%s  $SYS { users: [{user: sys, password: sys}] }\n}\n" % users


SYS_ONLY = accounts_conf()


# -- pools as /routez shows them ---------------------------------------------------


def pools(node) -> dict:
    """remote_id -> sorted list of the "account" of each of its connections
    ("" for a pool slot), from the node's /routez."""
    out = {}
    for r in monitor_json(node, "/routez")["routes"]:
        out.setdefault(r["remote_id"], []).append(r.get("account", ""))
    return {k: sorted(v) for k, v in out.items()}


def wait_pools(nodes, pinned=("$SYS",), size: int = 3, timeout: float = 15.0) -> None:
    """Wait until every node has, to every other node, `size` slot
    connections plus one per pinned account, and nothing else."""
    want_each = sorted([""] * size + list(pinned))
    deadline = time.monotonic() + timeout
    ids = {id(n): server_id(n) for n in nodes}
    for n in nodes:
        want = {ids[id(m)]: want_each for m in nodes if m is not n}
        while True:
            try:
                got = pools(n)
            except OSError:
                got = None
            if got == want:
                break
            if time.monotonic() > deadline:
                raise AssertionError("%s: pools %r, wanted %r\n%s" % (
                    n.kind, got, want, n.log_text()[-3000:]))
            time.sleep(0.05)


def route_cids(node) -> set:
    return {r["rid"] for r in monitor_json(node, "/routez")["routes"]}


def err_lines(node) -> list:
    return [line for line in node.log_text().splitlines() if "[ERR]" in line]


# -- nats-py helpers (nats_barrier: test_cluster's) ---------------------------------


async def connect(node, user: str | None = None):
    auth = "%s:%s@" % (user, user) if user else ""
    return await nats.connect("nats://%s127.0.0.1:%d" % (auth, node.port),
                              allow_reconnect=False, connect_timeout=5)


async def drain(sub) -> list:
    out = []
    while True:
        try:
            out.append(await sub.next_msg(timeout=0.01))
        except NatsTimeoutError:
            return out


async def sys_ping_count(node, want: int, timeout: float = 10.0) -> int:
    """How many servers answer $SYS.REQ.SERVER.PING from a system user on
    `node` (asked again until `want` answer or the time is up)."""
    nc = await connect(node, "sys")
    try:
        deadline = time.monotonic() + timeout
        while True:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$SYS.REQ.SERVER.PING", b"", reply=inbox)
            ids = set()
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except NatsTimeoutError:
                    break
                if msg.data:
                    ids.add(json.loads(msg.data)["server"]["id"])
            await sub.unsubscribe()
            if len(ids) >= want or time.monotonic() > deadline:
                return len(ids)
    finally:
        await nc.close()


# -- fake route peers ------------------------------------------------------------------


FAKE_CONNECT = (b'CONNECT {"echo":true,"verbose":false,"pedantic":false,"tls_required":false,'
                b'"headers":true,"name":"%s","cluster":"c1"}\r\n')


def fake_info(server_id: str, port: int = 1, **extra) -> bytes:
    """A Go 2.15-like route INFO; extra keys set to None are left out."""
    info = {"server_id": server_id, "server_name": server_id.lower(), "version": "2.15.1",
            "proto": 3, "host": "127.0.0.1", "port": port, "headers": True,
            "max_payload": 1048576, "cluster": "c1", "route_pool_size": 3}
    info.update(extra)
    info = {k: v for k, v in info.items() if v is not None}
    return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b"\r\n"


def dial_route(port: int, server_id: str, **extra) -> RawConn:
    """A fake peer dialing a cluster port as Go does: CONNECT, the
    server's INFO, then ours (with `extra`)."""
    c = RawConn("127.0.0.1", port, timeout=5)
    c.send(FAKE_CONNECT % server_id.encode())
    c.peer_info = c.read_info()
    c.send(fake_info(server_id, **extra))
    return c


class Accepted(RawConn):
    """A RawConn over a socket the fake listener accepted."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.closed = False


class FakeListener:
    """A route port that is not a server: the server under test dials it."""

    def __init__(self, server_id: str = "NFAKEPEER"):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.server_id = server_id
        self.conns = []

    def accept(self, timeout: float) -> Accepted | None:
        self.sock.settimeout(timeout)
        try:
            sock, _ = self.sock.accept()
        except socket.timeout:
            return None
        c = Accepted(sock)
        self.conns.append(c)
        return c

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def serve(conn: Accepted, server_id: str, port: int, **extra) -> dict:
    """The accepting side of a handshake: the dialer's CONNECT must come
    alone (no INFO before ours), then our INFO, then the dialer's INFO
    must be its next line (returned, parsed).  A PONG follows (Go dials
    its next pool connection after the first PONG)."""
    connect = conn.expect(rb"CONNECT (\{[^\r\n]*\})\r\n")
    assert json.loads(connect.group(1))["cluster"] == "c1"
    early = conn.read_all(0.2)
    assert early == b"", "the dialer spoke before the peer's INFO: %r" % early[:300]
    conn.send(fake_info(server_id, port, **extra))
    info = json.loads(conn.expect(rb"INFO (\{[^\r\n]*\}) ?\r\n").group(1))
    conn.send(b"PONG\r\n")
    return info


def slot_of(info: dict):
    """("slot", k) or ("account", name) for a dialer's INFO."""
    if info.get("route_account"):
        assert "route_pool_idx" not in info, info
        return ("account", info["route_account"])
    return ("slot", info.get("route_pool_idx", 0))


def dialer_conf(tmp_path, port: int, extra: str = "") -> str:
    return write_conf(tmp_path, SYS_ONLY + 'cluster {\n  name: c1\n  listen: "127.0.0.1:-1"\n'
                      '  routes: ["nats://127.0.0.1:%d"]\n%s}\n' % (port, extra), "dialer.conf")


def start_dialer(kind: str, tmp_path, listener: FakeListener):
    return start_kind(kind_of(kind), "-c", dialer_conf(tmp_path, listener.port))


def fill_from_fake(listener: FakeListener, want: int = 4, timeout: float = 10.0) -> dict:
    """Accept and handshake `want` connections; {slot_of(info): (conn, info)}."""
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < want:
        conn = listener.accept(max(0.1, deadline - time.monotonic()))
        assert conn is not None, "only %r dialed" % sorted(got)
        info = serve(conn, listener.server_id, listener.port)
        key = slot_of(info)
        assert key not in got, "%r dialed twice" % (key,)
        got[key] = (conn, info)
    return got


# == 1. Mixed three-node clusters ==================================================


@pytest.mark.parametrize("layout", ["gnatsd+go+gnatsd", "go+gnatsd", "gnatsd"])
def test_mixed_mesh_fills_pools_with_a_sys_route_and_go_logs_no_error(cluster_factory, layout):
    kinds = layout_kinds(layout)
    cluster = cluster_factory("c1")
    nodes = []
    for kind in kinds:
        nodes.append(cluster.start(kind, routes=nodes[-1:], top=SYS_ONLY))
    wait_mesh(nodes)
    wait_pools(nodes)
    for n in nodes:
        routez = monitor_json(n, "/routez")
        assert routez["num_routes"] == 8, (n.kind, routez["num_routes"])
        assert monitor_json(n, "/varz")["routes"] == 8
        assert monitor_json(n, "/varz")["cluster"]["pool_size"] == 3
    before = [route_cids(n) for n in nodes]
    for n in nodes:
        assert run(sys_ping_count(n, 3)) == 3, n.kind
    # Nothing was refused, nothing came and went.
    assert [route_cids(n) for n in nodes] == before
    for n in nodes:
        if n.node_kind.startswith("go"):
            assert err_lines(n) == [], err_lines(n)


# == 2. Messages of accounts on every slot and on a pinned route =======================

# A -> slot 0, C -> slot 1, G -> slot 2; P hashes to 1 but is pinned.
MSG_ACCOUNTS = ["A", "C", "G", "P"]


def test_the_accounts_used_cover_every_slot():
    assert [pool_index(a) for a in MSG_ACCOUNTS[:3]] == [0, 1, 2]


async def exchange(account: str, here, there, n: int = 20, requests: bool = True) -> None:
    """From a client on `here` to clients on `there`, in `account`: a plain
    subscriber gets each message once, in order; a queue group with two
    members on each node gets each message once in all; requests are
    answered once each."""
    user = account.lower()
    pub = await connect(here, user)
    local = await connect(here, user)
    remote = await connect(there, user)
    try:
        plain = await remote.subscribe("ev.%s" % account)
        members = [await nc.subscribe("work", queue="q") for nc in (local, local, remote, remote)]

        async def answer(msg):
            await msg.respond(b"re:" + msg.data)

        await remote.subscribe("svc", cb=answer)
        hdr = await remote.subscribe("hdr")
        await nats_barrier(pub, remote, local)
        payloads = [b"%s-%d" % (account.encode(), k) for k in range(n)]
        for p in payloads:
            await pub.publish("ev.%s" % account, p)
            await pub.publish("work", p)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            try:
                got.append((await plain.next_msg(timeout=0.2)).data)
            except NatsTimeoutError:
                pass
        assert got == payloads, "%s: plain subscriber got %r" % (account, got)
        work = []
        while len(work) < n and time.monotonic() < deadline:
            for m in members:
                work += [msg.data for msg in await drain(m)]
            await asyncio.sleep(0.01)
        for k in range(5 if requests else 0):
            reply = await pub.request("svc", b"%d" % k, timeout=5)
            assert reply.data == b"re:%d" % k
        await pub.publish("hdr", b"h", headers={"K": account})    # HMSG
        msg = await hdr.next_msg(timeout=5)
        assert (msg.data, msg.headers) == (b"h", {"K": account})
        await asyncio.sleep(0.3)            # room for a duplicate to show up
        for m in members:
            work += [msg.data for msg in await drain(m)]
        assert sorted(work) == sorted(payloads), "%s: queue group got %r" % (account, work)
        assert await drain(plain) == [] and await drain(hdr) == [], "%s: duplicates" % account
    finally:
        for nc in (pub, local, remote):
            await nc.close()


@pytest.mark.parametrize("pair", [("gnatsd", "gnatsd"), ("gnatsd", "go2.15"),
                                  ("go2.15", "gnatsd")],
                         ids=["gnatsd-gnatsd", "go-dials-gnatsd", "gnatsd-dials-go"])
def test_messages_of_every_slot_and_a_pinned_account_cross_once(cluster_factory, pair):
    for k in pair:
        if k != "gnatsd" and k[2:] not in GO_SERVERS:
            pytest.skip("Go nats-server %s is not installed" % k[2:])
    cluster = cluster_factory("c1")
    top = accounts_conf(*MSG_ACCOUNTS)
    n1 = cluster.start(pair[0], conf="accounts: [P]", top=top)
    n2 = cluster.start(pair[1], routes=[n1], conf="accounts: [P]", top=top)
    wait_mesh([n1, n2])
    wait_pools([n1, n2], pinned=("$SYS", "P"))

    async def all_of_them():
        for account in MSG_ACCOUNTS:
            await exchange(account, n1, n2)
            await exchange(account, n2, n1)

    run(all_of_them(), timeout=60)
    for n in (n1, n2):
        assert err_lines(n) == [], err_lines(n)


# == 3. Which connection carries which account =====================================

SLOT_ACCOUNTS = ["A", "B", "C", "D", "E", "F", "G"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_account_s_interest_goes_on_go_s_slot_and_sys_on_its_pinned_route(
        cluster_factory, kind):
    cluster = cluster_factory("c1")
    srv = cluster.start(kind_of(kind), conf="", top=accounts_conf(*SLOT_ACCOUNTS))
    fake = "NFAKESLOTS"
    conns = {0: dial_route(srv.route_port, fake)}
    wait_count(srv, 1)
    conns[1] = dial_route(srv.route_port, fake, route_pool_idx=1)
    conns[2] = dial_route(srv.route_port, fake, route_pool_idx=2)
    conns["$SYS"] = dial_route(srv.route_port, fake, route_account="$SYS")
    wait_count(srv, 4)
    assert all(c.peer_info["route_pool_size"] == 3 for c in conns.values())
    clients = []
    try:
        for account in SLOT_ACCOUNTS + ["$SYS"]:
            c = RawConn(srv.host, srv.port)
            c.read_info()
            user = "sys" if account == "$SYS" else account.lower()
            c.send(b'CONNECT {"verbose":false,"user":"%s","pass":"%s"}\r\n' % (
                user.encode(), user.encode()))
            subject = b"sys.in" if account == "$SYS" else b"acct.%s" % account.encode()
            c.send(b"SUB %s 1\r\nPING\r\n" % subject)
            c.expect(rb"(?:INFO [^\r\n]*\r\n)?PONG\r\n")
            clients.append(c)
        # Where each subject's RS+ arrived.
        wanted = {b"acct.%s" % a.encode() for a in SLOT_ACCOUNTS} | {b"sys.in"}
        seen: dict = {}
        deadline = time.monotonic() + 10
        while not wanted <= set(seen) and time.monotonic() < deadline:
            for key, c in conns.items():
                c._fill(time.monotonic() + 0.02)
                note_rs(key, c, seen)
        for key, c in conns.items():    # a duplicate elsewhere would show now
            c._fill(time.monotonic() + 0.2)
            note_rs(key, c, seen)
        mapping = {s: sorted(v, key=str) for s, v in seen.items() if s in wanted}
        expect = {b"acct.%s" % a.encode(): [pool_index(a)] for a in SLOT_ACCOUNTS}
        expect[b"sys.in"] = ["$SYS"]
        assert mapping == expect
        # A $SYS route's RS+ lines name no account; the slots' all do.
        for key, lines in seen_lines(seen).items():
            for args in lines:
                if key == "$SYS":
                    assert len(args) == 1, (key, args)
                else:
                    assert len(args) >= 2, (key, args)
        # A message on the pinned route, without account, reaches $SYS.
        conns["$SYS"].send(b"RMSG sys.in 5\r\nhello\r\n")
        sys_client = clients[-1]
        sys_client.expect(rb"(?:PING\r\n|INFO [^\r\n]*\r\n)*MSG sys.in 1 5\r\nhello\r\n")
        # And one on slot 0 with its account reaches A.
        conns[0].send(b"RMSG A acct.A 2\r\nhi\r\n")
        clients[0].expect(rb"(?:PING\r\n|INFO [^\r\n]*\r\n)*MSG acct.A 1 2\r\nhi\r\n")
        # An UNSUB is an RS- on the same connection, in the same form.
        sys_client.send(b"UNSUB 1\r\n")
        conns["$SYS"].expect(rb"(?:[^\r\n]*\r\n)*?RS- sys.in\r\n")
        clients[6].send(b"UNSUB 1\r\n")
        conns[2].expect(rb"(?:[^\r\n]*\r\n)*?RS- G acct.G\r\n")
    finally:
        for c in clients + list(conns.values()):
            c.close()


def wait_count(srv, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while monitor_json(srv, "/routez")["num_routes"] != n:
        assert time.monotonic() < deadline, "%s: not %d routes: %r" % (
            srv.kind, n, monitor_json(srv, "/routez")["routes"])
        time.sleep(0.05)


def note_rs(key, conn: RawConn, seen: dict) -> None:
    """Take the complete lines off conn's buffer; note each RS+'s subject
    (the last argument without a queue) against `key`.  Subjects map to
    the set of keys they arrived on, and `seen[None]` keeps (key, args)."""
    while True:
        end = conn.buf.find(b"\r\n")
        if end < 0:
            return
        line = bytes(conn.buf[:end])
        del conn.buf[:end + 2]
        parts = line.split()
        if not parts or parts[0] != b"RS+":
            continue
        args = parts[1:]
        seen.setdefault(None, []).append((key, args))
        subject = args[0] if key == "$SYS" or len(args) < 2 else args[1]
        seen.setdefault(subject, set()).add(key)


def seen_lines(seen: dict) -> dict:
    out = {}
    for key, args in seen.get(None, []):
        out.setdefault(key, []).append(args)
    return out


# == 4. Refusals ===================================================================

REFUSALS = {
    "pinned-without-pool": (dict(route_pool_size=None, route_account="$SYS"),
                            'Not possible to have a dedicated route for account "$SYS" '
                            'between those servers'),
    "index-7": (dict(route_pool_idx=7), "Invalid route pool index: 7 - pool size is 3"),
    "index-3": (dict(route_pool_idx=3), "Invalid route pool index: 3 - pool size is 3"),
    "index-minus-1": (dict(route_pool_idx=-1), "Invalid route pool index: -1 - pool size is 3"),
    "index-5-of-5": (dict(route_pool_size=5, route_pool_idx=5),
                     "Invalid route pool index: 5 - pool size is 5"),
    "account-not-pinned": (dict(route_account="A"), 'No route for account "A"'),
    "account-missing": (dict(route_account="X"),
                        'Unable to lookup account "X": account missing'),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("kind", KINDS)
def test_an_accepted_route_the_pool_cannot_take_is_refused(cluster_factory, kind, case):
    extra, text = REFUSALS[case]
    cluster = cluster_factory("c1")
    srv = cluster.start(kind_of(kind), conf="", top=accounts_conf("A"))
    conn = dial_route(srv.route_port, "NFAKE" + case.upper().replace("-", ""), **extra)
    try:
        data = conn.read_until_closed(5)
        data = re.sub(rb"^(?:PING\r\n)+", b"", data)
        assert data == b"-ERR '%s'\r\n" % text.encode()
        assert monitor_json(srv, "/routez")["num_routes"] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_dialer_refuses_a_peer_info_that_sets_a_pool_index(kind, tmp_path):
    listener = FakeListener()
    srv = start_dialer(kind, tmp_path, listener)
    try:
        conn = listener.accept(10)
        assert conn is not None, "never dialed"
        conn.expect(rb"CONNECT \{[^\r\n]*\}\r\n")
        assert conn.read_all(0.3) == b"", "INFO before the peer's"
        conn.send(fake_info(listener.server_id, listener.port, route_pool_idx=1))
        assert conn.read_until_closed(5) == \
            b"-ERR 'Route pool index should not be set but is set to 1'\r\n"
        srv.wait_for_log(rb"\[ERR\] [^\n]*Route pool index should not be set but is set to 1")
    finally:
        srv.stop()
        listener.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_configured_route_refused_for_its_pool_index_is_dialed_again(kind, tmp_path):
    """Go 2.15 treats the refusal like any other close of a configured
    route: it dials again (and is refused again)."""
    listener = FakeListener()
    srv = start_dialer(kind, tmp_path, listener)
    try:
        for attempt in range(2):
            conn = listener.accept(10)
            assert conn is not None, "not dialed again after the refusal (attempt %d)" % attempt
            conn.expect(rb"CONNECT \{[^\r\n]*\}\r\n")
            conn.send(fake_info(listener.server_id, listener.port, route_pool_idx=1))
            assert b"Route pool index should not be set" in conn.read_until_closed(5)
    finally:
        srv.stop()
        listener.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_dialer_waits_for_the_peer_info_then_fills_the_pool_and_the_sys_route(kind,
                                                                                 tmp_path):
    listener = FakeListener()
    srv = start_dialer(kind, tmp_path, listener)
    try:
        got = fill_from_fake(listener)
        assert set(got) == {("slot", 0), ("slot", 1), ("slot", 2), ("account", "$SYS")}
        for key, (conn, info) in got.items():
            assert info["route_pool_size"] == 3, info
            assert info["cluster"] == "c1"
        assert "route_pool_idx" not in got[("slot", 0)][1]
        # And no more than that.
        assert listener.accept(0.5) is None
    finally:
        srv.stop()
        listener.close()


# == 5. Peers that do not pool =======================================================


def need_go(*versions) -> None:
    for v in versions:
        if v not in GO_SERVERS:
            pytest.skip("Go nats-server %s is not installed" % v)


async def crosses(a, b) -> None:
    """Messages go from a client of `a` to one of `b`, and back."""
    for here, there in ((a, b), (b, a)):
        pub, sub_nc = await connect(here), await connect(there)
        try:
            sub = await sub_nc.subscribe("x")
            await nats_barrier(pub, sub_nc)
            for k in range(10):
                await pub.publish("x", b"%d" % k)
            got = [(await sub.next_msg(timeout=5)).data for _ in range(10)]
            assert got == [b"%d" % k for k in range(10)]
            await asyncio.sleep(0.2)
            assert await drain(sub) == []
        finally:
            await pub.close()
            await sub_nc.close()


def wait_one_route(nodes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for n in nodes:
        while True:
            routes = monitor_json(n, "/routez")["routes"]
            if len(routes) == 1 and "account" not in routes[0]:
                break
            assert time.monotonic() < deadline, "%s: %r" % (n.kind, routes)
            time.sleep(0.05)


@pytest.mark.parametrize("seed", ["gnatsd", "go"])
def test_pool_size_minus_one_keeps_one_route_to_go_215(cluster_factory, seed):
    """gnatsd.py with `pool_size: -1` and a Go 2.15 peer (either one dials):
    one connection, messages cross.  When Go dials, it also tries its $SYS
    route, and logs that it is not possible (Go's documented answer to a
    peer that does not pool); when gnatsd.py dials, Go dials nothing and
    logs no error.  /varz cluster.pool_size is -1, as Go's is with -1."""
    need_go("2.15")
    cluster = cluster_factory("c1")
    if seed == "gnatsd":
        ours = cluster.start("gnatsd", conf="pool_size: -1")
        go = cluster.start("go2.15", routes=[ours])
    else:
        go = cluster.start("go2.15")
        ours = cluster.start("gnatsd", routes=[go], conf="pool_size: -1")
    wait_mesh([ours, go])
    if seed == "gnatsd":
        go.wait_for_log(rb'\[ERR\] [^\n]*Not possible to have a dedicated route for account '
                        rb'"\$SYS" between those servers', timeout=10)
    wait_one_route([ours, go])
    assert monitor_json(ours, "/varz")["cluster"]["pool_size"] == -1
    assert monitor_json(ours, "/varz")["routes"] == 1
    run(crosses(ours, go))
    wait_one_route([ours, go])
    if seed == "go":
        assert err_lines(go) + err_lines(ours) == []


@pytest.mark.parametrize("seed", ["gnatsd", "go2.9"])
def test_a_go_29_peer_gets_one_route_and_no_error(cluster_factory, seed):
    need_go("2.9")
    cluster = cluster_factory("c1")
    if seed == "gnatsd":
        ours = cluster.start("gnatsd")
        old = cluster.start("go2.9", routes=[ours])
    else:
        old = cluster.start("go2.9")
        ours = cluster.start("gnatsd", routes=[old])
    wait_mesh([ours, old])
    wait_one_route([ours, old])
    run(crosses(ours, old))
    wait_one_route([ours, old])
    assert err_lines(ours) == [] and err_lines(old) == [], err_lines(ours) + err_lines(old)


# == 6. A closed pool connection is replaced ==========================================


@pytest.mark.parametrize("kind", KINDS)
def test_a_closed_slot_connection_is_dialed_again(kind, tmp_path):
    listener = FakeListener()
    srv = start_dialer(kind, tmp_path, listener)
    try:
        got = fill_from_fake(listener)
        conn, _ = got[("slot", 1)]
        conn.close()
        new = listener.accept(5)
        assert new is not None, "slot 1 was not dialed again"
        info = serve(new, listener.server_id, listener.port)
        assert slot_of(info) == ("slot", 1)
        assert info["route_pool_size"] == 3
    finally:
        srv.stop()
        listener.close()


# == 7. Config errors =================================================================

CONF_ERRORS = {
    "negative-pool-with-accounts": (
        'cluster { name: c1, listen: "127.0.0.1:-1", pool_size: -1, accounts: [A] }\n'
        "accounts { A {} }\n",
        "pool_size cannot be negative if pinned accounts are specified"),
    "duplicate-account": (
        'cluster { name: c1, listen: "127.0.0.1:-1", accounts: [A, A] }\n'
        "accounts { A {} }\n",
        'found duplicate account name "A" in pinned accounts list ["A" "A" "$SYS"]'),
    "duplicate-account-named-system": (
        'cluster { name: c1, listen: "127.0.0.1:-1", accounts: [A, B, A] }\n'
        "accounts { A {}, B {}, SYS {} }\nsystem_account: SYS\n",
        'found duplicate account name "A" in pinned accounts list ["A" "B" "A" "SYS"]'),
}


@pytest.mark.parametrize("case", list(CONF_ERRORS))
@pytest.mark.parametrize("kind", KINDS)
def test_pinned_account_config_errors_stop_the_server_with_go_s_text(kind, case, tmp_path):
    text, message = CONF_ERRORS[case]
    conf = write_conf(tmp_path, text, "bad.conf")
    if kind == "go":
        path = go_server_path("2.15")
        if path is None or "2.15" not in GO_SERVERS:
            pytest.skip("Go nats-server 2.15 is not installed")
        argv = [path, "-c", conf, "-p", "-1"]
    else:
        argv = [SERVER_PYTHON, GNATSD, "-c", conf, "-p", "-1"]
    proc = subprocess.run(argv, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc
    assert proc.stderr.decode().strip() == "nats-server: " + message


# == 8. Pools of different sizes ========================================================


@pytest.mark.parametrize("seed", ["gnatsd", "go"])
def test_pools_of_different_sizes_use_the_bigger_and_carry_every_account(cluster_factory,
                                                                        seed):
    """gnatsd.py with `pool_size: 5` and a Go 2.15 peer with the default 3
    (either one dials): both keep 5 connections and the $SYS route, and
    messages of accounts on every slot cross once.  (No request/reply: each
    side sends an account's interest on its own slot, FNV modulo its own
    size, so a reply inbox subscribed just before the request may lose the
    race against it; two Go servers with pools of 3 and 5 lose it too.)"""
    need_go("2.15")
    cluster = cluster_factory("c1")
    top = accounts_conf(*MSG_ACCOUNTS)
    if seed == "gnatsd":
        ours = cluster.start("gnatsd", conf="pool_size: 5", top=top)
        go = cluster.start("go2.15", routes=[ours], top=top)
    else:
        go = cluster.start("go2.15", top=top)
        ours = cluster.start("gnatsd", routes=[go], conf="pool_size: 5", top=top)
    wait_mesh([ours, go])
    wait_pools([ours, go], size=5)

    async def all_of_them():
        for account in MSG_ACCOUNTS:
            await exchange(account, ours, go, n=5, requests=False)
            await exchange(account, go, ours, n=5, requests=False)

    run(all_of_them(), timeout=60)
    for n in (ours, go):
        assert err_lines(n) == [], err_lines(n)
