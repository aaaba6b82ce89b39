"""Every crash or divergence the fuzzers found, as a plain test.

Each case names the fuzzer that found it and the fix (tests/fuzz/RECORD.md
has the story).  They drive the same live in-process server the fuzzers
use, so split reads happen exactly where the case says.
"""
from __future__ import annotations

import json
import random
import threading

import pytest

from conftest import import_gnatsd
from fuzzing import capture_errors, release_errors
from test_fuzz_client_proto import Peer as ClientPeer
from test_fuzz_route_proto import CLUSTER, Peer as RoutePeer

g = import_gnatsd()

UNKNOWN_OP = g.err_proto(g.ERR_UNKNOWN_PROTOCOL)
MAX_CONTROL_LINE = g.err_proto(g.ERR_MAX_CONTROL_LINE)


@pytest.fixture(scope="module")
def server():
    srv = g.Server(g.Options(host="127.0.0.1", port=-1, cluster_host="127.0.0.1",
                             cluster_port=-1, cluster_name=CLUSTER)).start()
    srv.errors = capture_errors(g)
    yield srv
    release_errors(g, srv.errors)
    srv.shutdown()
    random.seed()


def client_answer(server, chunks) -> tuple:
    """(bytes after INFO, closed by the input) for `chunks` as separate reads."""
    peer = ClientPeer(server)
    closed = peer.feed(chunks, random.getrandbits(32))
    out = peer.output()
    server.errors.check()
    return out, closed[0]


def route_answer(server, chunks) -> tuple:
    peer = RoutePeer(server)
    closed = peer.feed(chunks)
    out = peer.output()
    server.errors.check()
    return out, closed


def split_each_byte(data: bytes) -> list:
    return [data[i:i + 1] for i in range(len(data))]


# -- client protocol (test_fuzz_client_proto.py) ----------------------------------


@pytest.mark.parametrize("chunks", [
    [b"PUB foo 1\r\n\r\n"],
    split_each_byte(b"PUB foo 1\r\n\r\n"),
    [b"PUB foo 1\r\n", b"x", b"y"],
    [b'CONNECT {"verbose":false}\r\nSUB foo 1\r\nPUB foo 2\r\nhi', b"X"],
])
def test_wrong_byte_after_payload_fails_at_once_even_split(server, chunks):
    # Found by the client fuzzer: split reads held the error back until
    # the whole op (payload + CRLF) had arrived, which might be never.
    # Go's MSG_END_R fails on the first wrong byte.
    out, closed = client_answer(server, chunks)
    assert out.endswith(UNKNOWN_OP) and closed


@pytest.mark.parametrize("op", [b"CONNECT ", b"INFO "])
@pytest.mark.parametrize("nesting", [b"[" * 3000, b'{"a":' * 1500, b"[" * 3000 + b"]" * 3000])
def test_deeply_nested_json_is_a_parse_error_not_a_crash(server, op, nesting):
    # Found by the client fuzzer: json.loads raised RecursionError, which
    # the parser did not catch ("Unexpected error, closing connection").
    out, closed = client_answer(server, [op + nesting + b"\r\n"])
    assert closed


@pytest.mark.parametrize("split", [False, True])
def test_long_unknown_op_is_unknown_even_split(server, split):
    # Found by the client fuzzer: split before its newline, a long line of
    # an unknown op got 'Maximum Control Line Exceeded'; whole (and in Go,
    # split or not) it is 'Unknown Protocol Operation'.
    data = b"FOO " + b"a" * 5000 + b"\r\n"
    chunks = [data[:4500], data[4500:]] if split else [data]
    out, closed = client_answer(server, chunks)
    assert out == UNKNOWN_OP and closed


def test_long_sub_line_is_still_over_the_control_line_limit(server):
    data = b"SUB " + b"a" * 5000 + b" 1\r\n"
    for chunks in ([data], [data[:4500], data[4500:]]):
        out, closed = client_answer(server, chunks)
        assert out == MAX_CONTROL_LINE and closed


# -- route protocol (test_fuzz_route_proto.py) ------------------------------------


@pytest.mark.parametrize("fields", [
    {"server_id": None, "ip": True},
    {"server_id": 7},
    {"server_id": "OTHER", "ip": ["nats://127.0.0.1:1"]},
    {"cluster": 1},
    {"connect_urls": 5},
    {"connect_urls": [1, 2]},
    {"headers": "yes"},
    {"route_account": {}},
])
def test_route_info_with_wrong_json_types_closes_quietly(server, fields):
    # Found by the route fuzzer: INFO {"ip": true} (and other fields of the
    # wrong type) raised AttributeError/TypeError in learn_route,
    # reconcile_cluster_name or connect_urls.  Go's json.Unmarshal refuses
    # the line; so do we (a parse error closes the route).
    out, closed = route_answer(server, [b"INFO " + json.dumps(fields).encode() + b"\r\n"])
    assert closed and out == b""


@pytest.mark.parametrize("fields", [{"cluster": 5}, {"user": 1}, {"cluster_dynamic": "x"}])
def test_route_connect_with_wrong_json_types_closes_quietly(server, fields):
    out, closed = route_answer(server, [b"CONNECT " + json.dumps(fields).encode() + b"\r\n"])
    assert closed and out == b""


@pytest.mark.parametrize("op", [b"CONNECT ", b"INFO "])
def test_route_deeply_nested_json_is_a_parse_error(server, op):
    out, closed = route_answer(server, [op + b"[" * 3000 + b"\r\n"])
    assert closed


@pytest.mark.parametrize("split", [False, True])
def test_route_long_unknown_op_is_unknown_even_split(server, split):
    # Found by the route fuzzer: over 64 KiB of an unknown op without a
    # newline got 'Maximum Control Line Exceeded'; with its newline it
    # is 'Unknown Protocol Operation' (Go: at once, either way).
    data = b"R" * 70000 + b"\r\n"
    chunks = [data[:69000], data[69000:]] if split else [data]
    out, closed = route_answer(server, chunks)
    assert out == UNKNOWN_OP and closed


@pytest.mark.parametrize("data", [b" " + b"R" * 70000 + b"\r\n", b" RS+ $G foo\r\n", b"\r\n"],
                         ids=["long", "short", "blank"])
@pytest.mark.parametrize("split", [False, True])
def test_route_line_starting_with_a_space_is_an_unknown_op(server, data, split):
    # Found by the route fuzzer (2026-11-27, 30-minute run): a space and
    # 70,000 bytes, split before its newline, got 'Maximum Control Line
    # Exceeded', while the whole line was skipped as an empty op.  Go's
    # parser fails on the first byte of a line that starts with a space
    # or is blank; so do we now, whole or split.
    chunks = [data[:len(data) - 5], data[len(data) - 5:]] if split else [data]
    out, closed = route_answer(server, chunks)
    assert out == UNKNOWN_OP and closed


def test_gossiped_route_host_name_is_not_resolved_on_the_loop_thread(server, monkeypatch):
    # Found by the route fuzzer: INFO {"ip": "junk://"} from a peer made the
    # server dial "junk:6222", and the DNS lookup blocked the event loop for
    # seconds (every client and route stalls meanwhile).  Go dials in a
    # goroutine.  Here getaddrinfo is replaced by one that fails at once
    # and notes the thread it ran on.
    import socket as socket_module
    threads = []
    real = socket_module.getaddrinfo

    def fake(host, *args, **kw):
        if host == "example.invalid":
            threads.append(threading.current_thread())
            raise socket_module.gaierror(-2, "Name or service not known")
        return real(host, *args, **kw)
    monkeypatch.setattr(socket_module, "getaddrinfo", fake)
    info = {"server_id": "OTHER", "ip": "nats-route://example.invalid:6222/"}
    route_answer(server, [b"INFO " + json.dumps(info).encode() + b"\r\n"])
    assert threads and server.thread not in threads


# -- config parser (atheris_config.py) --------------------------------------------


def config_error(tmp_path, text: str):
    """The ConfigError that options_from_config raises for a file of `text`."""
    path = tmp_path / "main.conf"
    path.write_text(text)
    with pytest.raises(g.ConfigError) as info:
        g.options_from_config(str(path))
    return info.value


@pytest.mark.parametrize("content, why", [
    ('port: 4222\ninclude "inc/u\x00conf"\n', "invalid argument"),
    ("port: 4222\ninclude latin1.conf\n", "not UTF-8"),
])
def test_include_of_an_impossible_file_is_a_config_error(tmp_path, content, why):
    # Found by atheris: a NUL byte in an include name raised ValueError
    # ("embedded null byte") from open(), and an included file that is not
    # UTF-8 raised UnicodeDecodeError; both must be ConfigErrors with a line.
    (tmp_path / "latin1.conf").write_bytes(b"name: caf\xe9\n")
    err = config_error(tmp_path, content)
    assert err.line == 2 and why in err.message


@pytest.mark.parametrize("key", ["lame_duck_duration", "lame_duck_Duration", "LAME_DUCK_DURATION"])
def test_short_lame_duck_duration_error_names_its_line_whatever_the_key_case(tmp_path, key):
    # Found by atheris: keys are case-insensitive, but the error looked up
    # the position of the lower-case key only, so `lame_duck_Duration "2s"`
    # gave a ConfigError without a line.
    err = config_error(tmp_path, '# s\n%s "2s"\n' % key)
    assert err.line == 2 and "minimum is 30 seconds" in err.message


@pytest.mark.parametrize("key", ["lame_duck_duration", "ping_interval", "write_deadline"])
def test_empty_duration_is_a_config_error(tmp_path, key):
    # Found by the config fuzzer: `lame_duck_duration: ""` raised IndexError
    # (`"" in "+-"` is true, then text[0]).  Go: time: invalid duration "".
    err = config_error(tmp_path, 'port: 4222\n%s: ""\n' % key)
    assert err.line == 2
    assert err.message == 'error parsing %s: time: invalid duration ""' % key
