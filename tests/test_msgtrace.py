"""Message tracing, as nats-server 2.11+ does it (issue 13): a message
with `Nats-Trace-Dest` gets one event published to that subject (ingress,
and an egress per subscription it went to); `Nats-Trace-Only: true` gets the
event without the delivery.  Every transcript runs against gnatsd.py and Go
2.15, and the events must have the same shape (keys, JSON types, event
kinds, subscriptions and queues), apart from fields Go adds about features
this server does not have (`feature_flags`).
"""
from __future__ import annotations

import json
import re
import time

import pytest

from conftest import RawConn, free_port, start_kind, t_expect

KINDS = ["gnatsd", "go2.15"]


def client(srv, echo: bool = True) -> RawConn:
    c = RawConn(srv.host, srv.port)
    c.read_info()
    c.send(b'CONNECT {"verbose":false,"headers":true,"protocol":1,"name":"tracer",'
           b'"echo":%s}\r\nPING\r\n' % (b"true" if echo else b"false"))
    t_expect(c, rb"PONG\r\n")
    return c


def hpub(subject: bytes, headers: dict, body: bytes = b"hi") -> bytes:
    block = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % kv for kv in headers.items()) + b"\r\n"
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(block), len(block) + len(body),
                                          block, body)


def read_until_trace(c: RawConn) -> tuple:
    """(messages other than the trace, the trace event) after a PING."""
    got = b""
    c.send(b"PING\r\n")
    t_expect_any = re.compile(rb"MSG traces 1 +(\d+)\r\n")
    while True:
        m = t_expect_any.search(bytes(c.buf))
        if m and len(c.buf) >= m.end() + int(m.group(1)) + 2 and b"PONG\r\n" in bytes(c.buf):
            data = bytes(c.buf)
            event = json.loads(data[m.end():m.end() + int(m.group(1))])
            got = data[:m.start()] + data[m.end() + int(m.group(1)) + 2:]
            c.buf.clear()
            return got.replace(b"PONG\r\n", b""), event
        assert c._fill(time.monotonic() + 5), bytes(c.buf)


def shape(value):
    """The keys and JSON types of an event, recursively; lists by element."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k != "feature_flags"}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def traced(kind: str, only: bool, echo: bool = True) -> tuple:
    srv = start_kind(kind)
    try:
        c = client(srv, echo)
        c.send(b"SUB traces 1\r\nSUB foo 2\r\nSUB foo q 3\r\nPING\r\n")
        t_expect(c, rb"PONG\r\n")
        headers = {b"Nats-Trace-Dest": b"traces"}
        if only:
            headers[b"Nats-Trace-Only"] = b"true"
        c.send(hpub(b"foo", headers))
        return read_until_trace(c)
    finally:
        srv.stop()


@pytest.mark.parametrize("only", [False, True], ids=["delivered", "trace-only"])
def test_a_traced_publish_gets_goes_event(only):
    results = {kind: traced(kind, only) for kind in KINDS}
    (ours, event), (gos, go_event) = results["gnatsd"], results["go2.15"]
    assert shape(event) == shape(go_event)
    assert [e["type"] for e in event["events"]] == ["in", "eg", "eg"]
    assert [(e.get("sub"), e.get("queue")) for e in event["events"][1:]] == \
        [(e.get("sub"), e.get("queue")) for e in go_event["events"][1:]]
    assert event["request"] == go_event["request"]
    assert event["events"][0]["subj"] == "foo" and event["events"][0]["acc"] == "$G"
    delivered = sorted(re.findall(rb"HMSG foo (\d) ", ours))
    assert delivered == sorted(re.findall(rb"HMSG foo (\d) ", gos))
    assert delivered == ([] if only else [b"2", b"3"])


def test_no_echo_is_noted_as_go_notes_it():
    events = {kind: traced(kind, False, echo=False)[1] for kind in KINDS}
    for kind, event in events.items():
        errors = [e.get("error") for e in event["events"][1:]]
        assert errors == ["Not delivered because of no echo"] * 2, (kind, errors)


def read_traces(c: RawConn, count: int) -> list:
    """`count` trace events (and nothing else) on c's `SUB traces 1`."""
    deadline = time.monotonic() + 10
    events = []
    while len(events) < count:
        m = re.match(rb"MSG traces 1 +(\d+)\r\n", bytes(c.buf))
        if m and len(c.buf) >= m.end() + int(m.group(1)) + 2:
            events.append(json.loads(bytes(c.buf[m.end():m.end() + int(m.group(1))])))
            del c.buf[:m.end() + int(m.group(1)) + 2]
            continue
        assert time.monotonic() < deadline and c._fill(deadline), (events, bytes(c.buf))
    return events


def pair(first: str, second: str):
    port = free_port()
    a = start_kind(first, "--cluster", "nats://127.0.0.1:%d" % port, "--cluster_name", "t")
    b = start_kind(second, "--cluster", "nats://127.0.0.1:-1", "--cluster_name", "t",
               "--routes", "nats://127.0.0.1:%d" % port)
    return a, b


def traced_across(first: str, second: str, only: bool) -> tuple:
    """A client on `first` traces a publish that a subscriber on `second`
    wants: (origin event, remote event, what the remote subscriber got)."""
    a, b = pair(first, second)
    try:
        remote = client(b)
        remote.send(b"SUB foo 9\r\nPING\r\n")
        t_expect(remote, rb"PONG\r\n")
        c = client(a)
        c.send(b"SUB traces 1\r\nSUB probe 2\r\nPING\r\n")
        t_expect(c, rb"PONG\r\n")
        for attempt in range(200):      # until interest has crossed both ways
            remote.send(b"PUB probe 0\r\n\r\nPING\r\n")
            t_expect(remote, rb"PONG\r\n")
            c.send(b"PUB foo 1\r\nx\r\nPING\r\n")
            t_expect(c, rb"(MSG probe 2 0\r\n\r\n)*PONG\r\n")
            if remote._fill(time.monotonic() + 0.05) and b"MSG foo 9" in bytes(remote.buf):
                break
        c.send(b"UNSUB 2\r\nPING\r\n")
        t_expect(c, rb"(MSG probe 2 0\r\n\r\n)*PONG\r\n")
        remote.send(b"PING\r\n")
        t_expect(remote, rb"(MSG foo 9 1\r\nx\r\n)*PONG\r\n")
        headers = {b"Nats-Trace-Dest": b"traces"}
        if only:
            headers[b"Nats-Trace-Only"] = b"true"
        c.send(hpub(b"foo", headers))
        events = read_traces(c, 2)
        origin = [e for e in events if e["events"][0]["kind"] == 0][0]
        far = [e for e in events if e["events"][0]["kind"] == 1][0]
        remote.send(b"PING\r\n")
        got = t_expect(remote, rb"(HMSG foo 9 [^\r]*\r\n[^P]*)?PONG\r\n").group(1)
        return origin, far, got
    finally:
        a.stop()
        b.stop()


LAYOUTS = [("gnatsd", "gnatsd"), ("gnatsd", "go2.15"), ("go2.15", "gnatsd")]


@pytest.mark.parametrize("only", [False, True], ids=["delivered", "trace-only"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "+".join(l))
def test_a_trace_crosses_a_route_with_a_hop_id(layout, only):
    """The origin forwards with `Nats-Trace-Hop: 1` and counts the hop;
    the next server, gnatsd.py or Go, traces it too (kind 1: a route) and
    delivers unless trace-only; the events have the shapes two Go 2.15
    servers give."""
    origin, far, got = traced_across(*layout, only)
    go_origin, go_far, go_got = traced_across("go2.15", "go2.15", only)
    assert shape(origin) == shape(go_origin)
    assert shape(far) == shape(go_far)
    assert origin["hops"] == 1 and origin["events"][1]["hop"] == "1"
    assert origin["events"][1]["kind"] == 1
    assert far["request"]["header"]["Nats-Trace-Hop"] == ["1"]
    assert [(e["type"], e.get("sub")) for e in far["events"]] == [("in", None), ("eg", "foo")]
    assert (got is None) == only == (go_got is None)
