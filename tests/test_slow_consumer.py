"""Slow consumers: a subscriber that stops reading is cut off, nobody else is.

One subscriber connection shrinks its receive buffer and never reads after
its handshake, while a publisher floods the subject in batches.  The server
must close the slow one (max_pending exceeded, or write_deadline passed
without progress) and log it as Go does, while a second, fast subscriber gets
every message in order, the publisher is never closed and its PING is
answered promptly after every batch, and the server's memory stays bounded.
The same must hold when the publisher writes 16 MB without pausing at all,
and with four slow consumers at once beside a plain and a wildcard reader:
each is cut, /varz counts four, and memory stays bounded.

Go 2.15 is the oracle here.  Go 2.9 is left out on purpose: it stalls the
*publisher* while a consumer's pending bytes are high, so with a consumer
that never reads the publisher gets no PONG until the 10 s default write
deadline passes (fixed in later releases).

Log lines of Go 2.15 for the two cases (Noticef, so [INF]):
    127.0.0.1:36790 - cid:5 - Slow Consumer Detected: MaxPending of 1048576 Exceeded
    127.0.0.1:58266 - cid:5 - Slow Consumer Detected: WriteDeadline of 1s exceeded
        with 73 chunks of 266752 total bytes.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request

import pytest

from conftest import (GO_SERVERS, MONITOR_LISTEN_RE, RawConn, rss, start_gnatsd, start_go,
                      t_expect_exact, t_ping_pong)

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
MB = 1024 * 1024

# How long a publisher's PING may wait for its PONG while the flood goes on.
PROMPT = 1.0

# Largest resident set the server may reach during a flood.
RSS_LIMIT = 100 * MB


@pytest.fixture(params=["gnatsd", "go2.15"])
def sc_server(request, tmp_path):
    started = []

    def make(conf_text: str):
        path = tmp_path / "sc.conf"
        path.write_text(conf_text)
        if request.param == "gnatsd":
            srv = start_gnatsd("-c", str(path))
        else:
            if "2.15" not in GO_SERVERS:
                pytest.skip("Go nats-server 2.15 is not installed")
            srv = start_go("-c", str(path), version="2.15")
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def connect_slow(server) -> socket.socket:
    """A subscriber on `flood` with a tiny receive buffer that stops reading
    once its SUB is confirmed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: fixes the window
    s.settimeout(5)
    s.connect((server.host, server.port))
    buf = b""
    while not re.search(rb"INFO [^\r\n]*\r\n", buf):
        chunk = s.recv(4096)
        assert chunk, "closed before INFO"
        buf += chunk
    s.sendall(QUIET + b"SUB flood 1\r\nPING\r\n")
    buf = b""
    while b"PONG\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, "closed before PONG"
        buf += chunk
    return s


class FastReader(threading.Thread):
    """Reads a subscriber's stream, checks each MSG's sequence number."""

    def __init__(self, conn: RawConn):
        super().__init__(daemon=True)
        self.sock = conn.sock
        self.buf = bytearray(conn.buf)
        self.count = 0
        self.error = None
        self.closed = False
        self.cond = threading.Condition()
        self.stop_flag = False

    def run(self):
        self.sock.settimeout(0.2)
        try:
            while not self.stop_flag:
                try:
                    chunk = self.sock.recv(1 << 20)
                except socket.timeout:
                    continue
                if not chunk:
                    self.closed = True
                    return
                self.buf += chunk
                self.parse()
        except Exception as exc:  # reported by wait_for
            self.error = repr(exc)
        finally:
            with self.cond:
                self.cond.notify_all()

    def parse(self):
        buf = self.buf
        i = 0
        while True:
            nl = buf.find(b"\r\n", i)
            if nl < 0:
                break
            line = bytes(buf[i:nl])
            if line.startswith(b"MSG "):
                size = int(line.rsplit(b" ", 1)[1])
                if len(buf) < nl + 2 + size + 2:
                    break
                seq = int(bytes(buf[nl + 2:nl + 2 + 16]))
                if seq != self.count:
                    raise AssertionError("message %d arrived as number %d" % (seq, self.count))
                self.count += 1
                i = nl + 2 + size + 2
            elif line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                i = nl + 2
            elif line == b"PONG" or line.startswith(b"INFO "):
                i = nl + 2
            else:
                raise AssertionError("unexpected line %r" % line[:100])
        del buf[:i]
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count < count and self.error is None and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
        assert self.error is None, self.error
        assert not self.closed, "fast subscriber was closed after %d messages" % self.count
        assert self.count == count, "fast subscriber got %d of %d messages" % (self.count, count)


def payload(seq: int, size: int) -> bytes:
    return (b"%016d" % seq) + b"." * (size - 16)


def read_until_gone(s: socket.socket, timeout: float = 10.0) -> int:
    """Read (and drop) what the slow socket still holds; return the bytes
    read once EOF or a reset shows the server closed it."""
    deadline = time.monotonic() + timeout
    total = 0
    s.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return total
        if not chunk:
            return total
        total += len(chunk)
    raise AssertionError("slow consumer socket still open after %d bytes" % total)


def gone_timeout(server) -> float:
    """How long the cut socket may take to close.  gnatsd.py closes it in
    the loop turn that finds the overflow.  Go closes it from its write
    loop once the write in flight returns (bounded by its 10 s default
    write deadline); in one CI run (2.15, 2026-11-27, two cores busy) the
    socket was still open 10 s after the cut, so Go gets longer."""
    return 10.0 if server.kind == "gnatsd.py" else 25.0


def read_until_gone_or_go_keeps_it(s: socket.socket, server) -> None:
    """read_until_gone; Go 2.15, having logged the cut, once kept the socket
    open past 25 s (CI, 2026-12-07: its write loop still blocked), which is
    the oracle's flaw, not an expectation: xfail then.  gnatsd.py must close."""
    try:
        read_until_gone(s, gone_timeout(server))
    except AssertionError:
        if server.kind == "gnatsd.py":
            raise
        pytest.xfail("Go kept the cut slow consumer's socket open")


class Publisher:
    """Publishes numbered messages on `flood` in batches, each followed by a
    PING whose PONG is timed; samples the server's RSS after every batch."""

    def __init__(self, server):
        self.server = server
        self.conn = RawConn(server.host, server.port)
        self.conn.read_info()
        self.conn.send(QUIET)
        t_ping_pong(self.conn)
        self.seq = 0
        self.slowest = 0.0
        self.peak = rss(server.pid)

    def batch(self, sizes: list):
        n = max(256, 32768 // min(sizes))
        frames = []
        for _ in range(n):
            size = sizes[self.seq % len(sizes)]
            frames.append(b"PUB flood %d\r\n%s\r\n" % (size, payload(self.seq, size)))
            self.seq += 1
        self.conn.send(b"".join(frames))
        self.ping()

    def ping(self):
        t0 = time.monotonic()
        self.conn.send(b"PING\r\n")
        t_expect_exact(self.conn, b"PONG\r\n", timeout=10)
        self.slowest = max(self.slowest, time.monotonic() - t0)
        self.peak = max(self.peak, rss(self.server.pid))

    def close(self):
        self.conn.close()


SC_MAX_PENDING = re.compile(
    rb"\[INF\] 127\.0\.0\.1:(\d+) - cid:\d+ - Slow Consumer Detected: MaxPending of 1048576 "
    rb"Exceeded\r?\n")
# What the behaviour tests look for; the exact wording is test_*_log_shape_*'s.
SC_WRITE_DEADLINE = re.compile(
    rb"\[INF\] 127\.0\.0\.1:(\d+) - cid:\d+ - Slow Consumer Detected: WriteDeadline of 1s "
    rb"exceeded[^\n]*\n")


class FloodScene:
    """A slow subscriber, a fast one (read by a thread) and a publisher."""

    def __init__(self, server):
        self.server = server
        self.slow = connect_slow(server)
        self.slow_port = self.slow.getsockname()[1]
        fast_conn = RawConn(server.host, server.port)
        fast_conn.read_info()
        fast_conn.send(QUIET + b"SUB flood 1\r\n")
        t_ping_pong(fast_conn)
        self.fast_conn = fast_conn
        self.fast = FastReader(fast_conn)
        self.fast.start()
        self.pub = Publisher(server)

    def detected(self, log_re) -> bool:
        with self.server.lock:
            return log_re.search(self.server.log) is not None

    def check_after_cut(self, log_re):
        """The cut was the slow one; flood on, then check everybody else."""
        m = self.server.wait_for_log(log_re, timeout=10)
        assert int(m.group(1)) == self.slow_port, "the wrong connection was cut: %s" % m.group(0)
        for _ in range(4):
            self.pub.batch([16, 1024])
        self.fast.wait_for(self.pub.seq)
        assert self.pub.slowest < PROMPT, "a PONG took %.3f s during the flood" % self.pub.slowest
        assert self.pub.peak < RSS_LIMIT, "server RSS reached %d MB" % (self.pub.peak // MB)
        read_until_gone(self.slow, gone_timeout(self.server))
        self.pub.ping()
        with self.server.lock:
            assert self.server.log.count(b"Slow Consumer Detected") == 1, self.server.log_text()

    def close(self):
        self.fast.stop_flag = True
        self.fast.join(2)
        for s in (self.slow, self.fast_conn.sock):
            s.close()
        self.pub.close()


@pytest.mark.parametrize("sizes", [[16], [1024], [16, 16, 16, 1024]],
                         ids=["16B", "1KiB", "mixed"])
def test_max_pending_cuts_only_the_slow_consumer(sc_server, sizes):
    server = sc_server("max_pending: 1MB\n")
    scene = FloodScene(server)
    try:
        for _ in range(600):
            scene.pub.batch(sizes)
            if scene.detected(SC_MAX_PENDING):
                break
        scene.check_after_cut(SC_MAX_PENDING)
    finally:
        scene.close()


def test_write_deadline_cuts_a_consumer_that_makes_no_progress(sc_server):
    """Pending bytes stay far below max_pending (64 MB by default); the
    consumer is cut because its writes make no progress for 1 s."""
    server = sc_server('write_deadline: "1s"\n')
    scene = FloodScene(server)
    try:
        while scene.pub.seq * 262 < 3 * MB:       # ~3 MB: more than the kernel buffers
            scene.pub.batch([16, 16, 16, 1024])
        stopped = time.monotonic()
        # The publisher goes quiet; its PINGs are still answered.
        while not scene.detected(SC_WRITE_DEADLINE):
            assert time.monotonic() - stopped < 5, "no WriteDeadline cut within 5 s:\n%s" % (
                scene.server.log_text()[-2000:])
            scene.pub.ping()
            time.sleep(0.05)  # polling the log; the fact itself is awaited above
        assert time.monotonic() - stopped >= 0.9, "cut before the deadline had passed"
        assert not scene.detected(SC_MAX_PENDING)
        scene.check_after_cut(SC_WRITE_DEADLINE)
    finally:
        scene.close()


LOG_HEAD = rb"\[\d+\] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[INF\] "


def test_max_pending_log_shape_matches_go(sc_server):
    """[INF], prefixed `ip:port - cid:N - ` like every client line, and
    worded as Go 2.15 words it (see the module doc)."""
    server = sc_server("max_pending: 1MB\n")
    scene = FloodScene(server)
    try:
        for _ in range(600):
            scene.pub.batch([1024])
            if scene.detected(SC_MAX_PENDING):
                break
        line = server.wait_for_log(rb"[^\n]*Slow Consumer Detected[^\n]*\n").group(0)
        assert re.match(LOG_HEAD + rb"127\.0\.0\.1:%d - cid:\d+ - Slow Consumer Detected: "
                        rb"MaxPending of 1048576 Exceeded\n" % scene.slow_port, line), line
    finally:
        scene.close()


def test_write_deadline_log_shape_matches_go(sc_server):
    """Go 2.x: `Slow Consumer Detected: WriteDeadline of 1s exceeded with
    <n> chunks of <bytes> total bytes.` (client.go, handleWriteTimeout)."""
    server = sc_server('write_deadline: "1s"\n')
    scene = FloodScene(server)
    try:
        while scene.pub.seq * 1040 < 3 * MB:
            scene.pub.batch([1024])
        line = server.wait_for_log(rb"[^\n]*Slow Consumer Detected[^\n]*\n").group(0)
        assert re.match(LOG_HEAD + rb"127\.0\.0\.1:%d - cid:\d+ - Slow Consumer Detected: "
                        rb"WriteDeadline of 1s exceeded with \d+ chunks of \d+ total bytes\.\n"
                        % scene.slow_port, line), line
    finally:
        scene.close()


@pytest.mark.parametrize("size", [16, 1024], ids=["16B", "1KiB"])
def test_unpaced_flood_cuts_the_slow_consumer_but_not_a_fast_one(sc_server, size):
    """A publisher that writes 16 MB without waiting (a benchmark loop, a
    replay): the fast subscriber, reading as fast as it can, still gets every
    message; Go 2.15 stalls the producer while a consumer's pending bytes are
    high, so only the consumer that never reads is cut."""
    server = sc_server("max_pending: 1MB\n")
    scene = FloodScene(server)
    try:
        n = 16 * MB // (size + 14)
        scene.pub.conn.send(b"".join(b"PUB flood %d\r\n%s\r\n" % (size, payload(i, size))
                                     for i in range(n)))
        scene.pub.seq = n
        scene.pub.conn.send(b"PING\r\n")
        t_expect_exact(scene.pub.conn, b"PONG\r\n", timeout=60)
        scene.fast.wait_for(n, timeout=60)
        m = server.wait_for_log(SC_MAX_PENDING, timeout=10)
        assert int(m.group(1)) == scene.slow_port
        read_until_gone_or_go_keeps_it(scene.slow, server)
        with server.lock:
            assert server.log.count(b"Slow Consumer Detected") == 1, server.log_text()[-1500:]
    finally:
        scene.close()


def test_several_slow_consumers_are_cut_counted_and_memory_stays_bounded(sc_server):
    """Four subscribers stop reading during a flood, beside a plain and a
    wildcard subscriber that read: each of the four is cut at max_pending,
    /varz counts four slow consumers, both readers get every message in
    order, and the server's memory stays bounded (max_pending per slow
    consumer, not the flood)."""
    server = sc_server('max_pending: 1MB\nhttp: "127.0.0.1:-1"\n')
    mon_port = int(server.wait_for_log(MONITOR_LISTEN_RE).group(2))
    slow = [connect_slow(server) for _ in range(4)]
    readers = []
    for sub in (b"SUB flood 1\r\n", b"SUB > 1\r\n"):
        conn = RawConn(server.host, server.port)
        conn.read_info()
        conn.send(QUIET + sub)
        t_ping_pong(conn)
        readers.append(FastReader(conn))
        readers[-1].start()
    pub = Publisher(server)
    start_rss = pub.peak
    try:
        for _ in range(600):
            pub.batch([16, 1024])
            with server.lock:
                if server.log.count(b"Slow Consumer Detected") >= 4:
                    break
        for _ in range(4):
            pub.batch([16, 1024])
        for r in readers:
            r.wait_for(pub.seq)
        for s in slow:
            read_until_gone(s, gone_timeout(server))
        with urllib.request.urlopen("http://127.0.0.1:%d/varz" % mon_port, timeout=5) as resp:
            varz = json.loads(resp.read())
        assert varz["slow_consumers"] == 4, varz["slow_consumers"]
        assert pub.slowest < PROMPT, "a PONG took %.3f s during the flood" % pub.slowest
        assert pub.peak < RSS_LIMIT, "server RSS reached %d MB" % (pub.peak // MB)
        assert pub.peak - start_rss < 40 * MB, "server RSS grew %d MB" % (
            (pub.peak - start_rss) // MB)
    finally:
        for r in readers:
            r.stop_flag = True
            r.join(2)
            r.sock.close()
        for s in slow:
            s.close()
        pub.close()


def test_a_reader_slower_than_the_publisher_gets_every_byte_in_order(sc_server):
    """A subscriber that reads, but slower than the publisher writes (a small
    receive buffer, a pause after every read): megabytes wait for it on the
    server, sent from what the kernel left at each turn while the rest
    queues behind (Connection.flush_rest), and it gets every message in
    order, byte-exact; nobody is cut."""
    server = sc_server("max_pending: 67108864\n")
    sub = RawConn(server.host, server.port)
    s = sub.sock
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sub.read_info()
    sub.send(QUIET + b"SUB steady 1\r\n")
    t_ping_pong(sub)
    s.settimeout(10)
    pub = RawConn(server.host, server.port)
    pub.read_info()
    pub.send(QUIET)
    t_ping_pong(pub)
    sizes = [16, 300, 1024, 4000]
    msgs = [payload(k, sizes[k % 4]) for k in range(6000)]      # ~8 MB
    want = b"".join(b"MSG steady 1 %d\r\n%s\r\n" % (len(m), m) for m in msgs)
    got = bytearray()

    def read_slowly():
        while len(got) < len(want):
            chunk = s.recv(65536)
            if not chunk:
                return
            got.extend(chunk)
            time.sleep(0.002)
    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    for at in range(0, len(msgs), 500):
        pub.send(b"".join(b"PUB steady %d\r\n%s\r\n" % (len(m), m) for m in msgs[at:at + 500]))
    t_ping_pong(pub)
    reader.join(60)
    assert len(got) == len(want) and bytes(got) == want, (len(got), len(want))
    assert "Slow Consumer" not in server.log_text()
