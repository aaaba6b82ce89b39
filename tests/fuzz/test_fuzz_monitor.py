"""Fuzz the monitoring query parameters.

A live in-process server with monitoring on, a few clients (subscribed,
publishing, one closed) so that every /connz sort has data.  Random query
strings (the real parameter names and values near the valid ones, percent
escapes, repeats, junk) go to /connz /subsz /routez /varz /accountz and
friends: through `Monitor.handle` directly (fast, and an exception there
is a bug), and one input in five as a real HTTP request over a socket.
The answer must be 200 with JSON (or the index page), or a 4xx with
Go's plain-text message; never a 500, an exception, or a dropped
connection.
"""
from __future__ import annotations

import json
import socket
import urllib.parse

import pytest
from hypothesis import given, strategies as st

from conftest import import_gnatsd
from fuzzing import FUZZ_SETTINGS, capture_errors, release_errors, run_fuzzer

g = import_gnatsd()

PATHS = st.sampled_from(["/connz", "/connz", "/connz", "/subsz", "/subsz", "/subscriptionsz",
                         "/routez", "/varz", "/accountz", "/accstatz", "/healthz", "/leafz",
                         "/gatewayz", "/jsz", "/", "/nope", "//connz", "/connz/"])
NAMES = st.sampled_from(["sort", "state", "subs", "auth", "offset", "limit", "cid", "acc",
                         "test", "unused", "user", "mqtt_client", "filter_subject", "js-enabled",
                         "accounts", "", "x", "SORT"])
VALUES = st.one_of(
    st.sampled_from(["cid", "start", "subs", "pending", "msgs_to", "msgs_from", "bytes_to",
                     "bytes_from", "last", "idle", "uptime", "rtt", "stop", "reason", "open",
                     "closed", "all", "any", "CLOSED", "detail", "1", "0", "true", "false",
                     "TRUE", "t", "F", "yes", "-1", "+5", "999999999999999999999", "1e3", "",
                     "foo", "foo.bar", "foo.*", ">", "foo..bar", "$G", "SYS", " ", "%00",
                     "%ff", "%zz", "\u00e9", "\U0001F600", "0x10", "18446744073709551616"]),
    st.integers(-10, 10 ** 20).map(str),
    st.text(max_size=12),
)


@st.composite
def query(draw):
    pairs = draw(st.lists(st.tuples(NAMES, VALUES), max_size=5))
    if draw(st.booleans()):
        qs = urllib.parse.urlencode(pairs)
    else:  # raw: unescaped junk, odd separators
        qs = draw(st.sampled_from(["&", ";", "&&"])).join(
            "%s=%s" % (k, v) if draw(st.integers(0, 5)) else k for k, v in pairs)
    return draw(PATHS) + ("?" + qs if qs or draw(st.booleans()) else "")


@pytest.fixture(scope="module")
def server():
    srv = g.Server(g.Options(host="127.0.0.1", port=-1, http_host="127.0.0.1",
                             http_port=-1)).start()
    errors = capture_errors(g)
    socks = []
    for i in range(4):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.recv(4096)
        s.sendall(b'CONNECT {"verbose":false,"name":"c%d"}\r\nSUB foo.%d %d\r\nSUB foo.* q 9\r\n'
                  b"PUB foo.%d 2\r\nhi\r\nPING\r\n" % (i, i, i, i))
        s.recv(4096)
        socks.append(s)
    socks.pop().close()   # one closed connection for state=closed
    srv.errors = errors
    srv.http_port = srv.monitor.port if hasattr(srv.monitor, "port") else None
    yield srv
    for s in socks:
        s.close()
    release_errors(g, errors)
    srv.shutdown()


def monitor_port(srv) -> int:
    mon = srv.monitor
    for attr in ("port", "http_port"):
        if isinstance(getattr(mon, attr, None), int) and getattr(mon, attr):
            return getattr(mon, attr)
    return mon.httpd.server_address[1]


def check_answer(path: str, status: int, body: bytes):
    assert status == 200 or 400 <= status < 500, (path, status, body[:300])
    if status == 200 and not body.startswith(b"<html"):
        json.loads(body)
    if status != 200:
        assert body and b"\n{" not in body[:2], (path, status, body[:300])


def over_http(port: int, path: str):
    raw = path.encode("utf-8", "surrogatepass")
    raw = raw.replace(b" ", b"%20").replace(b"\r", b"%0D").replace(b"\n", b"%0A")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1."), "dropped or garbled: %r for %r" % (data[:100], raw)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    check_answer(path, status, body)


def test_fuzz_monitor_query_parameters(server):
    mon = server.monitor
    port = monitor_port(server)
    count = [0]

    @FUZZ_SETTINGS
    @given(query(), st.integers(0, 4))
    def prop(path, via_http):
        count[0] += 1
        status, _ctype, body = mon.handle(path)
        check_answer(path, status, body)
        if via_http == 0:
            over_http(port, path)
        server.errors.check()

    assert run_fuzzer("monitor", prop, count) > 0
