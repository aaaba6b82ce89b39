"""Lame duck mode (SIGUSR2), as nats-server 2.x does it.

The server stops accepting, sends protocol-1 clients an INFO with
"ldm":true so they can move elsewhere, waits lame_duck_grace_period, closes
the clients spread over the rest of lame_duck_duration, and exits.
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import nats
import pytest

from conftest import GO_SERVERS, RawConn, start_gnatsd, start_go, wait_mesh, write_conf

# Go's shortest lame_duck_duration is 30 s; clients are closed at most 1 s apart.
CONF = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "500ms"\n'


def start(kind, *args):
    if kind == "gnatsd":
        return start_gnatsd(*args)
    return start_go(*args, version=kind[2:])


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_sigusr2_informs_clients_closes_them_and_exits(kind, tmp_path):
    srv = start(kind, "-c", write_conf(tmp_path, CONF))
    try:
        clients = []
        for proto in (1, 1, 0):
            c = RawConn(srv.host, srv.port)
            c.read_info()
            c.send(b'CONNECT {"verbose":false,"protocol":%d}\r\nPING\r\n' % proto)
            c.expect(rb"(INFO [^\r]*\r\n)?PONG\r\n")
            clients.append(c)
        t0 = time.monotonic()
        srv.signal(signal.SIGUSR2)
        srv.wait_for_log(r"\[INF\] Entering lame duck mode, stop accepting new clients")
        for c in clients[:2]:   # protocol 1: an INFO with ldm
            # (Go 2.12+ first sends its connect_info INFO; skip INFOs without ldm.)
            for _ in range(3):
                m = c.expect(rb"(?:PING\r\n)?INFO (\{.*?\}) \r\n", timeout=5)
                if "ldm" in json.loads(m.group(1)):
                    break
            assert json.loads(m.group(1))["ldm"] is True
        with pytest.raises(OSError):   # no longer accepting
            socket.create_connection((srv.host, srv.port), timeout=2).recv(1)
        for c in clients:
            c.read_until_closed(timeout=10)
        assert srv.proc.wait(10) == 0
        took = time.monotonic() - t0
        assert 0.4 < took < 6, took
        assert "Closing existing clients" in srv.log_text()
    finally:
        srv.kill()
        for c in clients:
            c.close()


WS_LISTEN_RE = rb"Listening for websocket clients on ws://\S+:(\d+)"


@pytest.mark.parametrize("kind", ["gnatsd", "go2.9", "go2.15"])
def test_the_lame_duck_info_is_each_client_s_and_lists_the_other_nodes(kind,
                                                                        cluster_factory):
    """Go's sendLDMToClients: each protocol-1 client past its first PONG
    gets its own INFO (client_id; a websocket client's names the websocket
    port) with ldm, and connect_urls of the other nodes only, client or
    websocket ones by its kind; a client before its first PING gets none."""
    if kind != "gnatsd" and kind[2:] not in GO_SERVERS:
        pytest.skip("Go nats-server %s is not installed" % kind[2:])
    from test_websocket import WsConn
    ws_block = "websocket {\n  host: 127.0.0.1\n  port: -1\n  no_tls: true\n}\n"
    cluster = cluster_factory("ldm")
    a = cluster.start(kind, top=CONF + ws_block)
    b = cluster.start(kind, routes=[a], top=ws_block)
    wait_mesh([a, b])
    a_ws, b_ws = (int(n.wait_for_log(WS_LISTEN_RE).group(1)) for n in (a, b))
    hello = b'CONNECT {"verbose":false,"protocol":1}\r\nPING\r\n'
    tcp, ws = RawConn(a.host, a.port), WsConn(a_ws)
    early = RawConn(a.host, a.port)
    for c in (tcp, ws, early):
        c.cid = c.read_info()["client_id"]
    for c in (tcp, ws):
        c.send(hello)
        c.expect(rb"(INFO [^\r]*\r\n)?PONG\r\n")
    early.send(b'CONNECT {"verbose":true,"protocol":1}\r\n')
    early.expect(rb"\+OK\r\n")     # (its CONNECT is in; a first PING is not)
    a.signal(signal.SIGUSR2)
    # (Go 2.9 gives a websocket client the client port's host and port.)
    ws_port = a.port if kind == "go2.9" else a_ws
    for c, port, urls in ((tcp, a.port, [b.port]), (ws, ws_port, [b_ws])):
        while True:
            info = json.loads(c.expect(rb"(?:PING\r\n)?INFO (\{.*?\}) \r\n", timeout=5).group(1))
            if "ldm" in info:
                break
        assert info["ldm"] is True and info["client_id"] == c.cid and info["port"] == port
        assert info["connect_urls"] == ["127.0.0.1:%d" % p for p in urls]
    assert b"ldm" not in early.read_until_closed(timeout=10)
    tcp.close()
    ws.close()


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_lame_duck_closes_websocket_connections_not_yet_upgraded(kind, tmp_path):
    """Go closes its websocket HTTP server: a connection that has not asked
    to upgrade yet is closed, and cannot become a client."""
    from test_websocket import handshake_request
    srv = start(kind, "-c", write_conf(tmp_path, CONF + "websocket {\n  host: 127.0.0.1\n"
                                                  "  port: -1\n  no_tls: true\n}\n"))
    try:
        ws_port = int(srv.wait_for_log(WS_LISTEN_RE).group(1))
        c = RawConn("127.0.0.1", ws_port)
        c.send(b"GET / HT")         # (an unfinished request: still HTTP)
        srv.signal(signal.SIGUSR2)
        srv.wait_for_log(r"\[INF\] Entering lame duck mode, stop accepting new clients")
        try:
            c.send(handshake_request(ws_port)[8:])
        except OSError:
            pass                    # (closed already)
        assert c.read_until_closed(timeout=5) == b""
    finally:
        srv.kill()


@pytest.mark.parametrize("kind", ["gnatsd", "go2.15"])
def test_lame_duck_duration_below_30s_is_a_config_error(kind, tmp_path):
    import subprocess
    import sys
    from conftest import GNATSD, go_server_path
    conf = write_conf(tmp_path, 'lame_duck_duration: "2s"\n')
    argv = [sys.executable, GNATSD] if kind == "gnatsd" else [go_server_path("2.15")]
    r = subprocess.run(argv + ["-c", conf], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "invalid lame_duck_duration of 2s, minimum is 30 seconds" in r.stderr


def test_nats_py_client_moves_to_the_other_server(tmp_path):
    a = start_gnatsd("-c", write_conf(tmp_path, CONF))
    b = start_gnatsd()

    async def run():
        reconnected = asyncio.Event()

        async def on_reconnect():
            reconnected.set()

        nc = await nats.connect(servers=[a.url, b.url], dont_randomize=True,
                                reconnect_time_wait=0.1, reconnected_cb=on_reconnect,
                                max_reconnect_attempts=20)
        try:
            sub = await nc.subscribe("moved")
            await nc.flush()
            assert nc.connected_url.port == a.port
            a.signal(signal.SIGUSR2)
            await asyncio.wait_for(reconnected.wait(), 10)
            assert nc.connected_url.port == b.port
            await nc.publish("moved", b"ok")
            msg = await asyncio.wait_for(sub.next_msg(), 5)
            assert msg.data == b"ok"
        finally:
            await nc.close()

    try:
        asyncio.run(run())
        assert a.proc.wait(10) == 0
    finally:
        a.kill()
        b.stop()
