"""max_payload, as nats-server 2.x enforces it (2.9 and 2.15 agree).

* INFO advertises it; the default is 1048576.
* The check is made on the PUB/HPUB control line (HPUB: the total size),
  before any payload is read: `-ERR 'Maximum Payload Violation'` and close.
* A payload of exactly max_payload is fine.
"""
from __future__ import annotations

from conftest import t_expect_exact, t_ping_pong, t_read_all, t_read_until_closed, write_conf

VIOLATION = b"-ERR 'Maximum Payload Violation'\r\n"
QUIET = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'


def small_server(any_server_with, tmp_path):
    return any_server_with("-c", write_conf(tmp_path, "max_payload: 100\n"))


def test_info_advertises_configured_max_payload(any_server_with, tmp_path, raw_factory):
    c = raw_factory(small_server(any_server_with, tmp_path), None)
    assert c.info["max_payload"] == 100


def test_pub_of_exactly_max_payload_is_delivered(any_server_with, tmp_path, raw_factory):
    c = raw_factory(small_server(any_server_with, tmp_path),
                    QUIET + b"SUB foo 1\r\nPUB foo 100\r\n" + b"x" * 100 + b"\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 100\r\n" + b"x" * 100 + b"\r\nPONG\r\n")


def test_pub_over_max_payload_sends_err_and_closes(any_server_with, tmp_path, raw_factory):
    c = raw_factory(small_server(any_server_with, tmp_path), QUIET + b"PUB foo 101\r\n")
    assert t_read_until_closed(c) == VIOLATION


def test_pub_with_reply_over_max_payload_sends_err_and_closes(any_server_with, tmp_path,
                                                              raw_factory):
    c = raw_factory(small_server(any_server_with, tmp_path), QUIET + b"PUB foo bar 5000\r\n")
    assert t_read_until_closed(c) == VIOLATION


def test_hpub_total_over_max_payload_sends_err_and_closes(any_server_with, tmp_path,
                                                          raw_factory):
    c = raw_factory(small_server(any_server_with, tmp_path), QUIET + b"HPUB foo 12 101\r\n")
    assert t_read_until_closed(c) == VIOLATION


def test_hpub_total_of_exactly_max_payload_is_delivered(any_server_with, tmp_path,
                                                        raw_factory):
    body = b"NATS/1.0\r\n\r\n" + b"y" * 88
    c = raw_factory(small_server(any_server_with, tmp_path),
                    QUIET + b"SUB foo 1\r\nHPUB foo 12 100\r\n" + body + b"\r\nPING\r\n")
    t_expect_exact(c, b"HMSG foo 1 12 100\r\n" + body + b"\r\nPONG\r\n")


def test_max_payload_violation_does_not_affect_other_clients(any_server_with, tmp_path,
                                                             raw_factory):
    srv = small_server(any_server_with, tmp_path)
    canary = raw_factory(srv, QUIET + b"SUB foo 1\r\n")
    t_ping_pong(canary)
    bad = raw_factory(srv, QUIET + b"PUB foo 1000\r\n")
    assert t_read_until_closed(bad) == VIOLATION
    canary.send(b"PUB foo 2\r\nok\r\nPING\r\n")
    t_expect_exact(canary, b"MSG foo 1 2\r\nok\r\nPONG\r\n")


def test_default_max_payload_is_1mb_and_enforced(any_server, raw_factory):
    c = raw_factory(any_server, QUIET + b"PUB foo 1048577\r\n")
    assert t_read_until_closed(c) == VIOLATION


def test_default_max_payload_of_1mb_is_delivered(any_server, raw_factory):
    payload = bytes(range(256)) * 4096  # 1048576 bytes
    c = raw_factory(any_server, QUIET + b"SUB foo 1\r\nPUB foo 1048576\r\n" + payload
                    + b"\r\nPING\r\n")
    t_expect_exact(c, b"MSG foo 1 1048576\r\n" + payload + b"\r\nPONG\r\n", timeout=10)
    assert t_read_all(c, 0.1) == b""
