"""no_auth_user: a client that sends no credentials is that user (Go 2.x)."""
from __future__ import annotations

import subprocess
import sys

from conftest import GNATSD, t_expect_exact, t_read_until_closed, write_conf

CONF = ('no_auth_user: bob\n'
        'authorization { users = [ {user: alice, password: pa},\n'
        '  {user: bob, password: pb, permissions: {publish: "pub.>"}} ] }\n')
PUB_X_DENIED = b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n"


def test_client_without_connect_is_the_no_auth_user(any_server_with, raw_factory, tmp_path):
    srv = any_server_with("-c", write_conf(tmp_path, CONF))
    c = raw_factory(srv, b"SUB x 1\r\nPUB x 1\r\na\r\nPUB pub.x 1\r\nb\r\nPING\r\n")
    # Verbose and pedantic until CONNECT; bob may not publish to x.
    t_expect_exact(c, b"+OK\r\n" + PUB_X_DENIED + b"+OK\r\nPONG\r\n")


def test_connect_without_credentials_is_the_no_auth_user(any_server_with, raw_factory, tmp_path):
    srv = any_server_with("-c", write_conf(tmp_path, CONF))
    c = raw_factory(srv, b'CONNECT {"verbose":false}\r\nPUB x 1\r\na\r\nPING\r\n')
    t_expect_exact(c, PUB_X_DENIED + b"PONG\r\n")


def test_credentials_still_select_another_user(any_server_with, raw_factory, tmp_path):
    srv = any_server_with("-c", write_conf(tmp_path, CONF))
    c = raw_factory(srv, b'CONNECT {"verbose":false,"user":"alice","pass":"pa"}\r\n'
                         b'PUB x 1\r\na\r\nPING\r\n')
    t_expect_exact(c, b"PONG\r\n")
    bad = raw_factory(srv, b'CONNECT {"verbose":false,"user":"alice","pass":"no"}\r\n')
    assert t_read_until_closed(bad) == b"-ERR 'Authorization Violation'\r\n"


def test_unknown_no_auth_user_stops_the_server(tmp_path):
    conf = write_conf(tmp_path, 'no_auth_user: zed\n'
                                'authorization { users = [ {user: alice, password: pa} ] }\n')
    r = subprocess.run([sys.executable, GNATSD, "-c", conf], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert 'no_auth_user: "zed" not present as user' in r.stderr
