"""Red team: attacks on the server, each refused as Go 2.15 refuses it, and
a canary that keeps its round trips while the attack runs (issue 20).

Every attack is bounded (a few seconds, loopback only) and runs against
gnatsd.py and the Go servers side by side (the `start`/`kind` fixtures).
Where an attack is about fairness, a canary client measures its PING round
trips on a thread while the attack runs; gnatsd.py must keep its p99 under
CANARY_P99 (300 ms), the promise in the README's "What the server promises
under faults".  `make redteam` runs this module alone and prints each
canary's p50/p99 for both servers (`-s`), so the 10x-of-Go comparison can be
read off one run.

Facts from Go 2.15.1 (2.9.10 agrees unless said otherwise):

* An accepted route connection must send CONNECT before anything else: any
  other first byte of an op (RS+, RMSG, INFO, PING) gets
  `-ERR 'Authorization Violation'` and the connection is closed, with or
  without cluster authorization; Go logs `authentication error` and
  `Router connection closed: Authentication Failure`.  The subscriber on
  that server never sees an injected RMSG and the stranger never sees a
  client's publish.  Go 2.9 refuses so only with cluster authorization;
  without it, 2.9 serves a stranger's RS+ (the hole 2.15 closed).
* Subscribe deny `"sub.q qdeny"` refuses `SUB sub.q qdeny`, and a
  `SUB sub.* qdeny` (allowed: another subject) gets no `sub.q` message;
  `sub.*` in another queue, or with no queue, gets them all.  Go 2.9
  delivers them to the wildcard queue subscription.
* 100 connections trickling 1 MB payloads a byte per TCP segment (1 MB in
  flight in all): Go's RSS grows 2-5 MB, gnatsd.py's 1-2 MB (it kept a
  bytes object per read before: +58 MB).
* Under the fairness attacks (two unique-subject PUB floods, wildcard
  SUB/UNSUB churn against a full match cache, four threads of wrong
  passwords against a cost-11 bcrypt user) Go 2.15's canary p99 is 4-70 ms
  here; gnatsd.py's 3-15 ms.  Four threads requesting every subscription
  and every connection (1,000 connections, 100,000 subscriptions): Go 2.15
  p99 ~80-100 ms, gnatsd.py ~60 ms.
* 3,000 monitor connections that send half a request: Go 2.15 closes them
  all after 5 s (ReadHeaderTimeout); Go 2.9 never does.
"""
from __future__ import annotations

import os
import resource
import socket
import threading
import time
import types
import urllib.request

import pytest

from conftest import (GO_SERVERS, MONITOR_LISTEN_RE, ROUTE_LISTEN_RE, RawConn, bcrypt_hash, rss, t_expect,
                      t_expect_exact, t_ping_pong, t_read_until_closed, write_conf)
from test_leafnodes import LEAF_LISTEN_RE

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'

# The canary's p99 PING round trip that gnatsd.py must keep under an attack (s).
CANARY_P99 = 0.300

# `make redteam`: also hold gnatsd.py's p99 within 10x of Go 2.15's.
COMPARE = os.environ.get("REDTEAM_COMPARE") == "1"


class PingCanary(threading.Thread):
    """PING/PONG round trips on a connection of its own, every 10 ms, until
    stopped; `p50` and `p99` of the round trips (s)."""

    def __init__(self, server, connect: bytes = QUIET):
        super().__init__(daemon=True)
        self.conn = RawConn(server.host, server.port, timeout=10)
        self.conn.read_info()
        self.conn.send(connect)
        t_ping_pong(self.conn)
        self.rtts: list = []
        self.error = None
        self.stop_flag = False

    def run(self):
        try:
            while not self.stop_flag:
                t0 = time.monotonic()
                t_ping_pong(self.conn)
                self.rtts.append(time.monotonic() - t0)
                time.sleep(0.01)
        except BaseException as exc:  # reported by stop()
            self.error = repr(exc)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.rtts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def stop(self, label: str = "") -> tuple:
        """Stop; the canary never failed.  Returns (p50, p99) and prints them."""
        self.stop_flag = True
        self.join(20)
        self.conn.close()
        assert self.error is None, "canary failed after %d rounds: %s" % (len(self.rtts),
                                                                          self.error)
        assert self.rtts, "the canary made no round trip"
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        print("canary %-28s %5d rounds  p50 %7.1f ms  p99 %7.1f ms" % (
            label, len(self.rtts), p50 * 1000, p99 * 1000))
        return p50, p99


# -- 1. routes: nothing before CONNECT -----------------------------------------------


ROUTE_AUTH = "cluster { listen: 127.0.0.1:-1\n  authorization { user: ruser, password: rpass } }\n"
ROUTE_OPEN = "cluster { listen: 127.0.0.1:-1 }\n"


@pytest.mark.parametrize("conf", [ROUTE_AUTH, ROUTE_OPEN], ids=["route-auth", "no-route-auth"])
@pytest.mark.parametrize("first", [b"RS+ $G >\r\n", b"RMSG $G inject 8\r\ninjected\r\n",
                                   b"INFO {}\r\n", b"PING\r\n", b"RS"],
                         ids=["RS+", "RMSG", "INFO", "PING", "partial"])
def test_a_route_that_skips_connect_is_refused_and_sees_nothing(start, tmp_path, raw_factory,
                                                                 conf, first, kind):
    if kind == "go2.9" and conf == ROUTE_OPEN:
        pytest.skip("Go 2.9 serves a route that skips CONNECT when the cluster has no auth")
    srv = start("-c", write_conf(tmp_path, conf))
    route_port = int(srv.wait_for_log(ROUTE_LISTEN_RE).group(2))
    sub = raw_factory(srv)
    sub.send(b"SUB inject 1\r\nSUB secret.data 2\r\n")
    t_ping_pong(sub)
    stranger = RawConn("127.0.0.1", route_port)
    stranger.send(first)
    # A client publishes while the stranger is (or was) connected.
    sub.send(b"PUB secret.data 6\r\nhello!\r\n")
    got = t_read_until_closed(stranger)
    assert got.endswith(b"-ERR 'Authorization Violation'\r\n"), got
    assert b"secret" not in got
    sub.send(b"PING\r\n")
    got = sub.read_all(0.3)
    assert b"MSG inject" not in got
    assert got.count(b"MSG secret.data 2 6\r\nhello!\r\n") == 1
    srv.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:\d+ - rid:\d+ - authentication error\n")
    srv.wait_for_log(rb"\[INF\] 127\.0\.0\.1:\d+ - rid:\d+ - Router connection closed:"
                     rb" Authentication Failure")


def test_a_route_whose_connect_passes_may_then_send_interest(start, tmp_path):
    """The rule refuses only what comes before CONNECT: a peer that sends a
    good CONNECT first is served (its INFO comes back)."""
    srv = start("-c", write_conf(tmp_path, ROUTE_AUTH))
    route_port = int(srv.wait_for_log(ROUTE_LISTEN_RE).group(2))
    peer = RawConn("127.0.0.1", route_port)
    peer.send(b'CONNECT {"user":"ruser","pass":"rpass","name":"NPEER","cluster":""}\r\n'
              b"PING\r\n")
    deadline = time.monotonic() + 5
    while b"PONG\r\n" not in peer.buf and peer._fill(deadline):
        pass
    assert b"INFO {" in peer.buf and b"PONG\r\n" in peer.buf, bytes(peer.buf)
    assert b"-ERR" not in peer.buf


# -- 7. a denied queue group, reached through a wildcard -----------------------------


QUEUE_DENY = """
authorization { users = [
  { user: sub, password: s, permissions: { subscribe: { deny: ["sub.q qdeny"] } } }
  { user: pub, password: p }
] }
"""


def test_a_queue_group_denied_on_a_subject_gets_nothing_through_a_wildcard(start, tmp_path,
                                                                           raw_factory, kind):
    """Deny "sub.q qdeny": `SUB sub.* qdeny` is allowed (it is not that
    subject), but no `sub.q` message reaches it; other queues and other
    subjects still get theirs (Go 2.15's delivery-time checkDenySub)."""
    if kind == "go2.9":
        pytest.skip("Go 2.9 delivers denied queue subjects through a wildcard (2.15 does not)")
    srv = start("-c", write_conf(tmp_path, QUEUE_DENY))
    sub = raw_factory(srv, connect=b'CONNECT {"verbose":false,"pedantic":false,'
                                   b'"user":"sub","pass":"s"}\r\n')
    sub.send(b"SUB sub.* qdeny 1\r\nSUB sub.* other 2\r\nSUB sub.* 3\r\n")
    t_ping_pong(sub)
    pub = raw_factory(srv, connect=b'CONNECT {"verbose":false,"pedantic":false,'
                                   b'"user":"pub","pass":"p"}\r\n')
    pub.send(b"PUB sub.q 2\r\nhi\r\n" * 10 + b"PUB sub.r 2\r\nok\r\n" + b"PING\r\n")
    t_expect_exact(pub, b"PONG\r\n")
    sub.send(b"PING\r\n")
    got = t_expect(sub, rb"(.*?)PONG\r\n").group(1)
    assert b"MSG sub.q 1 " not in got, got
    assert got.count(b"MSG sub.q 2 2\r\nhi\r\n") == 10
    assert got.count(b"MSG sub.q 3 2\r\nhi\r\n") == 10
    assert got.count(b"MSG sub.r 1 2\r\nok\r\n") == 1
    # The literal queue subscription is refused at SUB time, as before.
    sub.send(b"SUB sub.q qdeny 4\r\n")
    sub.expect(rb"-ERR 'Permissions Violation for Subscription to \"sub\.q\" using queue"
               rb" \"qdeny\"'\r\n")


# -- the fairness attacks: a canary measures the loop while they run -------------------


ATTACK_SECONDS = 3.0


class Flood(threading.Thread):
    """Sends `chunks` over and over on a connection of its own (the server
    reads as fast as it likes: sendall blocks when it does not) until
    stopped or ATTACK_SECONDS have passed."""

    def __init__(self, server, chunks: list, connect: bytes = QUIET):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.sock.sendall(connect)
        self.chunks = chunks
        self.sent = 0
        self.stop_flag = False

    def run(self):
        deadline = time.monotonic() + ATTACK_SECONDS
        try:
            while not self.stop_flag and time.monotonic() < deadline:
                for chunk in self.chunks:
                    self.sock.sendall(chunk)
                    self.sent += len(chunk)
        except OSError:
            pass

    def finish(self):
        self.join(ATTACK_SECONDS + 15)
        self.stop_flag = True
        self.sock.close()


def unique_pubs(prefix: bytes, count: int, per_chunk: int = 20000) -> list:
    """PUB lines with `count` distinct subjects (empty payloads), in chunks."""
    chunks = []
    for base in range(0, count, per_chunk):
        chunks.append(b"".join(b"PUB %s.%d 0\r\n\r\n" % (prefix, k)
                               for k in range(base, min(count, base + per_chunk))))
    return chunks


def under_attack(server_factory, label: str, attack, args=(), setup=None,
                 canary_connect: bytes = QUIET) -> dict:
    """Run `attack(server)` against gnatsd.py, then Go 2.15 when installed,
    each on a fresh server with a canary measuring the loop; returns
    {kind: (p50, p99)}.  gnatsd.py's p99 must stay under CANARY_P99 and,
    under `make redteam` (REDTEAM_COMPARE=1, one test at a time, so the two
    servers see the same machine), within 10x of Go's."""
    results = {}
    for kind in ("gnatsd", "go2.15"):
        if kind != "gnatsd" and "2.15" not in GO_SERVERS:
            continue
        if kind == "gnatsd":
            srv = server_factory("gnatsd", *args)
        else:
            srv = server_factory("go", *args, version="2.15")
        if setup is not None:
            setup(srv)
        c = PingCanary(srv, canary_connect)
        c.start()
        time.sleep(0.2)
        try:
            attack(srv)
        finally:
            results[kind] = c.stop("%s %s" % (kind, label))
            srv.stop()
    p99 = results["gnatsd"][1]
    assert p99 < CANARY_P99, "canary p99 %.0f ms during %s" % (p99 * 1000, label)
    if COMPARE and "go2.15" in results:
        assert p99 <= 10 * results["go2.15"][1], (
            "canary p99 %.1f ms, Go 2.15's %.1f ms, during %s" % (
                p99 * 1000, results["go2.15"][1] * 1000, label))
    return results


def flood(srv, chunks_per_conn: list, connect: bytes = QUIET, min_sent: int = 1000000):
    """One Flood per list of chunks, all at once, for ATTACK_SECONDS."""
    floods = [Flood(srv, chunks, connect) for chunks in chunks_per_conn]
    for f in floods:
        f.start()
    for f in floods:
        f.finish()
    assert all(f.sent >= min_sent for f in floods), [f.sent for f in floods]


def test_a_unique_subject_pub_flood_does_not_starve_others(server_factory):
    """Two publishers, no subscribers, every subject different: the server
    parses each connection's input a slice per turn (MAX_INPUT_SLICE bytes
    or MAX_INPUT_TIME of slow ops), so the canary waits for a slice, not
    for a whole 1 MB read."""
    chunks = [unique_pubs(b"flood%d" % k, 400000) for k in range(2)]
    under_attack(server_factory, "unique-subject PUB flood", lambda srv: flood(srv, chunks))


LEAF_HUB = "leafnodes { listen: 127.0.0.1:-1 }\n"


def test_a_leaf_flood_does_not_starve_others(server_factory, tmp_path):
    """A leaf connection (no leaf authorization on the hub) sending LMSGs
    on ever new subjects as fast as it can: its input is parsed a slice
    per turn as a client's is, so the hub's other clients wait for a
    slice, not for a whole 1 MB read."""
    chunks = [b"".join(b"LMSG leaf.%d.%d 0\r\n\r\n" % (base, k) for k in range(20000))
              for base in range(20)]

    def attack(srv):
        port = int(srv.wait_for_log(LEAF_LISTEN_RE, 5).group(2))
        leaf = Flood(types.SimpleNamespace(host=srv.host, port=port), chunks,
                     b'CONNECT {"server_id":"NLEAFFLOOD","name":"flood","headers":true}\r\n')
        leaf.start()
        leaf.finish()
        assert leaf.sent >= 1000000, leaf.sent
    under_attack(server_factory, "leaf LMSG flood", attack,
                 args=("-c", write_conf(tmp_path, LEAF_HUB)))


def fill_match_cache(subjects: list):
    """setup: publish once to each subject, so the match cache is full."""
    def setup(srv):
        conn = RawConn(srv.host, srv.port)
        conn.read_info()
        conn.send(QUIET + b"".join(b"PUB %s 0\r\n\r\n" % s for s in subjects))
        t_ping_pong(conn)
        conn.close()
    return setup


def sub_unsub_pairs(pattern: bytes, count: int = 20000) -> list:
    return [b"".join(b"SUB %s %d\r\nUNSUB %d\r\n" % (pattern, k, k) for k in range(count))]


@pytest.mark.parametrize("pattern,cached", [
    (b"w.*", [b"cache.%d" % k for k in range(1100)]),
    (b"*.nomatch", [b"s%d.cache" % k for k in range(1100)]),
], ids=["w.*", "*.nomatch"])
def test_wildcard_sub_unsub_churn_against_a_full_match_cache(server_factory, pattern, cached):
    """Each wildcard SUB or UNSUB must drop the cached results it matches;
    finding them walks the cache's own token trie (none match here), so
    the cost does not grow with the ~1,000 cached subjects."""
    under_attack(server_factory, "SUB/UNSUB %s churn" % pattern.decode(),
                 lambda srv: flood(srv, [sub_unsub_pairs(pattern)], min_sent=500000),
                 setup=fill_match_cache(cached))


def in_threads(attempt, threads: int, what: str) -> None:
    """`attempt(k, n)` over and over on `threads` threads for ATTACK_SECONDS
    (k: the thread, n: its attempts so far); each thread must finish one at
    least (an attempt that fails an assertion ends its thread)."""
    done = [0] * threads
    deadline = time.monotonic() + ATTACK_SECONDS

    def attacker(k):
        while time.monotonic() < deadline:
            attempt(k, done[k])
            done[k] += 1

    workers = [threading.Thread(target=attacker, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(ATTACK_SECONDS + 120)
    print("%s per thread: %s" % (what, done))
    assert all(done), done


def wrong_password_logins(srv, user: str, threads: int = 4) -> None:
    """`threads` clients log in with a wrong password over and over for
    ATTACK_SECONDS; each is refused."""
    def attempt(k, _n):
        conn = RawConn(srv.host, srv.port, timeout=20)
        conn.read_info()
        conn.send(b'CONNECT {"verbose":false,"user":"%s","pass":"wrong%d"}\r\nPING\r\n'
                  % (user.encode(), k))
        got = t_read_until_closed(conn, timeout=20)
        assert got == b"-ERR 'Authorization Violation'\r\n", got
        conn.close()

    in_threads(attempt, threads, "refused logins")


def test_wrong_password_logins_against_a_bcrypt_user_do_not_block_others(server_factory,
                                                                         tmp_path):
    """Four threads of wrong passwords against a cost-11 bcrypt user: each
    check runs in a helper process, so the canary (a user with a plain
    password) keeps its round trips; the bcrypt user still logs in."""
    hashed = bcrypt_hash("s3cr3t", 11)
    if hashed is None:
        pytest.skip("no bcrypt here to make a hash with")
    conf = write_conf(tmp_path, 'authorization { timeout: 20, users = [\n'
                                '  { user: slow, password: "%s" }\n'
                                '  { user: canary, password: plain }\n] }\n' % hashed)
    login = b'CONNECT {"verbose":false,"pedantic":false,"user":"canary","pass":"plain"}\r\n'

    def attack(srv):
        wrong_password_logins(srv, "slow")
        good = RawConn(srv.host, srv.port, timeout=20)
        good.read_info()
        good.send(b'CONNECT {"verbose":false,"user":"slow","pass":"s3cr3t"}\r\n'
                  b'SUB after 1\r\nPUB after 2\r\nok\r\nPING\r\n')
        t_expect_exact(good, b"MSG after 1 2\r\nok\r\nPONG\r\n", timeout=20)
        good.close()

    under_attack(server_factory, "bcrypt wrong passwords", attack, args=("-c", conf),
                 canary_connect=login)


# -- 6. payloads trickled a byte at a time ----------------------------------------------


def test_payloads_trickled_a_byte_per_segment_cost_their_bytes(start, kind):
    """100 connections each declare a 1 MB payload and send it a byte per
    TCP segment: the server holds what it was sent, not an object per read
    (RSS grows by at most 4x the bytes in flight + 20 MB)."""
    srv = start()
    conns = []
    for _ in range(100):
        sock = socket.create_connection((srv.host, srv.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(QUIET + b"PUB t 1048576\r\n")
        conns.append(sock)
    probe = RawConn(srv.host, srv.port)
    probe.read_info()
    probe.send(QUIET)
    t_ping_pong(probe)
    before = rss(srv.pid)
    rounds = 10000
    for _ in range(rounds):
        for sock in conns:
            sock.send(b"x")
    t_ping_pong(probe)      # the server has kept up with the sends
    grown = rss(srv.pid) - before
    in_flight = rounds * len(conns)
    print("%s: %d bytes in flight, RSS grew %.1f MB" % (kind, in_flight, grown / 1e6))
    assert grown <= 4 * in_flight + 20 * 1024 * 1024, grown
    for sock in conns:
        sock.close()


# -- 5. heavy monitor requests ------------------------------------------------------------


def hold_subscribed_connections(conns: int, subs_each: int):
    """setup: `conns` connections with `subs_each` subscriptions each (kept
    open on the server object until it stops)."""
    def setup(srv):
        srv.mon_port = int(srv.wait_for_log(MONITOR_LISTEN_RE).group(2))
        srv.held = []
        for c in range(conns):
            sock = socket.create_connection((srv.host, srv.port), timeout=20)
            sock.sendall(QUIET + b"".join(b"SUB m.%d.%d %d\r\n" % (c, k, k)
                                          for k in range(subs_each)) + b"PING\r\n")
            srv.held.append(sock)
        for sock in srv.held:
            got = b""
            while not got.endswith(b"PONG\r\n"):
                chunk = sock.recv(4096)
                assert chunk, "a held connection was closed"
                got += chunk
    return setup


def heavy_monitor_requests(srv, threads: int = 4) -> None:
    """`threads` clients GET whole-server /subsz and /connz pages (no limit
    to speak of) over and over for ATTACK_SECONDS."""
    paths = ["/subsz?subs=1&limit=100000000", "/connz?subs=detail&limit=100000000"]

    def attempt(k, n):
        url = "http://127.0.0.1:%d%s" % (srv.mon_port, paths[(k + n) % 2])
        with urllib.request.urlopen(url, timeout=60) as resp:
            body = resp.read()
        assert body.startswith(b"{") and len(body) > 1000000, body[:200]

    in_threads(attempt, threads, "monitor answers")


def test_heavy_monitor_requests_do_not_stall_the_loop(server_factory):
    """1,000 connections holding 100,000 subscriptions; four threads asking
    for every subscription and every connection's detail at once.  The loop
    takes each snapshot a slice per turn, and at most MONITOR_HEAVY such
    requests are built at once."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 3000:
        pytest.skip("RLIMIT_NOFILE too low for 1,000 held connections")
    under_attack(server_factory, "heavy /subsz and /connz", heavy_monitor_requests,
                 args=("-m", "-1"), setup=hold_subscribed_connections(1000, 100))


# -- 8. monitor connections that never finish their request ----------------------------


def threads_of(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def test_partial_monitor_requests_are_closed_and_threads_come_back(start, kind):
    """3,000 connections each send half a request to the monitor port and
    wait: every one is closed within 30 s (the read timeout, or at once
    past MONITOR_MAX_CONNECTIONS), the server's threads stay bounded and
    return to their number before, and the canary client keeps going."""
    import selectors
    if kind == "go2.9":
        pytest.skip("Go 2.9's monitor has no read timeout: the connections stay open")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 8000:
        pytest.skip("RLIMIT_NOFILE too low for 3,000 monitor connections")
    srv = start("-m", "-1")
    mon_port = int(srv.wait_for_log(MONITOR_LISTEN_RE).group(2))
    url = "http://127.0.0.1:%d/varz" % mon_port
    urllib.request.urlopen(url, timeout=10).read()
    threads_before = threads_of(srv.pid)
    c = PingCanary(srv)
    c.start()
    sel = selectors.DefaultSelector()
    socks = []
    most_threads = 0
    for k in range(3000):
        sock = socket.create_connection(("127.0.0.1", mon_port), timeout=10)
        sock.sendall(b"GET /varz HTTP/1.1\r\nHost: x\r\n")   # and never the blank line
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        socks.append(sock)
        if k % 500 == 0:
            most_threads = max(most_threads, threads_of(srv.pid))
    started = time.monotonic()
    open_count = len(socks)
    while open_count and time.monotonic() - started < 30:
        for key, _ in sel.select(1.0):
            try:
                data = key.fileobj.recv(4096)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                open_count -= 1
        most_threads = max(most_threads, threads_of(srv.pid))
    took = time.monotonic() - started
    for sock in socks:
        sock.close()
    print("%s: %d of 3000 still open after %.1f s; threads %d before, %d at most" % (
        kind, open_count, took, threads_before, most_threads))
    assert open_count == 0
    c.stop("%s partial monitor requests" % kind)
    # The monitor still answers, and (gnatsd.py) its threads came back.
    urllib.request.urlopen(url, timeout=10).read()
    if kind == "gnatsd":
        assert most_threads <= threads_before + 256 + 8, most_threads
        deadline = time.monotonic() + 10
        while threads_of(srv.pid) > threads_before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert threads_of(srv.pid) <= threads_before + 2, (threads_before, threads_of(srv.pid))
