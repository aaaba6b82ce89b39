"""The server as a whole: addresses, restarts, many clients, fairness.

* `-a ::1` serves IPv6 end to end; `-a ::` takes IPv4 clients as well and,
  like Go, shows them by their IPv4 address (127.0.0.1, not the mapped
  ::ffff:127.0.0.1) in INFO's client_ip and in log lines.
* A server started on the port of one that just stopped binds at once, even
  while the old server's clients are still connected or their sockets are in
  TIME_WAIT (SO_REUSEADDR, as Go's net.Listen sets it).
* 200 clients at once each subscribe, publish and PING, and all are served.
* One client flooding the server does not starve the others: an idle
  client's PING is answered within 100 ms while the flood goes on.

max_connections is covered by test_limits.py.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import (GO_SERVERS, RawConn, start_gnatsd, start_go, t_expect, t_expect_exact,
                      t_ping_pong)

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


def host_of(server) -> str:
    """The log says [::1]:port; sockets want ::1."""
    return server.host.strip("[]")


def raw(server, host: str | None = None) -> RawConn:
    c = RawConn(host or host_of(server), server.port)
    c.info = c.read_info()
    return c


# -- IPv6 ----------------------------------------------------------------------------


def test_ipv6_loopback_end_to_end(any_server_with):
    srv = any_server_with("-a", "::1", "-D")
    assert srv.host == "[::1]"
    sub = raw(srv)
    pub = raw(srv)
    try:
        assert sub.sock.family == socket.AF_INET6
        assert sub.info["host"] == "::1"
        assert sub.info["client_ip"] == "::1"
        assert sub.info["port"] == srv.port
        sub.send(QUIET + b"SUB v6.* 1\r\n")
        t_ping_pong(sub)
        pub.send(QUIET + b"PUB v6.x reply 4\r\nsix!\r\n")
        t_ping_pong(pub)
        t_expect_exact(sub, b"MSG v6.x 1 reply 4\r\nsix!\r\n")
        t_ping_pong(sub)
        port = sub.sock.getsockname()[1]
        srv.wait_for_log(rb"\[DBG\] \[::1\]:%d - cid:\d+ - Client connection created" % port)
    finally:
        sub.close()
        pub.close()


def test_ipv6_only_listener_refuses_ipv4(any_server_with):
    srv = any_server_with("-a", "::1")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_all_interfaces_v6_takes_ipv4_clients_and_names_them_as_ipv4(any_server_with):
    srv = any_server_with("-a", "::", "-D")
    v4 = raw(srv, "127.0.0.1")
    v6 = raw(srv, "::1")
    try:
        assert v6.info["client_ip"] == "::1"
        assert v4.info["client_ip"] == "127.0.0.1", v4.info["client_ip"]
        v4.send(QUIET + b"SUB both 1\r\n")
        t_ping_pong(v4)
        v6.send(QUIET + b"PUB both 2\r\nok\r\n")
        t_ping_pong(v6)
        t_expect_exact(v4, b"MSG both 1 2\r\nok\r\n")
        port = v4.sock.getsockname()[1]
        srv.wait_for_log(rb"\[DBG\] 127\.0\.0\.1:%d - cid:\d+ - Client connection created" % port)
    finally:
        v4.close()
        v6.close()


# -- restart on the same port ------------------------------------------------------------


@pytest.fixture(params=["gnatsd", "go2.15"])
def starter(request):
    """start(*args) for the server kind of this run; all are killed at teardown."""
    started = []

    def start(*args, **kw):
        if request.param == "gnatsd":
            srv = start_gnatsd(*args, **kw)
        else:
            if "2.15" not in GO_SERVERS:
                pytest.skip("Go nats-server 2.15 is not installed")
            srv = start_go(*args, version="2.15", **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill()


def busy_clients(srv, n: int = 5) -> list:
    """Connected clients with subscriptions and traffic in flight."""
    conns = []
    for i in range(n):
        c = raw(srv)
        c.send(QUIET + b"SUB foo.%d 1\r\nPUB foo.%d 2\r\nhi\r\n" % (i, i))
        t_expect_exact(c, b"MSG foo.%d 1 2\r\nhi\r\n" % i)
        conns.append(c)
    return conns


def assert_serves(srv):
    c = raw(srv)
    try:
        c.send(QUIET + b"SUB again 1\r\nPUB again 2\r\nok\r\nPING\r\n")
        t_expect_exact(c, b"MSG again 1 2\r\nok\r\nPONG\r\n")
    finally:
        c.close()


@pytest.mark.parametrize("clients_close_after", [False, True],
                         ids=["clients-still-connected", "old-sockets-in-time-wait"])
def test_restart_on_same_port_right_after_stop(starter, clients_close_after):
    """The old server closes first, so its side of each connection waits in
    FIN_WAIT2 (clients still connected) or, once the clients close too, in
    TIME_WAIT; either blocks a bind without SO_REUSEADDR."""
    first = starter()
    port = first.port
    conns = busy_clients(first)
    first.stop()
    if clients_close_after:
        for c in conns:
            c.read_until_closed(timeout=5)
            c.close()
    second = starter("-p", str(port), port=False)
    try:
        assert second.port == port
        assert_serves(second)
    finally:
        for c in conns:
            c.close()


def test_stop_closes_every_client(starter):
    srv = starter()
    conns = busy_clients(srv)
    srv.stop()
    for c in conns:
        c.read_until_closed(timeout=5)
        assert c.closed


# -- many clients at once ----------------------------------------------------------------


def test_200_concurrent_connections_each_sub_pub_ping(any_server):
    n = 200
    watcher = raw(any_server)
    watcher.send(QUIET + b"SUB conn.* 9\r\n")
    t_ping_pong(watcher)
    conns = []
    try:
        for i in range(n):
            conns.append(raw(any_server))
        # Phase 1: everyone subscribes (all sent before any answer is read).
        for i, c in enumerate(conns):
            c.send(QUIET + b"SUB conn.%d 1\r\nPING\r\n" % i)
        for c in conns:
            t_expect_exact(c, b"PONG\r\n", timeout=10)
        # Phase 2: everyone publishes to its neighbour, then PINGs.
        for i, c in enumerate(conns):
            c.send(b"PUB conn.%d %d\r\nfrom %03d\r\nPING\r\n" % ((i + 1) % n, 8, i))
        seen = [0] * n
        for _round in range(2):
            # Round 1: own PONG (the neighbour's message may come before or
            # after it).  Round 2: after every round-1 PONG, every message
            # has been queued, so any still unread comes before this PONG.
            for i, c in enumerate(conns):
                m = t_expect(c, rb"(MSG conn\.%d 1 8\r\nfrom %03d\r\n)?PONG\r\n"
                             % (i, (i - 1) % n), timeout=10)
                seen[i] += bool(m.group(1))
            for c in conns:
                c.send(b"PING\r\n")
        for i, c in enumerate(conns):
            t_expect_exact(c, b"PONG\r\n")
        assert seen == [1] * n, [i for i in range(n) if seen[i] != 1]
        watcher.send(b"PING\r\n")
        got = t_expect(watcher, rb"((?:MSG conn\.\d+ 9 8\r\nfrom \d{3}\r\n){%d})PONG\r\n" % n,
                       timeout=10).group(1)
        assert sorted(got.split(b"\r\n")[1::2]) == sorted(b"from %03d" % i for i in range(n))
    finally:
        for c in conns:
            c.close()
        watcher.close()


def test_200_connections_opened_and_closed_in_parallel_threads(any_server):
    n = 200
    errors = []

    def worker(i):
        try:
            c = raw(any_server)
            try:
                c.send(QUIET + b"SUB t.%d 1\r\nPUB t.%d 3\r\n%03d\r\nPING\r\n" % (i, i, i))
                t_expect_exact(c, b"MSG t.%d 1 3\r\n%03d\r\nPONG\r\n" % (i, i), timeout=20)
            finally:
                c.close()
        except Exception as exc:  # collected, asserted below
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    c = raw(any_server)
    t_ping_pong(c)
    c.close()


# -- fairness under a flood ----------------------------------------------------------------


class Flooder(threading.Thread):
    """Sends PUBs on one connection as fast as the server takes them."""

    def __init__(self, server, size: int):
        super().__init__(daemon=True)
        self.conn = raw(server)
        self.conn.send(QUIET)
        t_ping_pong(self.conn)
        count = max(1, 65536 // (size + 20))
        self.chunk = b"".join(b"PUB flood %d\r\n%s\r\n" % (size, b"x" * size)
                              for _ in range(count))
        self.sent = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.conn.sock.sendall(self.chunk)
                self.sent += len(self.chunk)
        except OSError as exc:
            if not self.stop.is_set():
                self.error = repr(exc)


class Drain(threading.Thread):
    """Reads a subscriber's socket and throws the bytes away."""

    def __init__(self, conn: RawConn):
        super().__init__(daemon=True)
        self.conn = conn
        self.stop = threading.Event()
        self.received = 0

    def run(self):
        self.conn.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = self.conn.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            self.received += len(data)


@pytest.mark.parametrize("size", [16, 1024], ids=["16B", "1KiB"])
@pytest.mark.parametrize("with_subscriber", [False, True], ids=["no-interest", "fan-out"])
def test_idle_client_ping_is_answered_promptly_during_a_flood(any_server, size,
                                                              with_subscriber):
    idle = raw(any_server)                 # connected; no CONNECT, nothing sent
    drain = None
    if with_subscriber:
        sub = raw(any_server)
        sub.send(QUIET + b"SUB flood 1\r\n")
        t_ping_pong(sub)
        drain = Drain(sub)
        drain.start()
    flooder = Flooder(any_server, size)
    flooder.start()
    try:
        # The flood is on once the server has taken a few MB.
        deadline = time.monotonic() + 10
        while flooder.sent < 4 * 1024 * 1024:
            assert time.monotonic() < deadline, "the flood never got going"
            time.sleep(0.01)
        before = flooder.sent
        slowest = 0.0
        for _ in range(20):
            t0 = time.monotonic()
            idle.send(b"PING\r\n")
            t_expect_exact(idle, b"PONG\r\n", timeout=5)
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.01)   # spread the probes over the flood
        assert flooder.sent > before, "the flood stopped while we measured"
        assert flooder.error is None, flooder.error
        assert slowest < 0.100, "an idle client waited %.0f ms for PONG" % (slowest * 1000)
        if drain is not None:
            assert drain.received > 0
    finally:
        flooder.stop.set()
        if drain is not None:
            drain.stop.set()
        flooder.conn.close()
        flooder.join(5)
        idle.close()
