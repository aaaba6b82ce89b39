"""Embedding (issue 14): gnatsd.run() and run_cluster() in this process,
the fault-injection methods, and what two servers in one process must not
share.  The servers are real (sockets, loop threads); the clients are raw
sockets and nats-py.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
import threading
import time

import pytest

from conftest import RawConn, import_gnatsd, t_expect, t_ping_pong, t_read_until_closed, write_conf

gnatsd = import_gnatsd()

pytestmark = pytest.mark.timeout(120)


def connect(server) -> RawConn:
    conn = RawConn(server.host, server.port)
    conn.info = conn.read_info()
    conn.send(b'CONNECT {"verbose":false}\r\n')
    return conn


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def wait_for(fact, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not fact():
        assert time.monotonic() < deadline, "timed out waiting for " + (what or repr(fact))
        time.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_run_serves_and_shutdown_closes_the_port():
    server = gnatsd.run()
    try:
        assert server.is_running
        assert server.host == "127.0.0.1" and server.port > 0
        assert server.client_url == server.url == "nats://127.0.0.1:%d" % server.port
        conn = connect(server)
        assert conn.info["port"] == server.port
        t_ping_pong(conn)
    finally:
        server.shutdown()
    assert not server.is_running
    assert port_is_closed(server.port)
    server.shutdown()        # twice is harmless


def test_nats_py_in_the_same_event_loop_thread():
    """`async with gnatsd.run()`: the server's loop has a thread of its own,
    so a client on the test's event loop is served."""
    async def main():
        async with gnatsd.run() as server:
            import nats
            nc = await nats.connect(server.client_url)
            sub = await nc.subscribe("greet.*")
            await nc.publish("greet.joe", b"hello", headers={"k": "v"})
            msg = await sub.next_msg(timeout=2)
            await nc.close()
            return msg, server
    msg, server = asyncio.run(main())
    assert (msg.subject, msg.data, msg.headers) == ("greet.joe", b"hello", {"k": "v"})
    assert not server.is_running


def test_keywords_are_options():
    with gnatsd.run(max_payload=2048, server_name="emb", username="u", password="p") as server:
        conn = RawConn(server.host, server.port)
        info = conn.read_info()
        assert (info["max_payload"], info["server_name"], info["auth_required"]) == \
            (2048, "emb", True)
        conn.send(b'CONNECT {"verbose":false,"user":"u","pass":"bad"}\r\n')
        t_expect(conn, rb"-ERR 'Authorization Violation'\r\n")


def test_config_path_and_port_none_takes_the_files_port(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = write_conf(tmp_path, "port: %d\nmax_payload: 4096\nserver_name: fromfile\n" % port)
    with gnatsd.run(config_path=conf, port=None) as server:
        assert server.port == port
        info = RawConn(server.host, server.port).read_info()
        assert (info["max_payload"], info["server_name"]) == (4096, "fromfile")
    with gnatsd.run(config_path=conf) as server:       # port=0: a free one instead
        assert server.port != port


@pytest.mark.parametrize("kwargs, message", [
    ({"jetstream": True}, "JetStream is not supported by gnatsd.py"),
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"server_name": "a b"}, "server name cannot contain spaces"),
    ({"no_auth_user": "ghost"}, 'no_auth_user: "ghost" not present as user or nkey in '
                                'authorization block or account configuration'),
])
def test_bad_options_raise_server_error(kwargs, message):
    with pytest.raises(gnatsd.ServerError) as err:
        gnatsd.run(**kwargs)
    assert str(err.value) == message


def test_store_dir_is_ignored_as_go_ignores_it(tmp_path):
    with gnatsd.run(store_dir=str(tmp_path / "js")) as server:
        t_ping_pong(connect(server))
    assert not (tmp_path / "js").exists()


def test_config_error_raises_server_error_naming_the_line(tmp_path):
    conf = write_conf(tmp_path, "port: 4222\nbogus_key: 1\n")
    with pytest.raises(gnatsd.ServerError) as err:
        gnatsd.run(config_path=conf)
    assert str(err.value) == '%s:2:1: unknown field "bogus_key"' % conf


def test_port_in_use_raises_go_words_and_leaks_nothing():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fds, threads = open_fds(), threading.active_count()
        with pytest.raises(gnatsd.ServerError) as err:
            gnatsd.run(port=port)
        assert str(err.value) == ('Error listening on port: 127.0.0.1:%d, "listen tcp '
                                  '127.0.0.1:%d: bind: address already in use"' % (port, port))
        assert (open_fds(), threading.active_count()) == (fds, threads)


def test_start_and_stop_200_times_leaks_no_thread_fd_or_port():
    """With a client, monitoring and a route port each time."""
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    # (Garbage an earlier test in this worker left in a cycle, an unclosed
    # aiohttp session, say, would close its socket mid-test: collect it first.)
    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    ports = []
    for _ in range(200):
        server = gnatsd.run(http_port=-1, cluster_port=-1, cluster_name="c")
        conn = connect(server)
        t_ping_pong(conn)
        ports.append((server.port, server.cluster_port, server.server.monitor.port))
        server.shutdown()
        t_read_until_closed(conn)
        conn.close()
    # Monitor request threads end on their own: wait for that fact.
    wait_for(lambda: threading.active_count() <= threads, what="threads to end: %s"
             % threading.enumerate())
    assert open_fds() == fds
    for port in ports[-1]:
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers


def test_two_servers_in_one_process_keep_their_logs_apart(tmp_path):
    module_handlers = list(gnatsd.log.handlers)
    one = gnatsd.run(server_name="one", debug=True, log_file=str(tmp_path / "one.log"))
    two = gnatsd.run(server_name="two", debug=True, log_file=str(tmp_path / "two.log"))
    try:
        for server in (one, two):
            t_ping_pong(connect(server))
        a, b = connect(one), connect(two)
        a.send(b"SUB only.one 1\r\nPING\r\n")
        t_expect(a, rb"PONG\r\n")
        b.send(b"PUB only.one 1\r\nx\r\nPING\r\n")  # a different server: not delivered
        t_expect(b, rb"PONG\r\n")
        a.send(b"PING\r\n")
        t_expect(a, rb"PONG\r\n")
        assert b"MSG" not in bytes(a.buf)
    finally:
        one.shutdown()
        two.shutdown()
    logs = {name: (tmp_path / (name + ".log")).read_text() for name in ("one", "two")}
    for name, other in (("one", two), ("two", one)):
        assert "Name:     %s" % name in logs[name]
        assert "Listening for client connections on 127.0.0.1:%d" % other.port not in logs[name]
        assert "[DBG]" in logs[name] and "Server Exiting.." in logs[name]
    assert gnatsd.log.handlers == module_handlers
    open_files = {os.readlink("/proc/self/fd/" + fd) for fd in os.listdir("/proc/self/fd")
                  if os.path.exists("/proc/self/fd/" + fd)}
    assert not {str(tmp_path / "one.log"), str(tmp_path / "two.log")} & open_files


def test_a_log_file_that_cannot_open_raises_server_error(tmp_path):
    with pytest.raises(gnatsd.ServerError) as err:
        gnatsd.run(log_file=str(tmp_path / "no" / "such.log"))
    assert str(err.value) == "error opening file: open %s: no such file or directory" % (
        tmp_path / "no" / "such.log")


def test_start_on_a_running_server_is_refused():
    with gnatsd.run() as server:
        with pytest.raises(gnatsd.ServerError, match="already running"):
            server.start()
        t_ping_pong(connect(server))


def test_records_of_a_quiet_server_reach_the_programs_logging(caplog):
    caplog.set_level(logging.INFO, logger="gnatsd")
    with gnatsd.run() as server:
        pass
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gnatsd")]
    assert "Listening for client connections on 127.0.0.1:%d" % server.port in lines


def test_kick_closes_one_client():
    with gnatsd.run(http_port=-1) as server:
        victim, bystander = connect(server), connect(server)
        t_ping_pong(victim)
        t_ping_pong(bystander)
        assert server.kick(victim.info["client_id"]) is True
        t_read_until_closed(victim)
        t_ping_pong(bystander)
        assert server.kick(999999) is False
        body = json.loads(_http_get(server.server.monitor.port, "/connz?state=closed"))
        reasons = {c["cid"]: c["reason"] for c in body["connections"]}
        assert reasons[victim.info["client_id"]] == "Kicked"


def _http_get(port: int, path: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
        return r.read()


def test_pause_hangs_the_server_until_resume():
    with gnatsd.run() as server:
        conn = connect(server)
        t_ping_pong(conn)
        server.pause()
        conn.send(b"PING\r\n")
        # Hung: no answer in a while (a negative fact needs a bounded wait).
        assert not conn._fill(time.monotonic() + 0.3)
        late = socket.create_connection((server.host, server.port), timeout=2)  # kernel accepts
        server.resume()
        t_expect(conn, rb"PONG\r\n")
        late.settimeout(5)
        assert late.recv(4096).startswith(b"INFO ")
        late.close()


def test_restart_keeps_the_ports_and_clients_reconnect():
    async def main():
        import nats
        server = gnatsd.run(cluster_port=-1, cluster_name="c", http_port=-1)
        ports = (server.port, server.cluster_port, server.server.monitor.port)
        old_id = server.server.server_id
        reconnected = asyncio.Event()

        async def on_reconnect():
            reconnected.set()
        nc = await nats.connect(server.client_url, reconnect_time_wait=0.05,
                                reconnected_cb=on_reconnect)
        sub = await nc.subscribe("after")
        server.restart()
        try:
            assert (server.port, server.cluster_port, server.server.monitor.port) == ports
            assert server.server.server_id != old_id and server.is_running
            await asyncio.wait_for(reconnected.wait(), 10)
            await nc.publish("after", b"restart")
            assert (await sub.next_msg(timeout=2)).data == b"restart"
            await nc.close()
        finally:
            server.shutdown()
    asyncio.run(main())


def test_run_cluster_meshes_and_drop_routes_heals():
    with gnatsd.run_cluster(3) as cluster:
        servers = cluster.servers
        assert [s.route_count() for s in servers] == [2, 2, 2]
        assert cluster.client_url() == servers[0].client_url
        assert cluster.client_urls() == [s.client_url for s in servers]
        info = RawConn(servers[0].host, servers[0].port).read_info()
        assert info["cluster"] == "cluster" and info["server_name"] == "node1"
        servers[1].drop_routes()
        assert servers[1].route_count() == 0
        cluster.wait_for_mesh()
        sub, pub = connect(servers[0]), connect(servers[2])
        sub.send(b"SUB across 1\r\nPING\r\n")
        t_expect(sub, rb"PONG\r\n")

        def delivered():
            pub.send(b"PUB across 2\r\nhi\r\nPING\r\n")
            t_expect(pub, rb"PONG\r\n")
            return sub._fill(time.monotonic() + 0.05) or b"MSG" in bytes(sub.buf)
        wait_for(delivered, what="a message across the healed mesh")
        t_expect(sub, rb"MSG across 1 2\r\nhi\r\n")


def test_run_cluster_size_must_be_positive():
    with pytest.raises(ValueError):
        gnatsd.run_cluster(0)


def test_lame_duck_mode_tells_clients_and_stops():
    server = gnatsd.run(lame_duck_duration=1.0, lame_duck_grace_period=0.1)
    conn = RawConn(server.host, server.port)
    conn.read_info()
    conn.send(b'CONNECT {"verbose":false,"protocol":1}\r\n')    # takes async INFO
    t_ping_pong(conn)
    server.lame_duck_mode()
    m = conn.expect(rb"INFO (\{.*?\}) \r\n")
    assert json.loads(m.group(1))["ldm"] is True
    t_read_until_closed(conn, timeout=10)
    wait_for(lambda: not server.is_running, timeout=10, what="the server to stop")
    server.shutdown()
    assert port_is_closed(server.port)
