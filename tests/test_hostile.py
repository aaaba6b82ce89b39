"""Hostile clients: each gets Go's answer, and a canary client never notices.

Every test runs a canary: a connection of its own that publishes to itself
and waits for the message, over and over, on a thread, while the test abuses
the server with another connection.  The canary must keep round-tripping
with a bounded latency (CANARY_LIMIT) and never be disconnected.  Each
transcript runs against gnatsd.py and the Go servers (the `start` fixture);
where Go answers differently that is written down below.

Facts from Go 2.9.10 and 2.15.1 (both agree unless said otherwise):

* A control line that never ends: an unknown op is refused on its first
  byte (`-ERR 'Unknown Protocol Operation'`, closed); gnatsd.py refuses it
  once the line is longer than max_control_line (4096), holding no more.
  After a known op the argument is limited: `SUB ` followed by endless
  bytes gets `-ERR 'maximum control line exceeded'`.  After `PING` Go
  skips everything up to the newline and answers PONG; blanks after an op
  are skipped however many there are.
* A declared payload over max_payload with at most 9 digits
  (`PUB foo 999999999`) gets `-ERR 'Maximum Payload Violation'` and is
  closed before any payload is read.  A 1 GB declaration
  (`PUB foo 1000000000`, 10 digits) is past Go's parseSize (9 digits at
  most): "processPub Bad or Missing Size" is logged and the connection is
  closed without an -ERR.
* 5,000 SUBs in one write past `max_subscriptions: 100`: 4,900
  `-ERR 'maximum subscriptions exceeded'`, and the connection stays open.
* With authorization on, connections that never send CONNECT get
  `-ERR 'Authentication Timeout'` and are closed once the auth timeout
  passes (1 s here); the authorised canary is untouched.
* Connections that stall (a partial payload never finished, a subscriber
  that stops reading while its subject is flooded) hold no one else up.
* TLS clients that stall before their handshake is done (silent after
  INFO, halfway through the ClientHello record, or after the server's
  answer to a whole ClientHello) are closed once the tls block's timeout
  passes (1 s here); a TLS canary is untouched.
* A closed connection is freed at once (in-process check), not held by
  its ping timer until ping_interval passes.
* Monitor query parameters that do not parse get 400 with Go's strconv
  text (digits are ASCII only: `cid=²` and `limit=٣` are 400, not
  numbers); an out-of-range integer is "value out of range"; a query
  string over Go's 1 MB header limit gets 431 (100 KB is fine); unknown
  parameters are ignored (200).
"""
from __future__ import annotations

import gc
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import (MONITOR_LISTEN_RE, RawConn, import_gnatsd, rss, t_expect_exact,
                      t_ping_pong, t_read_until_closed, write_conf)

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
MB = 1024 * 1024

# The slowest round trip the canary may see while the server is abused (s).
CANARY_LIMIT = 1.0


class Canary(threading.Thread):
    """Publishes to itself and waits for each message, until stopped."""

    def __init__(self, server, connect: bytes = QUIET, conn: RawConn | None = None):
        super().__init__(daemon=True)
        if conn is None:                  # else: opened (and INFO read) by the caller
            conn = RawConn(server.host, server.port)
            conn.read_info()
        self.conn = conn
        self.conn.send(connect + b"SUB canary 1\r\n")
        t_ping_pong(self.conn)
        self.rounds = 0
        self.slowest = 0.0
        self.error = None
        self.stop_flag = False

    def run(self):
        try:
            while not self.stop_flag:
                t0 = time.monotonic()
                body = b"%d" % self.rounds
                self.conn.send(b"PUB canary %d\r\n%s\r\n" % (len(body), body))
                t_expect_exact(self.conn, b"MSG canary 1 %d\r\n%s\r\n" % (len(body), body),
                               timeout=10)
                self.slowest = max(self.slowest, time.monotonic() - t0)
                self.rounds += 1
                time.sleep(0.005)
        except BaseException as exc:  # reported by check()
            self.error = repr(exc)

    def check(self):
        """Stop; the canary kept going, fast, the whole time."""
        self.stop_flag = True
        self.join(15)
        assert self.error is None, "canary failed after %d rounds: %s" % (self.rounds, self.error)
        assert self.rounds > 0
        assert self.slowest < CANARY_LIMIT, "a canary round trip took %.3f s" % self.slowest
        self.conn.close()


@pytest.fixture
def canary_on():
    started = []

    def make(server, connect: bytes = QUIET, conn: RawConn | None = None) -> Canary:
        c = Canary(server, connect, conn)
        c.start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop_flag = True
        c.conn.close()


def send_until_closed(conn: RawConn, head: bytes, filler: bytes, total: int) -> None:
    """Send head, then filler up to `total` bytes, stopping when the server
    has closed the connection."""
    conn.send(head)
    chunk = filler * (65536 // len(filler))
    sent = 0
    try:
        while sent < total:
            conn.sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass


# -- control lines -----------------------------------------------------------------


def test_endless_unknown_op_is_refused(start, raw_factory, canary_on):
    srv = start()
    canary = canary_on(srv)
    c = raw_factory(srv, QUIET)
    send_until_closed(c, b"", b"A", 4 * MB)
    assert t_read_until_closed(c) == b"-ERR 'Unknown Protocol Operation'\r\n"
    canary.check()


def test_endless_argument_is_refused_as_max_control_line(start, raw_factory, canary_on):
    srv = start()
    canary = canary_on(srv)
    c = raw_factory(srv, QUIET)
    send_until_closed(c, b"SUB ", b"a", 4 * MB)
    assert t_read_until_closed(c) == b"-ERR 'maximum control line exceeded'\r\n"
    canary.check()


def test_endless_ping_line_and_blanks_are_skipped_in_bounded_memory(start, raw_factory,
                                                                    canary_on):
    srv = start()
    canary = canary_on(srv)
    c = raw_factory(srv, QUIET)
    t_ping_pong(c)
    before = rss(srv.pid)
    send_until_closed(c, b"PING", b"x", 16 * MB)
    c.send(b"\r\n")
    t_expect_exact(c, b"PONG\r\n", timeout=10)
    send_until_closed(c, b"SUB", b" ", 16 * MB)
    c.send(b"blank 7\r\nPUB blank 2\r\nok\r\n")
    t_expect_exact(c, b"MSG blank 7 2\r\nok\r\n", timeout=10)
    assert rss(srv.pid) - before < 8 * MB, "the server held the endless line"
    canary.check()


# -- payloads and subscriptions -----------------------------------------------------


def test_declared_payloads_over_max_payload_are_refused_before_reading(start, raw_factory,
                                                                       canary_on):
    srv = start()
    canary = canary_on(srv)
    c = raw_factory(srv, QUIET + b"PUB foo 999999999\r\n")
    assert t_read_until_closed(c) == b"-ERR 'Maximum Payload Violation'\r\n"
    c = raw_factory(srv, QUIET + b"SUB foo 1\r\nPUB foo 1000000000\r\n" + b"x" * 65536)
    assert t_read_until_closed(c) == b""        # 1 GB: a bad size to Go's parseSize
    canary.check()


def test_thousands_of_subs_past_max_subscriptions(start, raw_factory, tmp_path, canary_on):
    srv = start("-c", write_conf(tmp_path, "max_subscriptions: 100\n"))
    canary = canary_on(srv)
    c = raw_factory(srv, QUIET)
    c.send(b"".join(b"SUB many.%d %d\r\n" % (i, i) for i in range(5000)))
    c.send(b"PING\r\n")
    t_expect_exact(c, b"-ERR 'maximum subscriptions exceeded'\r\n" * 4899, timeout=20)
    t_expect_exact(c, b"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n", timeout=10)
    c.send(b"PUB many.99 1\r\nx\r\nPUB many.100 1\r\ny\r\n")
    t_expect_exact(c, b"MSG many.99 99 1\r\nx\r\n")
    t_ping_pong(c)
    canary.check()


# -- connections that never finish -----------------------------------------------------


def test_connections_that_never_send_connect_are_closed_at_auth_timeout(start, tmp_path,
                                                                        canary_on):
    srv = start("-c", write_conf(tmp_path, "authorization {\n  user: a\n  password: b\n"
                                            "  timeout: 1\n}\n"))
    canary = canary_on(srv, b'CONNECT {"verbose":false,"user":"a","pass":"b"}\r\n')
    silent = []
    for _ in range(200):
        c = RawConn(srv.host, srv.port, timeout=10)
        silent.append(c)
    t0 = time.monotonic()
    try:
        for c in silent:
            c.read_info()
            assert c.read_until_closed(10) == b"-ERR 'Authentication Timeout'\r\n"
        assert time.monotonic() - t0 < 5
    finally:
        for c in silent:
            c.close()
    canary.check()


def test_stalled_connections_do_not_hold_up_others(start, raw_factory, canary_on):
    """100 clients stop halfway through a payload; one subscriber stops
    reading while 4 MB are published on its subject: the canary goes on."""
    srv = start()
    canary = canary_on(srv)
    for _ in range(100):
        raw_factory(srv, QUIET + b"PUB half 100\r\nonly a part")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.settimeout(5)
    stuck.connect((srv.host, srv.port))
    stuck.sendall(QUIET + b"SUB bulk 1\r\nPING\r\n")
    seen = b""
    while b"PONG\r\n" not in seen:
        seen += stuck.recv(4096)
    pub = raw_factory(srv, QUIET)
    body = b"x" * 1024
    for _ in range(4):
        pub.send(b"PUB bulk 1024\r\n%s\r\n" % body * 1024)
        t_ping_pong(pub)
    canary.check()
    stuck.close()


# Each way a TLS client can stall before its handshake is done.
CERTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "certs")


def tls_client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))


def stall_silent(sock: socket.socket) -> None:
    """Reads INFO, never starts the handshake."""


def stall_in_record_header(sock: socket.socket) -> None:
    """Sends the first bytes of a ClientHello record, then nothing."""
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00")


def stall_after_server_hello(sock: socket.socket) -> None:
    """Sends a whole ClientHello, reads the server's answer, never finishes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(outgoing.read())
    sock.settimeout(5)
    first = sock.recv(4096)
    assert first[:1] == b"\x16", "no ServerHello: %r" % first[:40]


STALLS = [stall_silent, stall_in_record_header, stall_after_server_hello]


def test_tls_clients_stalled_mid_handshake_are_closed_at_the_tls_timeout(start, tmp_path,
                                                                          canary_on):
    """120 TLS clients stall at three points of the handshake: each is
    closed once the tls timeout (1 s here) passes, and a TLS canary goes on
    at full rate meanwhile."""
    conf = write_conf(tmp_path, 'tls {\n  cert_file: "%s"\n  key_file: "%s"\n  timeout: 1\n}\n' % (
        os.path.join(CERTS, "server-cert.pem"), os.path.join(CERTS, "server-key.pem")))
    srv = start("-c", conf)
    conn = RawConn(srv.host, srv.port)
    conn.read_info()
    conn.sock = tls_client_context().wrap_socket(conn.sock, server_hostname="localhost")
    canary = canary_on(srv, conn=conn)
    stalled = []
    for i in range(120):
        raw = RawConn(srv.host, srv.port)
        raw.read_info()
        STALLS[i % len(STALLS)](raw.sock)
        stalled.append((raw, STALLS[i % len(STALLS)].__name__, time.monotonic()))
    for raw, how, began in stalled:
        left = began + 4.0 - time.monotonic()
        assert left > 0 and wait_gone(raw.sock, left), \
            "%s: still open %.1f s after it stalled" % (how, time.monotonic() - began)
        raw.sock.close()
    canary.check()


def wait_gone(sock: socket.socket, timeout: float) -> bool:
    """True once the peer closes `sock` (whatever it sent before that)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True


# -- connection floods ---------------------------------------------------------------------


def churn(server, n: int, ops: bytes) -> None:
    """`n` clients of the in-process `server`, one after another, each
    reading INFO, sending `ops` and reading the answer, then leaving; wait
    until the server has dropped them all."""
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.recv(4096)
            s.sendall(ops)
            s.recv(4096)
    deadline = time.monotonic() + 5
    while server.clients and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server.clients


def test_closed_connections_are_freed_at_once_not_when_their_ping_timer_fires():
    """In-process: 200 clients come and go; none of them is still alive once
    the server has dropped them (a ping timer holding each closed client
    for ping_interval made a connection flood cost 1.5 KB per connection
    for two minutes; tests/soak.py found it)."""
    g = import_gnatsd()
    server = g.Server(g.Options(host="127.0.0.1", port=-1))
    server.start()
    try:
        churn(server, 200, QUIET + b"SUB a 1\r\nPING\r\n")
        gc.collect()
        alive = sum(isinstance(o, g.Client) for o in gc.get_objects())
        assert alive < 5, "%d closed clients are still alive" % alive
    finally:
        server.shutdown()


def test_the_ping_timers_of_closed_clients_leave_the_timer_heap():
    """In-process: 1,500 clients come and go.  Each close cancels its ping
    timer (ping_interval, 2 min, away); once cancelled entries are over
    half of the heap it sheds them, so the heap stays near 1,000 entries,
    not one per client churned in the last two minutes."""
    g = import_gnatsd()
    server = g.Server(g.Options(host="127.0.0.1", port=-1))
    server.start()
    try:
        churn(server, 1500, QUIET + b"PING\r\n")
        timers = list(server.timers)
        cancelled = sum(entry[2] is None for entry in timers)
        assert cancelled == server.timers_cancelled
        assert len(timers) < 1010, "%d timers for 1,500 closed clients" % len(timers)
    finally:
        server.shutdown()


# -- the monitor -------------------------------------------------------------------------


# (path and query, status) as Go 2.15 answers them.
MONITOR_CASES = [
    ("/connz?limit=abc", 400),
    ("/connz?limit=99999999999999999999999", 400),
    ("/connz?cid=99999999999999999999999", 400),
    ("/connz?offset=-5", 200),
    ("/connz?sort=bogus", 400),
    ("/connz?state=bogus", 400),
    ("/connz?auth=maybe", 400),
    ("/connz?cid=%C2%B2", 400),
    ("/connz?limit=%D9%A3", 400),
    ("/connz?limit=%00", 400),
    ("/subsz?subs=abc&test=a..b", 400),
    ("/varz?%zz=%", 200),
    ("/routez?subs=detail&" + "&".join("p%d=%d" % (i, i) for i in range(2000)), 200),
    ("/connz?" + "x" * 100000, 200),
    ("/connz?" + "x" * 2000000, 431),
]


def monitor_status(port: int, path: str):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_monitor_requests_with_huge_or_malformed_params(start, canary_on):
    srv = start("-m", "-1")
    port = int(srv.wait_for_log(MONITOR_LISTEN_RE).group(2))
    canary = canary_on(srv)
    got = [(path[:60], monitor_status(port, path)[0]) for path, _ in MONITOR_CASES]
    assert got == [(path[:60], status) for path, status in MONITOR_CASES]
    status, body = monitor_status(port, "/connz?limit=99999999999999999999999")
    assert re.search(rb"value out of range", body), body
    assert monitor_status(port, "/varz")[0] == 200
    canary.check()
