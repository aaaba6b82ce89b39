"""CONNECT verbose and pedantic, as nats-server 2.x answers them (2.9 and 2.15 agree).

* verbose: `+OK` after CONNECT, SUB, UNSUB, PUB and HPUB (even UNSUB of an
  unknown sid, even a re-SUB of a sid in use); none after PING, PONG or a
  command that got `-ERR`.  A PUB's `+OK` precedes the MSG it causes.
* Before CONNECT a client is verbose and pedantic; CONNECT changes only the
  fields it sends (`CONNECT {}` keeps both on).
* pedantic: a PUB to a wildcard subject gets `-ERR 'Invalid Publish Subject'`
  *and is still delivered*; a PUB to a subject with an empty token gets the
  same error and is dropped.  The reply subject is not checked.
  Without pedantic, wildcard PUBs are delivered silently and empty-token
  subjects are dropped silently.
"""
from __future__ import annotations

from conftest import t_expect_exact, t_ping_pong, t_read_all

OK = b"+OK\r\n"
BAD_PUB = b"-ERR 'Invalid Publish Subject'\r\n"


def test_verbose_ok_after_connect_sub_pub_unsub_not_after_ping(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\n'
                                b"UNSUB 1\r\nPING\r\n")
    t_expect_exact(c, OK + OK + OK + b"MSG foo 1 2\r\nhi\r\n" + OK + b"PONG\r\n")
    assert t_read_all(c, 0.1) == b""


def test_verbose_ok_after_hpub_but_not_after_pong(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true,"headers":true}\r\nSUB foo 1\r\n'
                                b"HPUB foo 12 13\r\nNATS/1.0\r\n\r\ny\r\nPONG\r\nPING\r\n")
    t_expect_exact(c, OK + OK + OK + b"HMSG foo 1 12 13\r\nNATS/1.0\r\n\r\ny\r\nPONG\r\n")


def test_verbose_ok_for_unknown_unsub_and_reused_sid(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true}\r\nUNSUB 7\r\nSUB a 1\r\nSUB b 1\r\n'
                                b"PING\r\n")
    t_expect_exact(c, OK * 4 + b"PONG\r\n")


def test_verbose_no_ok_after_invalid_subject(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true}\r\nSUB foo..x 2\r\nPING\r\n')
    t_expect_exact(c, OK + b"-ERR 'Invalid Subject'\r\nPONG\r\n")


def test_verbose_false_sends_no_ok(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\n'
                                b"UNSUB 1\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_client_is_verbose_before_connect(any_server, raw_factory):
    c = raw_factory(any_server, b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, OK + OK + b"MSG foo 1 2\r\nhi\r\nPONG\r\n")


def test_client_is_pedantic_before_connect(any_server, raw_factory):
    c = raw_factory(any_server, b"SUB > 1\r\nPUB foo.* 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, OK + BAD_PUB + OK + b"MSG foo.* 1 1\r\nx\r\nPONG\r\n")


def test_empty_connect_keeps_verbose_and_pedantic_on(any_server, raw_factory):
    c = raw_factory(any_server, b"CONNECT {}\r\nSUB > 1\r\nPUB foo.* 1\r\nx\r\nPING\r\n")
    t_expect_exact(c, OK + OK + BAD_PUB + OK + b"MSG foo.* 1 1\r\nx\r\nPONG\r\n")


def test_connect_changes_only_the_fields_it_sends(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true,"pedantic":false}\r\n'
                                b'CONNECT {"pedantic":true}\r\nSUB > 1\r\n'
                                b"PUB foo.* 1\r\nx\r\nPING\r\n")
    # verbose stays on through the second CONNECT, pedantic is now on.
    t_expect_exact(c, OK + OK + OK + BAD_PUB + OK + b"MSG foo.* 1 1\r\nx\r\nPONG\r\n")
    # verbose off (this CONNECT gets no +OK), pedantic still on.  (A CONNECT
    # after SUB drops the subs on 2.15 but not on 2.9, see
    # test_second_connect_drops_existing_subscriptions, hence UNSUB/SUB here.)
    c.send(b'UNSUB 1\r\nCONNECT {"verbose":false}\r\nSUB > 2\r\nPUB foo.> 1\r\ny\r\nPING\r\n')
    t_expect_exact(c, OK + BAD_PUB + b"MSG foo.> 2 1\r\ny\r\nPONG\r\n")


def test_second_connect_drops_existing_subscriptions(any_server, raw_factory):
    # Go 2.9 and 2.15 differ.  2.9.10 keeps the subscriptions over a second
    # CONNECT; 2.15.1 drops them (an old sid can then be reused):
    #   2.9:  MSG foo 1 1\r\nx\r\nPONG\r\n
    #   2.15: PONG\r\n
    # gnatsd.py is held to 2.15.
    c = raw_factory(any_server, b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nPING\r\n')
    t_expect_exact(c, b"PONG\r\n")
    c.send(b'CONNECT {"verbose":false}\r\nPUB foo 1\r\nx\r\nPING\r\n')
    if any_server.kind.endswith("2.9"):
        t_expect_exact(c, b"MSG foo 1 1\r\nx\r\nPONG\r\n")
        return
    t_expect_exact(c, b"PONG\r\n")
    c.send(b"SUB bar 1\r\nPUB bar 1\r\ny\r\nPUB foo 1\r\nz\r\nPING\r\n")
    t_expect_exact(c, b"MSG bar 1 1\r\ny\r\nPONG\r\n")


def test_connect_verbose_false_leaves_pedantic_on(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false}\r\nSUB > 1\r\nPUB > 1\r\nx\r\nPING\r\n')
    t_expect_exact(c, BAD_PUB + b"MSG > 1 1\r\nx\r\nPONG\r\n")


def test_pedantic_pub_to_wildcard_sends_err_but_still_delivers(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":true}\r\nSUB > 1\r\n')
    for subj in (b"foo.*", b"foo.>", b">", b"*", b"foo.*.bar"):
        c.send(b"PUB %s 1\r\nx\r\nPING\r\n" % subj)
        t_expect_exact(c, BAD_PUB + b"MSG %s 1 1\r\nx\r\nPONG\r\n" % subj)


def test_pedantic_accepts_wildcard_chars_inside_tokens(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":true}\r\nSUB > 1\r\n'
                                b"PUB a> 1\r\nx\r\nPUB a*.b 1\r\ny\r\nPING\r\n")
    t_expect_exact(c, b"MSG a> 1 1\r\nx\r\nMSG a*.b 1 1\r\ny\r\nPONG\r\n")


def test_pedantic_pub_to_empty_token_subject_sends_err_and_drops(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":true}\r\nSUB > 1\r\n'
                                b"PUB foo..bar 1\r\n1\r\nPUB .foo 1\r\n2\r\nPUB foo. 1\r\n3\r\n"
                                b"PING\r\n")
    t_expect_exact(c, BAD_PUB * 3 + b"PONG\r\n")
    t_ping_pong(c)


def test_pedantic_does_not_check_reply_subject(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":true}\r\nSUB foo 1\r\n'
                                b"PUB foo r.* 1\r\nx\r\nPUB foo r..x 1\r\ny\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 r.* 1\r\nx\r\nMSG foo 1 r..x 1\r\ny\r\nPONG\r\n")


def test_non_pedantic_pub_to_wildcard_is_delivered_without_error(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB > 1\r\n'
                                b"SUB * 2\r\nPUB foo.* 1\r\nx\r\nPUB foo.> 1\r\ny\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo.* 1 1\r\nx\r\nMSG foo.> 1 1\r\ny\r\nPONG\r\n")


def test_verbose_pedantic_wildcard_pub_sends_err_then_ok_then_msg(any_server, raw_factory):
    c = raw_factory(any_server, b'CONNECT {"verbose":true,"pedantic":true}\r\nSUB foo.* 1\r\n'
                                b"PUB foo.* 2\r\nhi\r\nPING\r\n")
    t_expect_exact(c, OK + OK + BAD_PUB + OK + b"MSG foo.* 1 2\r\nhi\r\nPONG\r\n")
