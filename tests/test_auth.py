"""Authorization: single user/password and token, as nats-server 2.x does it.

Facts from Go 2.9.10 and 2.15.1 (both agree unless said otherwise):
* INFO says `"auth_required":true`; the first op must be CONNECT (Go's
  parser checks the first byte: any op not starting with C/c is refused with
  `-ERR 'Authorization Violation'` and a close).
* Wrong or missing credentials: `-ERR 'Authorization Violation'`, close, and
  an [ERR] line naming the client (`127.0.0.1:port - cid:N - authentication
  error`).  Every CONNECT is checked, a second one too.
* No CONNECT within the auth timeout (`authorization { timeout: 1 }`):
  `-ERR 'Authentication Timeout'` and close, after that many seconds.  Go
  logs this at debug level only.
* Secrets never reach the log: with -DV the traced CONNECT shows
  `"pass":"[REDACTED]"` (2.15 redacts `auth_token` too; 2.9 does not, so the
  token case leaves 2.9 out).
"""
from __future__ import annotations

import re
import time

import pytest

from conftest import RawConn, t_expect_exact, t_ping_pong, t_read_until_closed, write_conf

AUTH_VIOLATION = b"-ERR 'Authorization Violation'\r\n"
AUTH_TIMEOUT = b"-ERR 'Authentication Timeout'\r\n"
SECRET = "s3cr3t-Pw"
WRONG = "wr0ng-Pw"
TOKEN = "t0ken-XyZ"
WRONG_TOKEN = "t0ken-Bad"


def user_server(any_server_with, *extra):
    return any_server_with("--user", "derek", "--pass", SECRET, *extra)


def token_server(any_server_with, *extra):
    return any_server_with("--auth", TOKEN, *extra)


def connect(user=None, password=None, token=None, verbose=False) -> bytes:
    fields = ['"verbose":%s' % ("true" if verbose else "false"), '"pedantic":false']
    if user is not None:
        fields.append('"user":"%s"' % user)
    if password is not None:
        fields.append('"pass":"%s"' % password)
    if token is not None:
        fields.append('"auth_token":"%s"' % token)
    return b"CONNECT {" + ",".join(fields).encode() + b"}\r\n"


def wait_closed_log(srv, conn: RawConn):
    """The [ERR] line of the auth failure of `conn` (found by its port)."""
    port = conn.sock.getsockname()[1]
    return srv.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - [^\n]*\n" % port).group(0)


# -- user and password -------------------------------------------------------------


def test_info_says_auth_required(any_server_with, raw_factory):
    c = raw_factory(user_server(any_server_with), None)
    assert c.info["auth_required"] is True


def test_info_has_no_auth_required_without_auth(any_server_with, raw_factory):
    c = raw_factory(any_server_with(), None)
    assert "auth_required" not in c.info or c.info["auth_required"] is False


def test_good_user_and_password_connect_and_work(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    c = raw_factory(srv, connect("derek", SECRET, verbose=True) + b"SUB foo 1\r\n"
                    b"PUB foo 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, b"+OK\r\n+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\nPONG\r\n")


@pytest.mark.parametrize("user, password", [
    ("derek", WRONG), ("derek", None), (None, SECRET), ("other", SECRET), ("", ""),
    ("derek", SECRET.upper()), ("derek", SECRET + " "),
], ids=["wrong-pass", "no-pass", "no-user", "wrong-user", "empty", "case", "trailing-blank"])
def test_bad_credentials_get_authorization_violation_and_close(any_server_with, raw_factory,
                                                               user, password):
    srv = user_server(any_server_with)
    c = raw_factory(srv, connect(user, password) + b"PING\r\n")
    assert t_read_until_closed(c) == AUTH_VIOLATION


def test_token_does_not_stand_in_for_user_and_password(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    c = raw_factory(srv, connect(token=SECRET) + b"PING\r\n")
    assert t_read_until_closed(c) == AUTH_VIOLATION


@pytest.mark.parametrize("first", [b"PING\r\n", b"SUB foo 1\r\n", b"PUB foo 2\r\nhi\r\n",
                                   b"PONG\r\n", b"UNSUB 1\r\n", b"INFO {}\r\n",
                                   b"+OK\r\n", b"FOO\r\n"])
def test_first_op_other_than_connect_is_an_authorization_violation(any_server_with,
                                                                   raw_factory, first):
    srv = user_server(any_server_with)
    c = raw_factory(srv, first + connect("derek", SECRET) + b"PING\r\n")
    assert t_read_until_closed(c) == AUTH_VIOLATION


def test_first_op_starting_with_c_but_not_connect_is_a_parse_error(any_server_with,
                                                                   raw_factory):
    """Go's parser only checks that the first op *starts* with C before auth;
    `CONNX` then fails as an unknown op, not as an auth violation."""
    srv = user_server(any_server_with)
    c = raw_factory(srv, b"CONNX {}\r\n")
    assert t_read_until_closed(c) == b"-ERR 'Unknown Protocol Operation'\r\n"


def test_second_connect_with_wrong_password_is_a_violation(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    c = raw_factory(srv, connect("derek", SECRET))
    t_ping_pong(c)
    c.send(connect("derek", WRONG) + b"PING\r\n")
    assert t_read_until_closed(c) == AUTH_VIOLATION


def test_second_connect_with_good_password_is_fine(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    c = raw_factory(srv, connect("derek", SECRET))
    t_ping_pong(c)
    c.send(connect("derek", SECRET))
    t_ping_pong(c)


def test_auth_failure_does_not_affect_other_clients(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    good = raw_factory(srv, connect("derek", SECRET) + b"SUB foo 1\r\n")
    t_ping_pong(good)
    for _ in range(5):
        bad = raw_factory(srv, connect("derek", WRONG) + b"PUB foo 2\r\nno\r\n")
        assert t_read_until_closed(bad) == AUTH_VIOLATION
    pub = raw_factory(srv, connect("derek", SECRET) + b"PUB foo 3\r\nyes\r\n")
    t_ping_pong(pub)
    t_expect_exact(good, b"MSG foo 1 3\r\nyes\r\n")
    t_ping_pong(good)


# -- the auth timeout --------------------------------------------------------------


def timeout_server(any_server_with, tmp_path):
    return any_server_with("-c", write_conf(tmp_path, "authorization {\n  user: derek\n"
                                                      "  password: %s\n  timeout: 1\n}\n" % SECRET))


def test_no_connect_within_auth_timeout_gets_timeout_error_and_close(any_server_with, tmp_path,
                                                                     raw_factory):
    srv = timeout_server(any_server_with, tmp_path)
    c = raw_factory(srv, None)
    t0 = time.monotonic()
    assert t_read_until_closed(c, timeout=5) == AUTH_TIMEOUT
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed < 1.8, "closed after %.2f s, the timeout is 1 s" % elapsed


def test_half_sent_connect_still_times_out(any_server_with, tmp_path, raw_factory):
    srv = timeout_server(any_server_with, tmp_path)
    c = raw_factory(srv, b'CONNECT {"user":"derek","pass"')
    assert t_read_until_closed(c, timeout=5) == AUTH_TIMEOUT


def test_default_auth_timeout_is_two_seconds(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    c = raw_factory(srv, None)
    t0 = time.monotonic()
    assert t_read_until_closed(c, timeout=6) == AUTH_TIMEOUT
    elapsed = time.monotonic() - t0
    assert 1.7 <= elapsed < 3.0, "closed after %.2f s, the default is 2 s" % elapsed


def test_client_that_connected_in_time_outlives_the_timeout(any_server_with, tmp_path,
                                                            raw_factory):
    srv = timeout_server(any_server_with, tmp_path)
    good = raw_factory(srv, connect("derek", SECRET) + b"SUB foo 1\r\n")
    t_ping_pong(good)
    # A later silent client: once it is timed out, `good`'s timer has fired too.
    late = raw_factory(srv, None)
    assert t_read_until_closed(late, timeout=5) == AUTH_TIMEOUT
    good.send(b"PUB foo 2\r\nok\r\nPING\r\n")
    t_expect_exact(good, b"MSG foo 1 2\r\nok\r\nPONG\r\n")
    assert not good.closed


def test_auth_timeout_is_not_an_error_in_the_log(any_server_with, tmp_path, raw_factory):
    """Go logs the timeout with Debugf (sendErrAndDebug): at the default log
    level an idle port scanner leaves no [ERR] line."""
    srv = timeout_server(any_server_with, tmp_path)
    c = raw_factory(srv, None)
    assert t_read_until_closed(c, timeout=5) == AUTH_TIMEOUT
    # A failed login afterwards: its [ERR] line is the first one.
    bad = raw_factory(srv, connect("derek", WRONG))
    assert t_read_until_closed(bad) == AUTH_VIOLATION
    wait_closed_log(srv, bad)
    errors = [line for line in srv.log_text().splitlines() if "[ERR]" in line]
    assert len(errors) == 1 and str(bad.sock.getsockname()[1]) in errors[0], errors


# -- token -------------------------------------------------------------------------


def test_token_auth_good_token_works(any_server_with, raw_factory):
    srv = token_server(any_server_with)
    c = raw_factory(srv, None)
    assert c.info["auth_required"] is True
    c.send(connect(token=TOKEN) + b"SUB t 1\r\nPUB t 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, b"MSG t 1 1\r\nx\r\nPONG\r\n")


@pytest.mark.parametrize("fields", [
    dict(token=WRONG_TOKEN), dict(), dict(token=""), dict(user=TOKEN),
    dict(password=TOKEN), dict(user="derek", password=TOKEN), dict(token=TOKEN + "x"),
], ids=["wrong", "none", "empty", "as-user", "as-pass", "user-pass", "longer"])
def test_token_auth_bad_token_is_a_violation(any_server_with, raw_factory, fields):
    srv = token_server(any_server_with)
    c = raw_factory(srv, connect(**fields) + b"PING\r\n")
    assert t_read_until_closed(c) == AUTH_VIOLATION


def test_token_auth_from_config_file(any_server_with, tmp_path, raw_factory):
    srv = any_server_with("-c", write_conf(tmp_path, 'authorization { token: "%s" }\n' % TOKEN))
    good = raw_factory(srv, connect(token=TOKEN))
    t_ping_pong(good)
    bad = raw_factory(srv, connect(token=WRONG_TOKEN))
    assert t_read_until_closed(bad) == AUTH_VIOLATION


# -- what the log says ---------------------------------------------------------------


def test_failure_log_names_the_client_as_go_does(any_server_with, raw_factory):
    srv = user_server(any_server_with)
    c = raw_factory(srv, connect("derek", WRONG))
    assert t_read_until_closed(c) == AUTH_VIOLATION
    line = wait_closed_log(srv, c)
    # 2.15 adds ` - User "derek"` when a user name was sent.
    assert re.search(rb"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - authentication error"
                     rb"(?: - User \"derek\")?\n" % c.sock.getsockname()[1], line), line


@pytest.mark.parametrize("flags", [(), ("-D",), ("-DV",)], ids=["default", "debug", "trace"])
def test_password_never_reaches_the_log(any_server_with, raw_factory, flags):
    srv = user_server(any_server_with, *flags)
    bad = raw_factory(srv, connect("derek", WRONG))
    assert t_read_until_closed(bad) == AUTH_VIOLATION
    good = raw_factory(srv, connect("derek", SECRET))
    t_ping_pong(good)
    wait_closed_log(srv, bad)
    good.close()
    log = srv.log_text()
    assert "127.0.0.1:%d" % bad.sock.getsockname()[1] in log
    assert SECRET not in log and WRONG not in log, [
        line for line in log.splitlines() if SECRET in line or WRONG in line]
    if "-DV" in flags:
        assert '"pass":"[REDACTED]"' in log


@pytest.mark.parametrize("flags", [(), ("-DV",)], ids=["default", "trace"])
def test_token_never_reaches_the_log(any_server_with, raw_factory, flags):
    srv = token_server(any_server_with, *flags)
    if "-DV" in flags and "2.9" in srv.kind:
        pytest.skip("nats-server 2.9 traces auth_token in clear (2.10+ redacts it)")
    bad = raw_factory(srv, connect(token=WRONG_TOKEN))
    assert t_read_until_closed(bad) == AUTH_VIOLATION
    good = raw_factory(srv, connect(token=TOKEN))
    t_ping_pong(good)
    wait_closed_log(srv, bad)
    good.close()
    log = srv.log_text()
    assert "127.0.0.1:%d" % bad.sock.getsockname()[1] in log
    assert TOKEN not in log and WRONG_TOKEN not in log, [
        line for line in log.splitlines() if TOKEN in line or WRONG_TOKEN in line]
