"""gnatsd 0.7.2 as a route peer (issue 21): the pre-2.0 route dialect.

A peer whose INFO has no `proto` (0.7.x, and the 0.9-1.x servers of the
same dialect) gets SUB/UNSUB/MSG with route sids instead of RS+/RS-/RMSG;
a gnatsd.py node between a 0.7.2 node and a Go 2.15 node carries interest
and messages across (one hop each way).  The 0.7.2 binary is at
../shared/oracles/gnatsd-0.7.2 (see its README); without it these tests
skip.
"""
from __future__ import annotations

import os
import re
import time

import pytest

from conftest import (GO_SERVERS, ROOT, RawConn, ServerProcess, connected, free_port,
                      start_gnatsd, start_go, t_expect, t_ping_pong, write_conf)

GNATSD_072 = os.path.join(os.path.dirname(ROOT), "shared", "oracles", "gnatsd-0.7.2")

pytestmark = [
    pytest.mark.skipif(not os.access(GNATSD_072, os.X_OK),
                       reason="gnatsd 0.7.2 is not at ../shared/oracles/gnatsd-0.7.2"),
    pytest.mark.timeout(120),
]


def start_072(conf_text: str, tmp_path, name: str = "old.conf") -> ServerProcess:
    """gnatsd 0.7.2 with a config file (it cannot pick a free port itself)."""
    conf = write_conf(tmp_path, conf_text, name)
    srv = ServerProcess([GNATSD_072, "-c", conf], "gnatsd 0.7.2").start(wait_ready=False)
    m = srv.wait_for_log(rb"Listening for client connections on (\S+):(\d+)", 10)
    srv.host, srv.port = m.group(1).decode(), int(m.group(2))
    srv.wait_for_log(rb"gnatsd is ready", 10)
    return srv


def old_conf(port: int, route_port: int, routes=(), auth: str = "") -> str:
    text = 'port: %d\nnet: "127.0.0.1"\ncluster {\n  host: "127.0.0.1"\n  port: %d\n' % (
        port, route_port)
    if auth:
        user, password = auth.split(":")
        text += "  authorization { user: %s, password: %s, timeout: 2 }\n" % (user, password)
    if routes:
        text += "  routes = [\n%s\n  ]\n" % "\n".join("    %s" % r for r in routes)
    return text + "}\n"


client = connected


def until_delivered(pub: RawConn, sub: RawConn, subject: bytes, timeout: float = 15.0):
    """Publish `subject` until `sub` gets it (routes come up in the
    background); returns the first MSG line's match and drains repeats."""
    deadline = time.monotonic() + timeout
    while True:
        pub.send(b"PUB %s 2\r\nhi\r\n" % subject)
        t_ping_pong(pub)
        if sub._fill(time.monotonic() + 0.1) or re.search(rb"MSG ", bytes(sub.buf)):
            if re.search(rb"MSG %s " % re.escape(subject), bytes(sub.buf)):
                break
        assert time.monotonic() < deadline, "no message on %r" % subject
    time.sleep(0.2)        # (late copies of the probe, then drop them all)
    sub._fill(time.monotonic() + 0.05)
    sub.buf.clear()


def line_of_three(tmp_path):
    """0.7.2 (A) <- gnatsd.py (B) <- Go 2.15 (C): B dials A, C dials B."""
    if "2.15" not in GO_SERVERS:
        pytest.skip("Go nats-server 2.15 is not installed (make dev)")
    a_route, b_route, c_route = free_port(), free_port(), free_port()
    a = start_072(old_conf(free_port(), a_route), tmp_path)
    b = start_gnatsd("--cluster", "nats://127.0.0.1:%d" % b_route,
                     "--routes", "nats://127.0.0.1:%d" % a_route)
    c = start_go("--cluster", "nats://127.0.0.1:%d" % c_route,
                 "--routes", "nats://127.0.0.1:%d" % b_route, version="2.15")
    return a, b, c


def test_a_line_072_gnatsd_go_carries_messages_between_every_pair(tmp_path):
    nodes = line_of_three(tmp_path)
    try:
        subs = {srv.kind: client(srv) for srv in nodes}
        for kind, conn in subs.items():
            tag = re.sub(rb"\W", b"", kind.encode())
            conn.send(b"SUB to.%s 1\r\n" % tag)
            t_ping_pong(conn)
        for src in nodes:
            pub = client(src)
            for dst in nodes:
                if dst is src:
                    continue
                tag = re.sub(rb"\W", b"", dst.kind.encode())
                until_delivered(pub, subs[dst.kind], b"to." + tag)
            pub.close()
        for srv in nodes:
            srv.stop()
        assert "ERROR" not in nodes[0].log_text(), nodes[0].log_text()[-2000:]
    finally:
        for srv in nodes:
            srv.stop()


def test_queue_group_across_the_line_delivers_each_message_once(tmp_path):
    nodes = line_of_three(tmp_path)
    try:
        members = [client(srv) for srv in nodes]
        for k, conn in enumerate(members):
            conn.send(b"SUB work workers %d\r\nSUB probe %d\r\n" % (k + 1, k + 10))
            t_ping_pong(conn)
        for src in nodes:       # interest everywhere before counting
            pub = client(src)
            for dst, conn in zip(nodes, members):
                if dst is not src:
                    until_delivered(pub, conn, b"probe")
            pub.close()
        for src in nodes:
            pub = client(src)
            n = 60
            for i in range(n):
                pub.send(b"PUB work 2\r\n%02d\r\n" % i)
            t_ping_pong(pub)
            pub.close()
            time.sleep(0.5)
            got = []
            for conn in members:
                conn._fill(time.monotonic() + 0.2)
                while conn._fill(time.monotonic() + 0.05):
                    pass
                got += re.findall(rb"MSG work \d+ 2\r\n(\d\d)\r\n", bytes(conn.buf))
                conn.buf.clear()
            assert sorted(got) == [b"%02d" % i for i in range(n)], (src.kind, len(got))
    finally:
        for srv in nodes:
            srv.stop()


def test_request_reply_across_the_line(tmp_path):
    a, b, c = nodes = line_of_three(tmp_path)
    try:
        for requester, responder in ((a, c), (c, a), (b, a), (a, b)):
            svc = client(responder)
            svc.send(b"SUB svc 1\r\n")
            t_ping_pong(svc)
            req = client(requester)
            req.send(b"SUB _INBOX.r 7\r\n")
            t_ping_pong(req)
            deadline = time.monotonic() + 15
            while True:
                req.send(b"PUB svc _INBOX.r 4\r\nping\r\n")
                t_ping_pong(req)
                if svc._fill(time.monotonic() + 0.2) and b"MSG svc" in bytes(svc.buf):
                    break
                assert time.monotonic() < deadline, (requester.kind, responder.kind)
            m = t_expect(svc, rb"MSG svc 1 (\S+) 4\r\nping\r\n")
            svc.buf.clear()
            svc.send(b"PUB %s 4\r\npong\r\n" % m.group(1))
            t_ping_pong(svc)
            t_expect(req, rb"MSG _INBOX.r 7 4\r\npong\r\n", timeout=10)
            svc.close()
            req.close()
    finally:
        for srv in nodes:
            srv.stop()


def default_conf_on(tmp_path, name: str, port: int, monitor: int, route: int) -> str:
    """conf/default.conf with its three ports moved (two servers on one host)."""
    with open(os.path.join(ROOT, "conf", "default.conf")) as f:
        text = f.read()
    text = re.sub(r"(?m)^port: 4222", "port: %d" % port, text)
    text = re.sub(r"(?m)^monitor_port: 8222", "monitor_port: %d" % monitor, text)
    text = re.sub(r"(?m)^  port: 6222", "  port: %d" % route, text)
    assert text.count(str(route)) == 1
    return write_conf(tmp_path, text, name)


@pytest.mark.parametrize("first, second", [("gnatsd", "gnatsd"), ("gnatsd", "0.7.2"),
                                           ("0.7.2", "gnatsd"), ("0.7.2", "0.7.2")])
def test_the_seed_recipe(tmp_path, first, second):
    """The image's cluster recipe: two servers on conf/default.conf, the
    second started with --routes=nats-route://ruser:T0pS3cr3t@<first>:6222."""
    servers = []
    try:
        route1 = free_port()
        conf1 = default_conf_on(tmp_path, "one.conf", free_port(), free_port(), route1)
        conf2 = default_conf_on(tmp_path, "two.conf", free_port(), free_port(), free_port())
        flags = ["--routes=nats-route://ruser:T0pS3cr3t@127.0.0.1:%d" % route1]
        for kind, conf, extra in ((first, conf1, []), (second, conf2, flags)):
            if kind == "gnatsd":
                servers.append(start_gnatsd("-c", conf, *extra, addr=True, port=False))
            else:
                srv = ServerProcess([GNATSD_072, "-c", conf, "-a", "127.0.0.1", *extra],
                                    "gnatsd 0.7.2").start(wait_ready=False)
                m = srv.wait_for_log(rb"Listening for client connections on (\S+):(\d+)", 10)
                srv.host, srv.port = m.group(1).decode(), int(m.group(2))
                srv.wait_for_log(rb"gnatsd is ready", 10)
                servers.append(srv)
        one, two = (client(s) for s in servers)
        for sub, pub, subject in ((one, two, b"one.way"), (two, one, b"other.way")):
            sub.send(b"SUB %s 1\r\n" % subject)
            t_ping_pong(sub)
            until_delivered(pub, sub, subject)
        for srv in servers:
            assert "Parser ERROR" not in srv.log_text()
    finally:
        for srv in servers:
            srv.stop()
