"""Leaf nodes (issue 18): a server dials out to a hub (`leafnodes { remotes
= [...] }`) and the two share interest and messages over that one
connection; the hub listens (`leafnodes { port }`) and binds each leaf to an
account.

Every scenario runs over pairings (leaf kind -> hub kind) of gnatsd.py, Go
2.15 and Go 2.9; the Go-only pairings are the ground truth (they were
written and passing before gnatsd.py had leaf nodes).

The leafnode protocol as Go speaks it (server/leafnode.go, parser.go,
client.go; checked against the 2.9.10 and 2.15.1 binaries):

* The hub's INFO on its leafnode port has `client_id` (non-zero),
  `nonce`, `auth_required: true`, `headers`, `info_on_connect: true` and
  `leafnode_urls` (its own `host:port`); 2.10+ add `compression`
  ("s2_auto" by default) and `api_lvl`.  The leaf answers with CONNECT
  {version, user, pass, server_id, name, cluster (its cluster name, else
  its server name), headers, remote_account (2.10+), compress_mode (2.10+:
  "not supported" when the hub's INFO has no `compression`), deny_pub
  (its deny_imports)} and no `lang` (a CONNECT with `lang` gets -ERR
  'attempted to connect to leaf node port').  The hub then sends an INFO
  with `connect_info: true` and `remote_account` (the bound account), then
  `LS+` for the account's interest, including its loop-detection subject
  `$LDS.<nuid>`.  A leaf whose first INFO had `info_on_connect` sends its
  LS+ only after that second INFO (and gives up after 2 s: -ERR 'Stale
  Leaf Node Connection - Closing').  Both sides PING about 1 s after that,
  then every ping_interval.
* Interest: `LS+ <subject>` and `LS+ <subject> <queue> <weight>`, `LS-
  <subject> [<queue>]` -- no account on the wire (the connection is bound
  to one).  The weight is the sender's member count for the group, sent
  again whenever it changes.  A hub sends all of the account's interest; a
  leaf only its local clients' (and those of leaves attached to it).
  Its `deny_imports` keep LS+ back; its `deny_exports` keep messages back.
* Messages: `LMSG <subject> [<reply>] <size>`, and with queue groups
  `LMSG <subject> + <reply> <queue>... <size>` or `LMSG <subject> |
  <queue>... <size>`; with headers `HMSG <subject> [...] <hdr> <size>`
  (HMSG, not HLMSG).  An LMSG that names no queue reaches no queue member.
  A queue group with members on both sides is served locally first.
* Loops: a server that gets `LS+` of its own `$LDS.` subject sends -ERR
  'Loop detected for leafnode account="$G". Delaying attempt to
  reconnect for 30s' and closes.
* A leaf reconnects every `leafnodes { reconnect }` (default 1 s, which
  these tests rely on: Go 2.9 takes only integer seconds there, and 2.15
  warns about an integer), and resends its interest when it is back.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
import urllib.request

import nats
import pytest

from conftest import (GO_SERVERS, MONITOR_LISTEN_RE, RawConn, TcpProxy, layout_kinds,
                      monitor_json, start_go, start_gnatsd, t_expect_exact, t_ping_pong,
                      t_read_until_closed, wait_mesh, write_conf)
from test_cluster import peer_reads, random_interest_rounds, raw_route


PAIRS = [("go2.15", "go2.15"), ("go2.9", "go2.9"),
         ("gnatsd", "go2.15"), ("gnatsd", "go2.9"),
         ("go2.15", "gnatsd"), ("go2.9", "gnatsd"),
         ("gnatsd", "gnatsd")]
PAIR_PARAMS = [pytest.param(leaf, hub, id="%s-to-%s" % (leaf, hub)) for leaf, hub in PAIRS]
KIND_PARAMS = ["gnatsd", "go2.9", "go2.15"]

LEAF_LISTEN_RE = re.compile(rb"Listening for leafnode connections on (\S+):(\d+)")


# -- servers --------------------------------------------------------------------------------------


def need(kind: str) -> None:
    if kind != "gnatsd" and kind[2:] not in GO_SERVERS:
        pytest.skip("Go nats-server %s is not installed" % kind[2:])


@pytest.fixture
def nodes():
    """The servers a test starts: stopped at teardown, their logs printed
    (pytest shows them when the test failed)."""
    started = []
    yield started
    for n in started:
        n.stop()
    for n in started:
        print("--- %s (%s) ---\n%s" % (n.kind, getattr(n, "role", "?"), n.log_text()[-4000:]))


def start_node(nodes, kind: str, tmp_path, name: str, body: str):
    """A server of `kind` with config `server_name: <name>` + body, a monitor
    port (`mon_port`) and, if it listens for leaf nodes, `leaf_port`."""
    need(kind)
    path = write_conf(tmp_path, "server_name: %s\n%s" % (name, body), name + ".conf")
    args = ("-c", path, "-m", "-1")
    srv = start_gnatsd(*args) if kind == "gnatsd" else start_go(*args, version=kind[2:])
    srv.role = name
    nodes.append(srv)
    srv.mon_port = int(srv.wait_for_log(MONITOR_LISTEN_RE, 5).group(2))
    if "port: -1" in body:
        srv.leaf_port = int(srv.wait_for_log(LEAF_LISTEN_RE, 5).group(2))
    return srv


def start_hub(nodes, kind, tmp_path, leafnodes: str = "", top: str = "", name: str = "hub"):
    """A hub: `leafnodes { host: 127.0.0.1, port: -1, <leafnodes> }`."""
    return start_node(nodes, kind, tmp_path, name, '%sleafnodes {\n  host: "127.0.0.1"\n'
                      '  port: -1\n  %s\n}\n' % (top, leafnodes))


def start_leaf(nodes, kind, tmp_path, url: str, remote: str = "", top: str = "",
               name: str = "leaf"):
    """A leaf with one remote: `{ url: <url>, <remote> }`."""
    return start_node(nodes, kind, tmp_path, name,
                      '%sleafnodes {\n  remotes = [ { url: "%s"%s } ]\n}\n'
                      % (top, url, (", " + remote) if remote else ""))


def leaf_url(hub, auth: str = "", port: int | None = None) -> str:
    return "nats-leaf://%s127.0.0.1:%d" % (auth + "@" if auth else "", port or hub.leaf_port)


def leafz(srv, subs: bool = False) -> dict:
    return monitor_json(srv, "/leafz?subs=1" if subs else "/leafz")


def wait_leafs(srv, n: int = 1, timeout: float = 10.0) -> dict:
    """Wait until the server's /leafz counts `n` leaf connections."""
    deadline = time.monotonic() + timeout
    got = None
    while True:
        try:
            got = leafz(srv)
            if got["leafnodes"] == n:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("%s (%s): /leafz %r, wanted %d leafnodes" % (
                srv.kind, srv.role, got, n))
        time.sleep(0.05)


def start_pair(nodes, leaf_kind, hub_kind, tmp_path, hub_leafnodes: str = "", auth: str = "",
               remote: str = "", hub_top: str = "", leaf_top: str = ""):
    """A hub and a leaf dialing it; returns (leaf, hub) once both see the link."""
    hub = start_hub(nodes, hub_kind, tmp_path, hub_leafnodes, hub_top)
    leaf = start_leaf(nodes, leaf_kind, tmp_path, leaf_url(hub, auth), remote, leaf_top)
    wait_leafs(hub)
    wait_leafs(leaf)
    return leaf, hub


# -- nats-py helpers ------------------------------------------------------------------------------


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(srv, **kw):
    return await nats.connect(srv.url, allow_reconnect=False, connect_timeout=3, **kw)


async def barrier(nc):
    """Everything `nc` sent so far has been processed by its server (see
    test_accounts.barrier: nats-py's flush() is no barrier)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(inbox, b"sync")
    assert (await sub.next_msg(timeout=3)).data == b"sync"
    await sub.unsubscribe()


class Inbox:
    """A subscription whose messages land in a list (probes, whose subject
    ends in `.probe`, in `probes`), with waits on what arrived."""

    def __init__(self):
        self.msgs = []
        self.probes = []
        self.sub = None

    @classmethod
    async def on(cls, nc, subject: str, queue: str = ""):
        box = cls()
        box.sub = await nc.subscribe(subject, queue=queue, cb=box._got)
        return box

    async def _got(self, msg):
        (self.probes if msg.subject.endswith(".probe") else self.msgs).append(msg)

    def data(self, subject: str | None = None) -> list:
        return [m.data for m in self.msgs if subject is None or m.subject == subject]


async def until(fact, timeout: float = 10.0, what: str = "condition"):
    """Wait until `fact()` is true (polling every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not fact():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


async def wait_flow(nc, subject: str, box: Inbox, timeout: float = 10.0, payload: bytes = b"p"):
    """Publish probes on `subject` (ending in `.probe`) from `nc` until one
    with `payload` reaches `box`: the interest has crossed."""
    deadline = time.monotonic() + timeout
    while not any(m.data == payload for m in box.probes):
        if time.monotonic() > deadline:
            raise AssertionError("no probe on %s reached the subscriber" % subject)
        await nc.publish(subject, payload)
        await nc.flush()
        await asyncio.sleep(0.05)


async def quiet(*boxes, seconds: float = 0.3) -> None:
    """Nothing more arrives (duplicates would): the only wait that sleeps."""
    counts = [len(b.msgs) for b in boxes]
    await asyncio.sleep(seconds)
    assert [len(b.msgs) for b in boxes] == counts, "more messages arrived: duplicates"


async def leafz_subjects(srv) -> list:
    """Subjects of the interest the server holds from its leaf connections."""
    got = await asyncio.to_thread(leafz, srv, True)
    return [s for leaf in got["leafs"] or [] for s in leaf.get("subscriptions_list") or []]


async def wait_leafz_subject(srv, subject: str, count: int = 1, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        subjects = await leafz_subjects(srv)
        if subjects.count(subject) >= count:
            return subjects
        if time.monotonic() > deadline:
            raise AssertionError("%s: /leafz subscriptions %r lack %d x %r" % (
                srv.role, subjects, count, subject))
        await asyncio.sleep(0.05)


# -- 1. pub/sub both ways, exactly once -----------------------------------------------------------


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_pub_sub_both_ways_exactly_once(leaf_kind, hub_kind, nodes, tmp_path):
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path)
    # The link's log lines (Go 2.15's wording; 2.9 ends the leaf's with
    # a space too: "created for account: $G ").
    leaf.wait_for_log(rb"\[INF\] 127\.0\.0\.1:%d - lid:\d+ - Leafnode connection created "
                      rb"for account: \$G" % hub.leaf_port)
    hub.wait_for_log(rb"\[INF\] 127\.0\.0\.1:\d+ - lid:\d+ - Leafnode connection created")
    n = 50

    async def main():
        nh, nl = await connect(hub), await connect(leaf)
        at_hub, at_leaf = await Inbox.on(nh, "up.>"), await Inbox.on(nl, "down.>")
        both_h, both_l = await Inbox.on(nh, "both.>"), await Inbox.on(nl, "both.>")
        await barrier(nh)
        await barrier(nl)
        await wait_flow(nl, "up.probe", at_hub)
        await wait_flow(nh, "down.probe", at_leaf)
        await wait_flow(nl, "both.probe", both_h)
        await wait_flow(nh, "both.probe", both_l)
        for i in range(n):
            await nl.publish("up.data", b"%d" % i)
            await nh.publish("down.data", b"%d" % i)
        await nl.publish("both.x", b"from leaf")
        await nh.publish("both.x", b"from hub")
        await nl.publish("up.end", b"")
        await nh.publish("down.end", b"")
        await until(lambda: at_hub.data("up.end") and at_leaf.data("down.end"), what="end markers")
        await until(lambda: len(both_h.msgs) >= 2 and len(both_l.msgs) >= 2, what="both.x")
        await quiet(at_hub, at_leaf, both_h, both_l)
        assert at_hub.data("up.data") == [b"%d" % i for i in range(n)]
        assert at_leaf.data("down.data") == [b"%d" % i for i in range(n)]
        assert sorted(both_h.data()) == sorted(both_l.data()) == [b"from hub", b"from leaf"]
        for nc in (nh, nl):
            await nc.close()
    run(main())


async def messages_cross_both_ways(hub, leaf):
    """A probe published on each side reaches a subscriber on the other."""
    nh, nl = await connect(hub), await connect(leaf)
    at_hub, at_leaf = await Inbox.on(nh, "up.>"), await Inbox.on(nl, "down.>")
    await barrier(nh)
    await barrier(nl)
    await wait_flow(nl, "up.probe", at_hub)
    await wait_flow(nh, "down.probe", at_leaf)
    for nc in (nh, nl):
        await nc.close()


# -- 1b. over TLS ----------------------------------------------------------------------------------

CERTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "certs")


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_a_leaf_over_tls_both_ways(leaf_kind, hub_kind, nodes, tmp_path):
    """The hub's `leafnodes { tls {} }`: its INFO says tls_required and the
    leaf (whose remote trusts the test CA, with no certificate of its own)
    upgrades before CONNECT; messages then cross both ways, and the hub's
    log shows the handshake.  A leaf that trusts another CA never gets in."""
    tls = '\n  tls { cert_file: "%s", key_file: "%s" }' % (
        os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem"))
    remote = 'tls { ca_file: "%s" }' % os.path.join(CERTS, "ca.pem")
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path, hub_leafnodes=tls,
                           remote=remote)
    run(messages_cross_both_ways(hub, leaf))
    rogue = start_leaf(nodes, leaf_kind, tmp_path, leaf_url(hub),
                       'tls { ca_file: "%s" }' % os.path.join(CERTS, "rogue-cert.pem"),
                       name="rogue")
    rogue.wait_for_log(rb"\[ERR\] [^\n]*(?:TLS|tls|x509|certificate)", 10)
    assert leafz(hub)["leafnodes"] == 1


# -- 2. queue groups across -----------------------------------------------------------------------


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_queue_groups_prefer_local_members_and_reach_across(leaf_kind, hub_kind, nodes, tmp_path):
    """Group wq has a member on each side: each side's messages go to its
    own member.  Group rq has a member on the leaf only, hq on the hub
    only: they get every message from both sides.  Each message reaches
    exactly one member of each group."""
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path)
    n = 20

    async def main():
        nh, nl = await connect(hub), await connect(leaf)
        wq_h, hq_h = await Inbox.on(nh, "work", "wq"), await Inbox.on(nh, "work", "hq")
        wq_l, rq_l = await Inbox.on(nl, "work", "wq"), await Inbox.on(nl, "work", "rq")
        await barrier(nh)
        await barrier(nl)
        # Each side holds the other side's two queue subscriptions on "work".
        await wait_leafz_subject(hub, "work", 2)
        await wait_leafz_subject(leaf, "work", 2)
        for i in range(n):
            await nh.publish("work", b"h%d" % i)
            await nl.publish("work", b"l%d" % i)
        await barrier(nh)
        await barrier(nl)
        hub_sent, leaf_sent = [b"h%d" % i for i in range(n)], [b"l%d" % i for i in range(n)]
        await until(lambda: len(rq_l.msgs) == 2 * n and len(hq_h.msgs) == 2 * n,
                    what="every message in rq and hq")
        await quiet(wq_h, wq_l, rq_l, hq_h)
        assert wq_h.data() == hub_sent          # local member first
        assert wq_l.data() == leaf_sent
        for box in (rq_l, hq_h):                # the only member: everything, once
            assert sorted(box.data()) == sorted(hub_sent + leaf_sent)
            assert [d for d in box.data() if d[:1] == b"h"] == hub_sent
            assert [d for d in box.data() if d[:1] == b"l"] == leaf_sent
        for nc in (nh, nl):
            await nc.close()
    run(main())


# -- 3. request/reply with headers ----------------------------------------------------------------


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_request_reply_with_headers_both_ways(leaf_kind, hub_kind, nodes, tmp_path):
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path)

    async def main():
        nh, nl = await connect(hub), await connect(leaf)

        def responder(nc, side):
            async def answer(msg):
                await nc.publish(msg.reply, b"%s got %s" % (side, msg.data),
                                 headers={"X-By": side.decode(),
                                          "X-Seen": (msg.headers or {}).get("X-Req", "")})
            return answer

        await nh.subscribe("svc.hub", cb=responder(nh, b"hub"))
        await nl.subscribe("svc.leaf", cb=responder(nl, b"leaf"))
        await barrier(nh)
        await barrier(nl)

        async def ask(nc, subject, n):
            deadline = time.monotonic() + 10
            while True:     # until the responder's interest has crossed
                try:
                    return await nc.request(subject, b"q%d" % n, timeout=1,
                                            headers={"X-Req": "r%d" % n})
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)

        for n in range(3):
            got = await ask(nl, "svc.hub", n)
            assert got.data == b"hub got q%d" % n
            assert got.headers == {"X-By": "hub", "X-Seen": "r%d" % n}
            got = await ask(nh, "svc.leaf", n)
            assert got.data == b"leaf got q%d" % n
            assert got.headers == {"X-By": "leaf", "X-Seen": "r%d" % n}
        for nc in (nh, nl):
            await nc.close()
    run(main())


# -- 4. account binding ---------------------------------------------------------------------------

HUB_ACCOUNTS = """accounts {
  A { users = [ {user: a, password: a} ] }
  B { users = [ {user: b, password: b} ] }
}
"""
LEAF_AUTH = "authorization { user: leaf, password: pw, account: A }"


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_account_binding_meets_only_the_bound_account(leaf_kind, hub_kind, nodes, tmp_path):
    """`leafnodes { authorization { user, password, account: A } }` on the
    hub and `nats-leaf://leaf:pw@...` on the leaf: the leaf's $G meets the
    hub's account A, and nothing of B."""
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path, LEAF_AUTH, auth="leaf:pw",
                           hub_top=HUB_ACCOUNTS)
    assert [l["account"] for l in leafz(hub)["leafs"]] == ["A"]
    assert [l["account"] for l in leafz(leaf)["leafs"]] == ["$G"]

    async def main():
        na = await connect(hub, user="a", password="a")
        nb = await connect(hub, user="b", password="b")
        nl = await connect(leaf)
        in_a, in_b, in_l = [await Inbox.on(nc, "acct.>") for nc in (na, nb, nl)]
        for nc in (na, nb, nl):
            await barrier(nc)
        await wait_flow(nl, "acct.probe", in_a)
        await wait_flow(na, "acct.probe", in_l)
        await nb.publish("acct.x", b"from b")
        await barrier(nb)
        await na.publish("acct.x", b"from a")
        await nl.publish("acct.x", b"from leaf")
        await until(lambda: len(in_l.msgs) >= 2 and len(in_a.msgs) >= 2, what="acct.x")
        await quiet(in_a, in_b, in_l)
        # B's came first on the hub, and stayed there.
        assert sorted(in_l.data()) == sorted(in_a.data()) == [b"from a", b"from leaf"]
        assert in_b.data() == [b"from b"] and in_b.probes == []
        for nc in (na, nb, nl):
            await nc.close()
    run(main())


@pytest.mark.parametrize("hub_kind", ["gnatsd", "go2.15"])
def test_a_reload_of_the_hubs_accounts_keeps_the_leaf(hub_kind, nodes, tmp_path):
    """A reload that rebuilds the hub's accounts (a user added to B) keeps
    the leaf bound to A: interest made before it still crosses both ways,
    and interest made after it too."""
    import signal
    leaf, hub = start_pair(nodes, "gnatsd", hub_kind, tmp_path, LEAF_AUTH, auth="leaf:pw",
                           hub_top=HUB_ACCOUNTS)

    async def main():
        na, nl = await connect(hub, user="a", password="a"), await connect(leaf)
        in_a, in_l = await Inbox.on(na, "before.>"), await Inbox.on(nl, "before.>")
        await barrier(na)
        await barrier(nl)
        await wait_flow(nl, "before.probe", in_a)
        await wait_flow(na, "before.probe", in_l)
        conf = tmp_path / "hub.conf"
        conf.write_text(conf.read_text().replace(
            "{user: b, password: b}", "{user: b, password: b}, {user: b2, password: b2}"))
        mark = len(hub.log)
        hub.signal(signal.SIGHUP)
        hub.wait_for_log(rb"Reloaded server configuration", 10, start=mark)
        await na.publish("before.x", b"from a")
        await nl.publish("before.x", b"from leaf")
        await until(lambda: in_a.data("before.x") and in_l.data("before.x"),
                    what="interest made before the reload")
        after_a, after_l = await Inbox.on(na, "after.>"), await Inbox.on(nl, "after.>")
        await barrier(na)
        await barrier(nl)
        await wait_flow(nl, "after.probe", after_a)
        await wait_flow(na, "after.probe", after_l)
        for nc in (na, nl):
            await nc.close()
    run(main())


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_a_wrong_password_is_refused_and_the_leaf_retries(leaf_kind, hub_kind, nodes, tmp_path):
    hub = start_hub(nodes, hub_kind, tmp_path, LEAF_AUTH, HUB_ACCOUNTS)
    leaf = start_leaf(nodes, leaf_kind, tmp_path, leaf_url(hub, "leaf:nope"))
    # The hub refuses each attempt; the leaf logs the -ERR and tries again (every 1 s).
    refused = re.compile(rb"Leafnode Error 'Authorization Violation'")
    first = leaf.wait_for_log(refused, 10)
    leaf.wait_for_log(refused, 10, start=first.end())
    hub.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:\d+ - lid:\d+ - authentication error")
    assert leafz(hub)["leafnodes"] == 0 and leafz(leaf)["leafnodes"] == 0


# -- 5. deny rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_deny_exports_and_deny_imports_of_a_remote(leaf_kind, hub_kind, nodes, tmp_path):
    """deny_exports: the leaf's publishes on secret.> stay on the leaf;
    deny_imports: the leaf sends no interest in private.> (it is not in
    the hub's /leafz list) and gets no hub message on it."""
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path,
                           remote='deny_exports: ["secret.>"], deny_imports: ["private.>"]')
    # The remote's deny rules in the leaf's /varz (Go's field names).
    remotes = monitor_json(leaf, "/varz")["leaf"]["remotes"]
    assert [r["deny"] for r in remotes] == [{"exports": ["secret.>"], "imports": ["private.>"]}]

    async def main():
        nh, nl = await connect(hub), await connect(leaf)
        h_secret, h_ok = await Inbox.on(nh, "secret.>"), await Inbox.on(nh, "ok.>")
        l_private, l_ok = await Inbox.on(nl, "private.>"), await Inbox.on(nl, "ok2.>")
        await barrier(nh)
        await barrier(nl)
        await wait_flow(nl, "ok.probe", h_ok)
        await wait_flow(nh, "ok2.probe", l_ok)
        subjects = await leafz_subjects(hub)
        assert "ok2.>" in subjects and "private.>" not in subjects
        # Same connection, same path: what is let through arrives after what was not.
        await nl.publish("secret.x", b"no")
        await nl.publish("ok.x", b"yes")
        await nh.publish("private.x", b"no")
        await nh.publish("ok2.x", b"yes")
        await until(lambda: h_ok.msgs and l_ok.msgs, what="ok.x and ok2.x")
        assert h_secret.msgs == [] and h_secret.probes == []
        assert l_private.msgs == []
        assert h_ok.data() == [b"yes"] and l_ok.data() == [b"yes"]
        for nc in (nh, nl):
            await nc.close()
    run(main())


# -- 6. /leafz and /varz: Go's key paths and JSON types -------------------------------------------


def shape(value, path: str = "") -> set:
    """{"path:type"} of a JSON value; list items share the path "<path>[]"."""
    if isinstance(value, dict):
        out = {"%s:object" % path}
        for k, v in value.items():
            out |= shape(v, "%s.%s" % (path, k))
        return out
    if isinstance(value, list):
        out = {"%s:array" % path}
        for v in value:
            out |= shape(v, path + "[]")
        return out
    kind = {bool: "bool", str: "string", int: "number", float: "number",
            type(None): "null"}[type(value)]
    return {"%s:%s" % (path, kind)}


def monitor_shapes(srv) -> dict:
    varz = monitor_json(srv, "/varz")
    return {"/leafz": shape(leafz(srv)), "/leafz?subs=1": shape(leafz(srv, True)),
            "/varz": shape({k: varz[k] for k in ("leaf", "leafnodes") if k in varz})}


_LEAFZ_215 = {":object", ".server_id:string", ".now:string", ".leafnodes:number",
              ".leafs:array", ".leafs[]:object", ".leafs[].id:number", ".leafs[].name:string",
              ".leafs[].is_spoke:bool", ".leafs[].account:string", ".leafs[].ip:string",
              ".leafs[].port:number", ".leafs[].rtt:string", ".leafs[].in_msgs:number",
              ".leafs[].out_msgs:number", ".leafs[].in_bytes:number",
              ".leafs[].out_bytes:number", ".leafs[].subscriptions:number",
              ".leafs[].compression:string"}
_LEAFZ_29 = {s for s in _LEAFZ_215 if s.split(".")[-1].split(":")[0] not in
             ("id", "name", "is_spoke", "compression")}
_SUBS = {".leafs[].subscriptions_list:array", ".leafs[].subscriptions_list[]:string"}
_VARZ_HUB = {":object", ".leafnodes:number", ".leaf:object", ".leaf.host:string",
             ".leaf.port:number", ".leaf.auth_timeout:number", ".leaf.tls_timeout:number"}
_VARZ_LEAF = {":object", ".leafnodes:number", ".leaf:object", ".leaf.remotes:array",
              ".leaf.remotes[]:object", ".leaf.remotes[].local_account:string",
              ".leaf.remotes[].urls:array", ".leaf.remotes[].urls[]:string"}
# What Go shows for one leaf link, per version and side (checked below on
# the Go-only pairings; a gnatsd.py side is compared with Go 2.15 live).
GO_SHAPES = {
    version: {side: {"/leafz": leafz_keys, "/leafz?subs=1": leafz_keys | _SUBS, "/varz": varz}
              for side, varz in (("hub", _VARZ_HUB), ("leaf", _VARZ_LEAF))}
    for version, leafz_keys in (("go2.15", _LEAFZ_215), ("go2.9", _LEAFZ_29))}


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_leafz_and_varz_have_gos_key_paths_and_types(leaf_kind, hub_kind, nodes, tmp_path):
    leaf, hub = start_pair(nodes, leaf_kind, hub_kind, tmp_path)
    got = {"leaf": monitor_shapes(leaf), "hub": monitor_shapes(hub)}
    if "gnatsd" in (leaf_kind, hub_kind):
        # The mirrored layout: each gnatsd.py replaced by Go 2.15.
        mirror = [k if k != "gnatsd" else "go2.15" for k in (leaf_kind, hub_kind)]
        mirror_dir = tmp_path / "mirror"
        mirror_dir.mkdir()
        m_leaf, m_hub = start_pair(nodes, mirror[0], mirror[1], mirror_dir)
        want = {"leaf": monitor_shapes(m_leaf), "hub": monitor_shapes(m_hub)}
    else:
        want = {"leaf": GO_SHAPES[leaf_kind]["leaf"], "hub": GO_SHAPES[hub_kind]["hub"]}
    for side, kind in (("leaf", leaf_kind), ("hub", hub_kind)):
        if kind == "gnatsd" or "gnatsd" not in (leaf_kind, hub_kind):
            for path in want[side]:
                assert got[side][path] == want[side][path], "%s %s: extra %s, missing %s" % (
                    side, path, sorted(got[side][path] - want[side][path]),
                    sorted(want[side][path] - got[side][path]))
    # The values that the layout fixes.
    for side, srv, peer, spoke in (("leaf", leaf, "hub", True), ("hub", hub, "leaf", False)):
        link = leafz(srv)["leafs"][0]
        assert link["account"] == "$G" and link["ip"] == "127.0.0.1"
        if "name" in link:
            assert (link["name"], link["is_spoke"]) == (peer, spoke)
    assert leafz(leaf)["leafs"][0]["port"] == hub.leaf_port
    assert monitor_json(hub, "/varz")["leaf"]["port"] == hub.leaf_port
    assert monitor_json(leaf, "/varz")["leaf"]["remotes"][0]["urls"] == [
        "127.0.0.1:%d" % hub.leaf_port]


# -- 7. the uplink is cut under traffic -----------------------------------------------------------


@pytest.mark.parametrize("leaf_kind,hub_kind", PAIR_PARAMS)
def test_uplink_cut_under_traffic(leaf_kind, hub_kind, nodes, proxies, tmp_path):
    """The leaf reaches the hub through a proxy.  Under traffic (leaf-local,
    leaf->hub, hub->leaf) the proxy resets the link and refuses for a
    while: the leaf's local traffic never stops; the leaf reconnects on its
    own (default reconnect interval, 1 s); interest is back both ways; no
    message arrives twice or out of order, and from the moment the link is
    back, none is lost."""
    proxy = TcpProxy()
    proxies.append(proxy)
    # The hub advertises the proxy: a Go leaf adds the hub's `leafnode_urls`
    # to the URLs it reconnects to, and would come back around the proxy.
    hub = start_hub(nodes, hub_kind, tmp_path, 'advertise: "127.0.0.1:%d"' % proxy.port)
    proxy.target = ("127.0.0.1", hub.leaf_port)
    leaf = start_leaf(nodes, leaf_kind, tmp_path, leaf_url(hub, port=proxy.port))
    wait_leafs(hub)
    wait_leafs(leaf)

    async def main():
        nh, nl, nl2 = await connect(hub), await connect(leaf), await connect(leaf)
        up, down, local = await Inbox.on(nh, "up.>"), await Inbox.on(nl, "down.>"), \
            await Inbox.on(nl2, "local.>")
        for nc in (nh, nl, nl2):
            await barrier(nc)
        await wait_flow(nl, "up.probe", up)
        await wait_flow(nh, "down.probe", down)
        stop = asyncio.Event()
        sent = {"up": 0, "down": 0, "local": 0}

        async def pump(nc, name):
            while not stop.is_set():
                await nc.publish(name + ".seq", b"%d" % sent[name])
                sent[name] += 1
                await asyncio.sleep(0.004)

        def seqs(box):
            return [int(d) for d in box.data(box.sub.subject[:-1] + "seq")]

        pumps = [asyncio.ensure_future(pump(nc, name))
                 for nc, name in ((nl, "up"), (nh, "down"), (nl2, "local"))]
        await until(lambda: min(len(up.msgs), len(down.msgs), len(local.msgs)) >= 25,
                    what="traffic before the cut")
        proxy.refuse = True
        proxy.cut()
        # Both ends notice; the leaf's clients go on meanwhile.
        for srv in (hub, leaf):
            await asyncio.to_thread(wait_leafs, srv, 0)
        at_cut = len(local.msgs)
        await until(lambda: len(local.msgs) >= at_cut + 100, what="local traffic while cut")
        refused = proxy.accepted
        proxy.refuse = False
        for srv in (hub, leaf):
            await asyncio.to_thread(wait_leafs, srv, 1, 15)
        assert proxy.accepted > refused          # it came back through the proxy
        # Interest is restored both ways: new messages cross again.
        back = {"up": sent["up"], "down": sent["down"]}
        await until(lambda: seqs(up) and seqs(up)[-1] >= back["up"] + 25, 10, "leaf->hub again")
        await until(lambda: seqs(down) and seqs(down)[-1] >= back["down"] + 25, 10,
                    "hub->leaf again")
        stop.set()
        await asyncio.gather(*pumps)
        for nc, name in ((nl, "up"), (nh, "down"), (nl2, "local")):
            await nc.publish(name + ".end", b"")
        await until(lambda: up.data("up.end") and down.data("down.end") and local.data("local.end"),
                    what="end markers")
        await quiet(up, down, local, seconds=0.2)
        assert seqs(local) == list(range(sent["local"]))     # never interrupted
        for box, name in ((up, "up"), (down, "down")):
            got = seqs(box)
            assert got == sorted(set(got)), "%s: a duplicate or reordering" % name
            # Everything from the first message after the link came back on.
            resumed = next(s for s in got if s >= back[name])
            assert got[got.index(resumed):] == list(range(resumed, sent[name])), name
        for nc in (nh, nl, nl2):
            await nc.close()
    run(main(), 60)


# -- 8. a leaf on one node of a three-node hub cluster --------------------------------------------

CLUSTER_CASES = [
    # (hub cluster layout, index of the node the leaf dials, leaf kind)
    pytest.param("go", 0, "go2.15", id="go-cluster-go2.15-leaf"),
    pytest.param("go2.9", 1, "go2.9", id="go2.9-cluster-go2.9-leaf"),
    pytest.param("go+gnatsd", 0, "go2.15", id="go+gnatsd-cluster-leaf-on-go"),
    pytest.param("go+gnatsd", 1, "go2.15", id="go+gnatsd-cluster-leaf-on-gnatsd"),
    pytest.param("go", 1, "gnatsd", id="go-cluster-gnatsd-leaf"),
    pytest.param("gnatsd+go", 0, "gnatsd", id="gnatsd+go-cluster-gnatsd-leaf-on-gnatsd"),
    pytest.param("gnatsd", 2, "gnatsd", id="gnatsd-cluster-gnatsd-leaf"),
]


@pytest.mark.parametrize("layout,attach,leaf_kind", CLUSTER_CASES)
def test_a_leaf_on_one_node_reaches_every_node_of_a_hub_cluster(layout, attach, leaf_kind,
                                                                cluster_factory, nodes, tmp_path):
    kinds = layout_kinds(layout)
    need(leaf_kind)
    cluster = cluster_factory("hubc")
    hubs = []
    for i, kind in enumerate(kinds):
        top = 'leafnodes {\n  host: "127.0.0.1"\n  port: -1\n}\n' if i == attach else ""
        hubs.append(cluster.start(kind, routes=hubs[-1:], top=top))
    wait_mesh(hubs)
    entry = hubs[attach]
    entry.role = "hub%d" % attach
    entry.leaf_port = int(entry.wait_for_log(LEAF_LISTEN_RE, 5).group(2))
    leaf = start_leaf(nodes, leaf_kind, tmp_path, leaf_url(entry))
    wait_leafs(entry)
    wait_leafs(leaf)
    n = 10

    async def main():
        ncs = [await connect(h) for h in hubs]
        nl = await connect(leaf)
        at_hubs = [await Inbox.on(nc, "toHub.>") for nc in ncs]
        at_leaf = await Inbox.on(nl, "toLeaf.>")
        for nc in ncs + [nl]:
            await barrier(nc)
        for box in at_hubs:             # the leaf's messages reach every node
            await wait_flow(nl, "toHub.probe", box)
        for i, nc in enumerate(ncs):    # every node's messages reach the leaf
            await wait_flow(nc, "toLeaf.probe", at_leaf, payload=b"%d" % i)
        for k in range(n):
            await nl.publish("toHub.data", b"%d" % k)
            for i, nc in enumerate(ncs):
                await nc.publish("toLeaf.n%d" % i, b"%d" % k)
        await nl.publish("toHub.end", b"")
        for nc in ncs:
            await nc.publish("toLeaf.end", b"")
        await until(lambda: all(b.data("toHub.end") for b in at_hubs)
                    and len(at_leaf.data("toLeaf.end")) == len(ncs), what="end markers")
        await quiet(at_leaf, *at_hubs)
        want = [b"%d" % k for k in range(n)]
        for box in at_hubs:
            assert box.data("toHub.data") == want
        for i in range(len(ncs)):
            assert at_leaf.data("toLeaf.n%d" % i) == want
        for nc in ncs + [nl]:
            await nc.close()
    run(main(), 45)


# -- 9. the wire, with a raw socket on the other end ----------------------------------------------


def next_op(conn: RawConn, pings: list | None = None, timeout: float = 5.0) -> bytes:
    """The next op the server sends (an LMSG/HMSG with its payload), skipping
    PINGs (answered; counted in `pings`) and `LS+ $SYS.` lines (Go's hub
    and leaf send interest in the system services they import)."""
    while True:
        line = conn.expect(rb"([^\n]*\n)", timeout).group(1)
        if line == b"PING\r\n":
            conn.send(b"PONG\r\n")
            if pings is not None:
                pings.append(time.monotonic())
            continue
        if line.startswith(b"LS+ $SYS."):
            continue
        if line.startswith((b"LMSG ", b"HMSG ")):
            size = int(line.split()[-1])
            line += conn.expect(re.compile(rb"(.{%d}\r\n)" % size, re.S), timeout).group(1)
        return line


def ops_until_pong(conn: RawConn, pings: list | None = None) -> list:
    """Send PING; the ops that come before its PONG."""
    conn.send(b"PING\r\n")
    ops = []
    while True:
        op = next_op(conn, pings)
        if op == b"PONG\r\n":
            return ops
        ops.append(op)


def client_of(srv, subs: bytes = b"") -> RawConn:
    c = RawConn("127.0.0.1", srv.port)
    c.read_info()
    c.send(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n' + subs)
    t_ping_pong(c)
    return c


HDR = b"NATS/1.0\r\nA: BC\r\n\r\n"      # 19 bytes of headers


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_a_long_burst_from_a_leaf_arrives_whole_and_in_order(kind, nodes, tmp_path):
    """30,000 LMSGs in one write take the hub many turns (a slice of input
    per turn, as a client's): every one reaches the subscriber in order,
    and the leaf's PING after them is answered after them."""
    hub = start_hub(nodes, kind, tmp_path)
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.expect(rb"INFO \{[^\r\n]*\} ?\r\n")
    pings = []
    c.send(b'CONNECT {"server_id":"NRAWLEAF","name":"rawleaf","headers":true}\r\n')
    ops_until_pong(c, pings)
    sub = client_of(hub, b"SUB in.> 1\r\n")
    assert ops_until_pong(c, pings) == [b"LS+ in.>\r\n"]
    burst = [(b"in.%d" % (k % 5000), b"m%d" % k) for k in range(30000)]
    c.send(b"".join(b"LMSG %s %d\r\n%s\r\n" % (s, len(p), p) for s, p in burst))
    assert ops_until_pong(c, pings) == []
    t_expect_exact(sub, b"".join(b"MSG %s 1 %d\r\n%s\r\n" % (s, len(p), p) for s, p in burst),
                   timeout=30)
    t_ping_pong(sub)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_hub_side_wire_protocol(kind, nodes, tmp_path):
    hub = start_hub(nodes, kind, tmp_path)
    c = RawConn("127.0.0.1", hub.leaf_port)
    info = json.loads(c.expect(rb"INFO (\{[^\r\n]*\}) ?\r\n").group(1))
    assert info["auth_required"] is True and info["headers"] is True
    assert info["info_on_connect"] is True
    assert isinstance(info["client_id"], int) and info["client_id"] > 0
    assert isinstance(info["nonce"], str) and info["nonce"]
    assert info["leafnode_urls"] == ["127.0.0.1:%d" % hub.leaf_port]
    assert info["max_payload"] == 1048576 and info["server_name"] == "hub"
    assert "compression" not in info or info["compression"] in ("s2_auto", "off", "not supported")
    pings = []
    c.send(b'CONNECT {"server_id":"NRAWLEAF","name":"rawleaf","headers":true}\r\n')
    ops = ops_until_pong(c, pings)
    # The answer to CONNECT: an INFO naming the bound account, then interest,
    # here only the loop-detection subject.
    second = json.loads(re.match(rb"INFO (\{.*\}) ?\r\n", ops[0]).group(1))
    assert second["connect_info"] is True and second["remote_account"] == "$G"
    lds = [op for op in ops[1:] if op.startswith(b"LS+ $LDS.")]
    assert len(lds) == 1 and re.match(rb"LS\+ \$LDS\.[A-Za-z0-9]+\r\n$", lds[0])
    assert ops[1:] == lds
    # A client's interest, with queue weights.
    cl = client_of(hub, b"SUB foo 1\r\nSUB bar q1 2\r\nSUB bar q1 3\r\nSUB bar q2 4\r\n")
    assert ops_until_pong(c, pings) == [b"LS+ foo\r\n", b"LS+ bar q1 1\r\n", b"LS+ bar q1 2\r\n",
                                        b"LS+ bar q2 1\r\n"]
    cl.send(b"UNSUB 3\r\n")
    t_ping_pong(cl)
    assert ops_until_pong(c, pings) == [b"LS+ bar q1 1\r\n"]
    cl.send(b"UNSUB 2\r\nUNSUB 1\r\nUNSUB 4\r\n")
    t_ping_pong(cl)
    assert ops_until_pong(c, pings) == [b"LS- bar q1\r\n", b"LS- foo\r\n", b"LS- bar q2\r\n"]
    # The leaf's interest, and the messages the hub sends for it.
    c.send(b"LS+ lfoo\r\nLS+ lq grp 3\r\n")
    assert ops_until_pong(c, pings) == []
    cl.send(b"PUB lfoo 5\r\nhello\r\nPUB lfoo rep.1 5\r\nhello\r\n"
            b"HPUB lfoo 19 24\r\n" + HDR + b"hello\r\n"
            b"HPUB lfoo rep.2 19 24\r\n" + HDR + b"hello\r\n"
            b"PUB lq 5\r\nhello\r\nPUB lq rep.3 5\r\nhello\r\n"
            b"HPUB lq rep.4 19 24\r\n" + HDR + b"hello\r\n")
    t_ping_pong(cl)
    assert ops_until_pong(c, pings) == [
        b"LMSG lfoo 5\r\nhello\r\n", b"LMSG lfoo rep.1 5\r\nhello\r\n",
        b"HMSG lfoo 19 24\r\n" + HDR + b"hello\r\n",
        b"HMSG lfoo rep.2 19 24\r\n" + HDR + b"hello\r\n",
        b"LMSG lq | grp 5\r\nhello\r\n", b"LMSG lq + rep.3 grp 5\r\nhello\r\n",
        b"HMSG lq + rep.4 grp 19 24\r\n" + HDR + b"hello\r\n"]
    # Messages from the leaf; one that names no queue reaches no queue member.
    cl.send(b"SUB in.> 10\r\nSUB qin qq 11\r\n")
    t_ping_pong(cl)
    assert ops_until_pong(c, pings) == [b"LS+ in.>\r\n", b"LS+ qin qq 1\r\n"]
    c.send(b"LMSG in.a 5\r\nhello\r\nLMSG in.b rep.5 5\r\nhello\r\n"
           b"HMSG in.c 19 24\r\n" + HDR + b"hello\r\nHMSG in.d rep.6 19 24\r\n" + HDR + b"hello\r\n"
           b"LMSG qin | qq 5\r\nhello\r\nLMSG qin + rep.7 qq 5\r\nhello\r\n"
           b"LMSG qin 5\r\nhello\r\nLMSG qin | other 5\r\nhello\r\n")
    assert ops_until_pong(c, pings) == []
    t_expect_exact(cl, b"MSG in.a 10 5\r\nhello\r\nMSG in.b 10 rep.5 5\r\nhello\r\n"
                   b"HMSG in.c 10 19 24\r\n" + HDR + b"hello\r\n"
                   b"HMSG in.d 10 rep.6 19 24\r\n" + HDR + b"hello\r\n"
                   b"MSG qin 11 5\r\nhello\r\nMSG qin 11 rep.7 5\r\nhello\r\n")
    t_ping_pong(cl)
    # The hub PINGs the leaf about a second after CONNECT.
    deadline = time.monotonic() + 3
    while not pings and time.monotonic() < deadline:
        assert ops_until_pong(c, pings) == []
    assert pings, "the hub sent no PING"
    # Its own loop-detection subject coming back is a loop.
    c.send(lds[0])
    assert t_read_until_closed(c) == (b"-ERR 'Loop detected for leafnode account=\"$G\". "
                                      b"Delaying attempt to reconnect for 30s'\r\n")


@pytest.mark.parametrize("connect,answer", [
    (b'CONNECT {"user":"leaf","pass":"nope"}\r\n', b"-ERR 'Authorization Violation'\r\n"),
    (b'CONNECT {"user":"leaf","pass":"pw","lang":"python"}\r\n',
     b"-ERR 'attempted to connect to leaf node port'\r\n"),
    (b"PING\r\n", b"-ERR 'Authorization Violation'\r\n"),
    (b"LS+ foo\r\n", b"-ERR 'Authorization Violation'\r\n"),
    (b'CONNECT {"user":"leaf","pass":"pw","gateway":"gw"}\r\n',
     b"-ERR 'Rejecting connection from gateway \"gw\" on the leafnode port'\r\n"),
], ids=["wrong-password", "a-client", "no-connect", "ls-first", "a-gateway"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_hub_refusals(kind, connect, answer, nodes, tmp_path):
    hub = start_hub(nodes, kind, tmp_path, LEAF_AUTH, HUB_ACCOUNTS)
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.read_info()
    c.send(connect)
    assert t_read_until_closed(c) == answer


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_hub_accepts_a_minimal_connect(kind, nodes, tmp_path):
    hub = start_hub(nodes, kind, tmp_path)
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.read_info()
    c.send(b"CONNECT {}\r\n")
    ops = ops_until_pong(c)
    assert json.loads(re.match(rb"INFO (\{.*\}) ?\r\n", ops[0]).group(1))["connect_info"] is True
    assert [op[:9] for op in ops[1:]] == [b"LS+ $LDS."]
    assert leafz(hub)["leafnodes"] == 1


class FakeHub:
    """A listening socket that plays the hub for one leaf connection."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]

    def accept(self) -> RawConn:
        sock, _ = self.listener.accept()
        conn = RawConn.__new__(RawConn)
        conn.sock, conn.timeout, conn.buf, conn.closed = sock, 5.0, bytearray(), False
        return conn

    def info(self, **fields) -> bytes:
        """An INFO as a Go 2.10 hub's leafnode port sends it (no compression)."""
        info = {"server_id": "NFAKEHUB", "server_name": "fakehub", "version": "2.10.0",
                "proto": 1, "go": "go1.21", "host": "127.0.0.1", "port": self.port,
                "headers": True, "auth_required": True, "max_payload": 1048576,
                "client_id": 7, "nonce": "abcdefghijklmno",
                "leafnode_urls": ["127.0.0.1:%d" % self.port], **fields}
        return b"INFO %s\r\n" % json.dumps(info, separators=(",", ":")).encode()

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_leaf_side_wire_protocol(kind, nodes, tmp_path):
    hub = FakeHub()
    try:
        leaf = start_leaf(nodes, kind, tmp_path, leaf_url(hub, "u:p", hub.port))
        c = hub.accept()
        c.send(hub.info(info_on_connect=True))
        connect = json.loads(c.expect(rb"CONNECT (\{[^\r\n]*\})\r\n").group(1))
        assert (connect["user"], connect["pass"], connect["name"]) == ("u", "p", "leaf")
        assert connect["headers"] is True and "lang" not in connect
        assert connect.get("remote_account", "$G") == "$G"
        assert connect.get("compress_mode", "not supported") in ("not supported", "off")
        # info_on_connect: nothing more until the INFO that answers CONNECT.
        pings = []
        assert c.read_all(0.3) == b""
        c.send(hub.info(connect_info=True, remote_account="$G"))
        ops = ops_until_pong(c, pings)
        lds = [op for op in ops if op.startswith(b"LS+ $LDS.")]
        assert len(lds) == 1 and ops == lds
        # Local interest, with queue weights.
        cl = client_of(leaf, b"SUB early 1\r\nSUB early.q grp 2\r\nSUB early.q grp 3\r\n")
        assert ops_until_pong(c, pings) == [b"LS+ early\r\n", b"LS+ early.q grp 1\r\n",
                                            b"LS+ early.q grp 2\r\n"]
        cl.send(b"UNSUB 2\r\n")
        t_ping_pong(cl)
        assert ops_until_pong(c, pings) == [b"LS+ early.q grp 1\r\n"]
        # The hub's interest, and the messages the leaf sends for it.
        c.send(b"LS+ hub.sub\r\nLS+ hub.q hq 2\r\n")
        assert ops_until_pong(c, pings) == []
        cl.send(b"SUB later 4\r\nPUB hub.sub 2\r\nhi\r\nPUB hub.q r.1 2\r\nhi\r\n"
                b"HPUB hub.sub 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 4\r\n")
        t_ping_pong(cl)
        assert ops_until_pong(c, pings) == [
            b"LS+ later\r\n", b"LMSG hub.sub 2\r\nhi\r\n", b"LMSG hub.q + r.1 hq 2\r\nhi\r\n",
            b"HMSG hub.sub 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"LS- later\r\n"]
        # The hub's messages reach the leaf's clients.
        c.send(b"LMSG early 2\r\nhi\r\nLMSG early.q | grp 2\r\nhi\r\n"
               b"LMSG early.q + r.2 grp 2\r\nhi\r\n"
               b"HMSG early r.3 12 14\r\nNATS/1.0\r\n\r\nhi\r\nLMSG early.q 2\r\nhi\r\n")
        assert ops_until_pong(c, pings) == []
        t_expect_exact(cl, b"MSG early 1 2\r\nhi\r\nMSG early.q 3 2\r\nhi\r\n"
                       b"MSG early.q 3 r.2 2\r\nhi\r\n"
                       b"HMSG early 1 r.3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
        t_ping_pong(cl)
        assert [l.get("name", "fakehub") for l in leafz(leaf)["leafs"]] == ["fakehub"]
        deadline = time.monotonic() + 3
        while not pings and time.monotonic() < deadline:
            assert ops_until_pong(c, pings) == []
        assert pings, "the leaf sent no PING"
        # The leaf's own loop-detection subject coming back is a loop.
        c.send(lds[0])
        assert t_read_until_closed(c) == (b"-ERR 'Loop detected for leafnode account=\"$G\". "
                                          b"Delaying attempt to reconnect for 30s'\r\n")
        leaf.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:%d - lid:\d+ - Loop detected for leafnode "
                          rb"account=\"\$G\"\. Delaying attempt to reconnect for 30s" % hub.port)
    finally:
        hub.close()


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_leaf_goes_on_without_info_on_connect(kind, nodes, tmp_path):
    """A hub INFO without `info_on_connect` (a pre-2.2 hub): the leaf sends
    its interest right after CONNECT.  With it but no second INFO, the leaf
    gives up after 2 s and reconnects."""
    hub = FakeHub()
    try:
        leaf = start_leaf(nodes, kind, tmp_path, leaf_url(hub, port=hub.port))
        c = hub.accept()
        c.send(hub.info())
        c.expect(rb"CONNECT \{[^\r\n]*\}\r\n")
        assert [op[:9] for op in ops_until_pong(c)] == [b"LS+ $LDS."]
        c.close()
        c = hub.accept()                 # the reconnect, a second later
        c.send(hub.info(info_on_connect=True))
        c.expect(rb"CONNECT \{[^\r\n]*\}\r\n")
        assert t_read_until_closed(c, 4) == b"-ERR 'Stale Leaf Node Connection - Closing'\r\n"
        leaf.wait_for_log(rb"Leafnode connection closed: Stale Connection")
    finally:
        hub.close()


# -- 10. what a leaf's login allows ----------------------------------------------------------------


def restricted_leaf(nodes, kind, tmp_path, admin_subs: bytes) -> tuple:
    """A hub whose user `r` may publish and subscribe to `allowed` only:
    (an `admin` client with `admin_subs`, a raw leaf that sent CONNECT as
    `r`)."""
    hub = start_hub(nodes, kind, tmp_path, top="""authorization { users = [
  {user: r, password: r, permissions: {publish: "allowed", subscribe: "allowed"}}
  {user: admin, password: admin}
]}
""")
    admin = RawConn("127.0.0.1", hub.port)
    admin.read_info()
    admin.send(b'CONNECT {"user":"admin","pass":"admin","verbose":false}\r\n' + admin_subs)
    t_ping_pong(admin)
    leaf = RawConn("127.0.0.1", hub.leaf_port)
    leaf.read_info()
    leaf.send(b'CONNECT {"user":"r","pass":"r","name":"evil","server_id":"NEVIL",'
              b'"headers":true}\r\n')
    return admin, leaf


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_a_leaf_logged_in_as_a_restricted_user_has_its_permissions(kind, nodes, tmp_path):
    """A leaf that logs in as a client user (no leafnodes authorization)
    gets that user's permissions, seen from the leaf: the hub does not tell
    it of interest it may not publish to, an LS+ it may not subscribe to
    gets -ERR 'Permissions Violation for Subscription' and the close."""
    _admin, leaf = restricted_leaf(nodes, kind, tmp_path,
                                   b"SUB secret.in 1\r\nSUB allowed 2\r\n")
    ops = ops_until_pong(leaf)
    told = sorted(op.split()[1] for op in ops if op.startswith(b"LS+ ") and b"$" not in op)
    assert told == [b"allowed"], ops                    # not secret.in
    leaf.send(b"LS+ secret.out\r\n")
    assert t_read_until_closed(leaf) == \
        b"-ERR 'Permissions Violation for Subscription to \"secret.out\"'\r\n"


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_a_leaf_may_not_publish_what_its_user_may_not(kind, nodes, tmp_path):
    admin, leaf = restricted_leaf(nodes, kind, tmp_path, b"SUB secret.in 1\r\n")
    ops_until_pong(leaf)
    leaf.send(b"LMSG secret.in 5\r\nhello\r\n")
    assert t_read_until_closed(leaf) == \
        b"-ERR 'Permissions Violation for Publish to \"secret.in\"'\r\n"
    t_ping_pong(admin)                                  # and admin got nothing before it
    assert not admin.buf, bytes(admin.buf)


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_a_leafnodes_nkey_must_sign_the_nonce(kind, nodes, tmp_path):
    """`leafnodes { authorization { nkey: U... } }`: a leaf without that
    key's signature of the nonce is refused; with it, it is in."""
    import base64
    import nkeys
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    pair = nkeys.from_seed(seed)
    public = pair.public_key.decode()
    hub = start_hub(nodes, kind, tmp_path, "authorization { nkey: %s }" % public)
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.read_info()
    c.send(b'CONNECT {"name":"evil","server_id":"NEVIL","headers":true}\r\nPING\r\n')
    assert t_read_until_closed(c) == b"-ERR 'Authorization Violation'\r\n"
    c = RawConn("127.0.0.1", hub.leaf_port)
    nonce = c.read_info()["nonce"].encode()
    sig = base64.urlsafe_b64encode(pair.sign(nonce)).rstrip(b"=")
    c.send(b'CONNECT {"nkey":"%s","sig":"%s","name":"ok","server_id":"NOK","headers":true}'
           b'\r\nPING\r\n' % (public.encode(), sig))
    ops = ops_until_pong(c)
    assert ops[0].startswith(b"INFO ")
    wait_leafs(hub)


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_invalid_leaf_subjects_are_refused(kind, nodes, tmp_path):
    hub = start_hub(nodes, kind, tmp_path)
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.read_info()
    c.send(b'CONNECT {"name":"x","server_id":"NX","headers":true}\r\n')
    ops_until_pong(c)
    for subject in (b">.x", b"a.>.b"):
        c.send(b"LS+ %s\r\n" % subject)
        assert ops_until_pong(c) == [b"-ERR 'Invalid Subscription'\r\n"], subject
    listed = leafz(hub, subs=True)["leafs"][0].get("subscriptions_list") or []
    assert not [s for s in listed if s.startswith((">", "a."))], listed


# Leaf lines Go 2.9 and 2.15 refuse: the log line each writes, then the
# connection closed ("Protocol Violation"); -ERR 'Unknown Protocol Operation'
# only where its parser fails on a byte (an op that needs arguments ends at
# its name: the byte after it, quoted less its last byte as protoSnippet does).
BAD_LEAF_LINES = {
    "ls-bare": (b"LS+\r\n", "Leafnode parser ERROR, state=45, i=3: proto='\"\\r\"...'"),
    "ls-two-args": (b"LS+ foo q\r\n", "processLeafSub Parse Error: 'foo q'"),
    "ls-four-args": (b"LS+ foo q 1 x\r\n", "processLeafSub Parse Error: 'foo q 1 x'"),
    "unsub-bare": (b"LS-\r\n", "Leafnode parser ERROR, state=63, i=3: proto='\"\\r\"...'"),
    "lmsg-bare": (b"LMSG\r\n", "Leafnode parser ERROR, state=68, i=4: proto='\"\\r\"...'"),
    "lmsg-size": (b"LMSG foo 1_0\r\n0123456789\r\n",
                  "processLeafMsgArgs Bad or Missing Size: '[foo 1_0]'"),
    "lmsg-no-size": (b"LMSG foo\r\n", "processLeafMsgArgs Parse Error: '[foo]'"),
    "lmsg-indicator": (b"LMSG foo bar baz 2\r\nab\r\n",
                       "processLeafMsgArgs Bad or Missing Reply Indicator: 'bar'"),
    "hmsg-over-total": (b"HMSG foo 12 10\r\nNATS/1.0\r\n\r\n\r\n",
                        "processLeafHeaderMsgArgs Header Size larger then TotalSize: 'foo 12 10'"),
    "hmsg-bad-header": (b"HMSG foo x 10\r\n0123456789\r\n",
                        "processLeafHeaderMsgArgs Bad or Missing Header Size: 'foo x 10'"),
    "unknown-op": (b"LX foo\r\n", "Leafnode parser ERROR, state=55, i=1: proto='\"X foo\\r\"...'"),
}


@pytest.mark.parametrize("case", list(BAD_LEAF_LINES))
def test_bad_leaf_lines_close_the_leaf_as_go_does(kind, case, nodes, tmp_path):
    line, text = BAD_LEAF_LINES[case]
    hub = start_hub(nodes, kind, tmp_path)
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.read_info()
    c.send(b'CONNECT {"name":"x","server_id":"NX","headers":true}\r\n')
    ops_until_pong(c)
    sub = client_of(hub, b"SUB foo 1\r\n")
    ops_until_pong(c)
    mark = len(hub.log)
    c.send(line)
    rest = re.sub(rb"^(?:(?:PING|INFO [^\r]*|LS[+-] [^\r]*)\r\n)*", b"", c.read_until_closed())
    assert rest == (b"-ERR 'Unknown Protocol Operation'\r\n" if "parser ERROR" in text else b"")
    hub.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:\d+ - lid:\d+ - " + re.escape(text.encode()) +
                     rb"\n", start=mark)
    hub.wait_for_log(rb"lid:\d+ - Leafnode connection closed: Protocol Violation", start=mark)
    t_ping_pong(sub)            # (and nothing delivered before the PONG)


def first_line_answer(hub, line: bytes) -> tuple:
    """Send `line` first on a new leaf connection: (what the hub answers
    up to its close, the log's length before)."""
    c = RawConn("127.0.0.1", hub.leaf_port)
    c.read_info()
    mark = len(hub.log)
    c.send(line)
    return c.read_until_closed(), mark


@pytest.mark.parametrize("line", [b"LS+\r\n", b"LMSG\r\n", b"LS+ foo\r\n"],
                         ids=["bare-sub", "bare-msg", "sub"])
def test_a_leafs_first_line_must_be_connect_even_a_bare_op(kind, line, nodes, tmp_path):
    """Before CONNECT, Go's parser refuses any op but CONNECT at its first
    byte (Authorization Violation), before it could fail on arguments."""
    hub = start_hub(nodes, kind, tmp_path)
    answer, mark = first_line_answer(hub, line)
    assert answer == b"-ERR 'Authorization Violation'\r\n"
    hub.wait_for_log(rb"Leafnode connection closed: Authentication Failure", start=mark)


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_a_route_peers_queue_weights_reach_a_leaf(kind, nodes, tmp_path):
    """A queue group's weight from a route peer (RS+ <acc> <subject> <queue>
    <weight>, sent again as its members come and go) reaches a leaf as the
    group's new total (again when unchanged), and its end as LS- (as
    from Go 2.15; Go 2.9 sends LS- on a weight going down and keeps a
    group the peer dropped)."""
    srv = start_node(nodes, kind, tmp_path, "node", 'cluster {\n  name: c1\n  listen: '
                     '"127.0.0.1:-1"\n}\nleafnodes {\n  host: "127.0.0.1"\n  port: -1\n}\n')
    peer = raw_route(srv)
    peer.send(b"PING\r\n")
    peer_reads(peer, rb"PONG\r\n")
    leaf = RawConn("127.0.0.1", srv.leaf_port)
    leaf.read_info()
    leaf.send(b'CONNECT {"name":"x","server_id":"NX","headers":true}\r\n')
    ops_until_pong(leaf)
    seen = []
    for lines in (b"RS+ $G foo q 3\r\n", b"RS+ $G foo q 1\r\n", b"RS+ $G foo q 5\r\n",
                  b"RS+ $G foo q 5\r\n", b"RS- $G foo q\r\n", b"RS+ $G foo q 2\r\n"):
        peer.send(lines + b"PING\r\n")
        peer_reads(peer, rb"PONG\r\n")
        seen.append([op for op in ops_until_pong(leaf) if not op.startswith(b"INFO")])
    peer.close()
    deadline = time.monotonic() + 5
    while not seen[-1] or seen[-1][-1] != b"LS- foo q\r\n":
        assert time.monotonic() < deadline, seen
        seen.append([op for op in ops_until_pong(leaf) if not op.startswith(b"INFO")])
    assert seen[:6] == [[b"LS+ foo q 3\r\n"], [b"LS+ foo q 1\r\n"], [b"LS+ foo q 5\r\n"],
                        [b"LS+ foo q 5\r\n"], [b"LS- foo q\r\n"], [b"LS+ foo q 2\r\n"]]


@pytest.mark.parametrize("line,text", [
    (b"C\r\n", "Leafnode parser ERROR, state=10, i=1: proto='\"\\r\"...'"),
    (b"CONNEC {}\r\n", "Leafnode parser ERROR, state=15, i=6: proto='\" {}\\r\"...'"),
], ids=["c", "connec"])
def test_a_leafs_first_line_starting_with_c_is_read_as_an_op(kind, line, text, nodes,
                                                            tmp_path):
    """A first byte C passes Go's check for CONNECT; what it spells is then
    parsed: an unknown op, -ERR and Go's parser error line."""
    hub = start_hub(nodes, kind, tmp_path)
    answer, mark = first_line_answer(hub, line)
    assert answer == b"-ERR 'Unknown Protocol Operation'\r\n"
    hub.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:\d+ - lid:\d+ - " + re.escape(text.encode()) + rb"\n",
                     start=mark)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("go", ["go2.9", "go2.15"])
def test_random_leaf_interest_gets_go_s_messages(go, seed, nodes, tmp_path):
    """A leaf's interest comes and goes (LS+/LS-, queue q with weights,
    wildcards that overlap); after each change a client on the hub
    publishes: the LMSGs the leaf gets (plain, '| q', '+ reply q') are the
    same from a gnatsd.py hub as from a Go hub."""
    got = {}
    for kind in ("gnatsd", go):
        (tmp_path / kind).mkdir()
        hub = start_hub(nodes, kind, tmp_path / kind)
        leaf = RawConn("127.0.0.1", hub.leaf_port)
        leaf.read_info()
        leaf.send(b'CONNECT {"name":"x","server_id":"NX","headers":true}\r\n')
        ops_until_pong(leaf)
        pub = client_of(hub)
        seen = []
        for lines, pubs in random_interest_rounds(seed, 40, b"LS+ ", b"LS- "):
            leaf.send(lines)
            assert ops_until_pong(leaf) == []
            pub.send(pubs)
            t_ping_pong(pub)
            seen.append(ops_until_pong(leaf))
        got[kind] = seen
    assert any(got["gnatsd"]), "no message reached the leaf"
    for r, (mine, theirs) in enumerate(zip(got["gnatsd"], got[go])):
        assert mine == theirs, r


def test_a_loop_of_leaves_without_cluster_names_is_detected(nodes, tmp_path):
    """A hub; B dials A; C dials B and A: the loop detection subjects
    travel on, and a server that sees its own refuses the connection (a
    publish once went round 12,000 times in 2 s when they did not)."""
    a = start_hub(nodes, "gnatsd", tmp_path, name="a")
    b = start_node(nodes, "gnatsd", tmp_path, "b", 'leafnodes {\n  host: "127.0.0.1"\n'
                   '  port: -1\n  remotes = [ { url: "%s" } ]\n}\n' % leaf_url(a))
    start_node(nodes, "gnatsd", tmp_path, "c", 'leafnodes {\n  remotes = [ { url: "%s" }, '
               '{ url: "%s" } ]\n}\n' % (leaf_url(b), leaf_url(a)))
    deadline = time.monotonic() + 10
    while not any(b"Loop detected for leafnode" in bytes(n.log) for n in nodes):
        assert time.monotonic() < deadline, "no loop detected"
        time.sleep(0.05)


# -- 11. a leaf dialing a hub's websocket port -------------------------------------------------


@pytest.mark.parametrize("hub_kind", ["go2.15", "go2.9"])
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_gnatsd_leaf_dials_a_hubs_websocket_port(hub_kind, scheme, nodes, tmp_path):
    """A remote `ws://` (or `wss://`, TLS first) URL: the leaf asks the
    hub's websocket port to upgrade on /leafnode (without masking, which
    Go hubs accept), then speaks the leafnode protocol in frames; messages
    cross both ways."""
    tls = "no_tls: true" if scheme == "ws" else 'tls { cert_file: "%s", key_file: "%s" }' % (
        os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem"))
    hub = start_hub(nodes, hub_kind, tmp_path,
                    top='websocket {\n  listen: "127.0.0.1:-1"\n  %s\n}\n' % tls)
    ws_port = int(hub.wait_for_log(rb"Listening for websocket clients on wss?://\S+:(\d+)", 5)
                  .group(1))
    remote = "" if scheme == "ws" else 'tls { ca_file: "%s" }' % os.path.join(CERTS, "ca.pem")
    leaf = start_leaf(nodes, "gnatsd", tmp_path, "%s://127.0.0.1:%d" % (scheme, ws_port),
                      remote)
    wait_leafs(hub)
    wait_leafs(leaf)
    leaf.wait_for_log(rb" - lid_ws:\d+ - Leafnode connection created for account")
    run(messages_cross_both_ways(hub, leaf))


@pytest.mark.parametrize("leaf_kind", ["gnatsd", "go2.15", "go2.9"])
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_leaf_dials_a_gnatsd_hub_s_websocket_port(leaf_kind, scheme, nodes, tmp_path):
    """The hub's side of the above: an upgrade on the path /leafnode makes
    a leaf connection, not a client (Go's wsUpgrade); it gets the leaf
    INFO in a frame, logs as `lid_ws:N`, and messages cross both ways."""
    tls = "no_tls: true" if scheme == "ws" else 'tls { cert_file: "%s", key_file: "%s" }' % (
        os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem"))
    hub = start_hub(nodes, "gnatsd", tmp_path,
                    top='websocket {\n  listen: "127.0.0.1:-1"\n  %s\n}\n' % tls)
    ws_port = int(hub.wait_for_log(rb"Listening for websocket clients on wss?://\S+:(\d+)", 5)
                  .group(1))
    remote = "" if scheme == "ws" else 'tls { ca_file: "%s" }' % os.path.join(CERTS, "ca.pem")
    leaf = start_leaf(nodes, leaf_kind, tmp_path, "%s://127.0.0.1:%d" % (scheme, ws_port),
                      remote)
    wait_leafs(hub)
    wait_leafs(leaf)
    hub.wait_for_log(rb"127\.0\.0\.1:\d+ - lid_ws:\d+ - Leafnode connection created")
    assert b" - wid:" not in hub.log
    run(messages_cross_both_ways(hub, leaf))


@pytest.mark.parametrize("hub_kind", ["gnatsd", "go2.15"])
def test_a_websocket_leaf_s_log_prefix_names_its_x_forwarded_for(hub_kind, nodes, tmp_path):
    """An upgrade on /leafnode behind a proxy: the leaf's log prefix names
    the X-Forwarded-For address first, as a websocket client's does."""
    from test_websocket import handshake_request
    hub = start_hub(nodes, hub_kind, tmp_path,
                    top='websocket {\n  listen: "127.0.0.1:-1"\n  no_tls: true\n}\n')
    ws_port = int(hub.wait_for_log(rb"Listening for websocket clients on ws://\S+:(\d+)", 5)
                  .group(1))
    c = RawConn("127.0.0.1", ws_port)
    c.send(handshake_request(ws_port, target="/leafnode",
                             headers={"X-Forwarded-For": "10.1.2.3"}))
    c.expect(rb"HTTP/1\.1 101 ")
    hub.wait_for_log(rb"\] 10\.1\.2\.3/127\.0\.0\.1:%d - lid_ws:\d+ - Leafnode connection "
                     rb"created" % c.sock.getsockname()[1])
    c.close()


@pytest.mark.parametrize("leaf_kind", ["gnatsd", "go2.15"])
def test_a_wss_leaf_whose_handshake_fails_logs_its_close(leaf_kind, nodes, tmp_path):
    """A leaf dialing a hub's wss:// port with a CA that does not sign the
    hub's certificate: the handshake fails and the close is logged."""
    tls = 'tls { cert_file: "%s", key_file: "%s" }' % (
        os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem"))
    hub = start_hub(nodes, "gnatsd", tmp_path,
                    top='websocket {\n  listen: "127.0.0.1:-1"\n  %s\n}\n' % tls)
    ws_port = int(hub.wait_for_log(rb"Listening for websocket clients on wss://\S+:(\d+)", 5)
                  .group(1))
    leaf = start_leaf(nodes, leaf_kind, tmp_path, "wss://127.0.0.1:%d" % ws_port,
                      'tls { ca_file: "%s" }' % os.path.join(CERTS, "rogue-cert.pem"))
    leaf.wait_for_log(rb"Leafnode connection closed: TLS Handshake Failure", 10)


@pytest.mark.parametrize("hub_kind", ["gnatsd", "go2.15"])
def test_a_websocket_port_without_leafnodes_refuses_a_leaf(hub_kind, nodes, tmp_path):
    """No leafnodes block: the upgrade is answered, then Go logs that it
    does not take leaf nodes and closes; no client is made of it."""
    hub = start_node(nodes, hub_kind, tmp_path, "hub",
                     'websocket {\n  listen: "127.0.0.1:-1"\n  no_tls: true\n}\n')
    ws_port = int(hub.wait_for_log(rb"Listening for websocket clients on ws://\S+:(\d+)", 5)
                  .group(1))
    start_leaf(nodes, "go2.15", tmp_path, "ws://127.0.0.1:%d" % ws_port)
    hub.wait_for_log(rb"\[ERR\] Not configured to accept leaf node connections", 10)
    with urllib.request.urlopen("http://127.0.0.1:%d/varz" % hub.mon_port, timeout=5) as r:
        assert json.load(r)["total_connections"] == 0


def test_a_websocket_leaf_masks_its_frames_when_the_hub_asks_for_it():
    """A hub that does not echo Nats-No-Masking gets masked frames: the
    mask bit, a 4-byte key, the payload XOR the key (RFC 6455 5.3)."""
    from conftest import import_gnatsd
    g = import_gnatsd()
    ws = g.WSSession()
    ws.mask_writes = True

    class Leaf:
        pass
    leaf = Leaf()
    leaf.ws = ws
    data = b"CONNECT {}\r\nLS+ foo\r\n" * 10
    header, masked = g.WSConnection.ws_frames(leaf, [data])
    assert header[0] == 0x82 and header[1] & 0x80 and header[1] & 0x7F == 126
    key = header[4:8]
    assert len(header) == 8 and bytes(b ^ key[i % 4] for i, b in enumerate(masked)) == data
