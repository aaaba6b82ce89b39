"""allow_responses: a responder may publish to the reply subjects of the
requests it received, a limited number of times (Go's ResponsePermission)."""
from __future__ import annotations

from conftest import t_expect_exact, t_ping_pong, write_conf

CONF = """authorization { users = [
  {user: req, password: p1}
  {user: svc, password: p2, permissions: {subscribe: "svc.>", allow_responses: true}}
  {user: svc2, password: p3, permissions: {subscribe: "svc.>", allow_responses: {max: 2}}}
] }
"""


def login(raw_factory, srv, user, password):
    c = raw_factory(srv, b'CONNECT {"verbose":false,"pedantic":false,"user":"%s","pass":"%s"}'
                         b'\r\n' % (user, password))
    t_ping_pong(c)
    return c


def denied(subject: bytes) -> bytes:
    return b"-ERR 'Permissions Violation for Publish to \"%s\"'\r\n" % subject


def test_one_response_per_request_by_default(any_server_with, raw_factory, tmp_path):
    srv = any_server_with("-c", write_conf(tmp_path, CONF))
    req = login(raw_factory, srv, b"req", b"p1")
    svc = login(raw_factory, srv, b"svc", b"p2")
    svc.send(b"SUB svc.a 1\r\n")
    t_ping_pong(svc)
    req.send(b"SUB _INBOX.r 9\r\nPUB svc.a _INBOX.r 2\r\nhi\r\n")
    t_ping_pong(req)
    t_expect_exact(svc, b"MSG svc.a 1 _INBOX.r 2\r\nhi\r\n")
    # Not a reply subject it was given: denied (publish allows nothing else).
    svc.send(b"PUB other 1\r\nx\r\nPING\r\n")
    t_expect_exact(svc, denied(b"other") + b"PONG\r\n")
    svc.send(b"PUB _INBOX.r 2\r\nok\r\nPING\r\n")
    t_expect_exact(svc, b"PONG\r\n")
    t_expect_exact(req, b"MSG _INBOX.r 9 2\r\nok\r\n")
    # The one response is used up.
    svc.send(b"PUB _INBOX.r 2\r\nno\r\nPING\r\n")
    t_expect_exact(svc, denied(b"_INBOX.r") + b"PONG\r\n")
    t_ping_pong(req)


def test_max_responses(any_server_with, raw_factory, tmp_path):
    srv = any_server_with("-c", write_conf(tmp_path, CONF))
    req = login(raw_factory, srv, b"req", b"p1")
    svc = login(raw_factory, srv, b"svc2", b"p3")
    svc.send(b"SUB svc.b 1\r\n")
    t_ping_pong(svc)
    req.send(b"SUB _INBOX.s 9\r\nPUB svc.b _INBOX.s 1\r\nq\r\n")
    t_ping_pong(req)
    t_expect_exact(svc, b"MSG svc.b 1 _INBOX.s 1\r\nq\r\n")
    svc.send(b"PUB _INBOX.s 1\r\na\r\nPUB _INBOX.s 1\r\nb\r\nPUB _INBOX.s 1\r\nc\r\nPING\r\n")
    t_expect_exact(svc, denied(b"_INBOX.s") + b"PONG\r\n")
    t_expect_exact(req, b"MSG _INBOX.s 9 1\r\na\r\nMSG _INBOX.s 9 1\r\nb\r\n")
