import pytest, time
from conftest import RawConn, t_read_until_closed
from test_hot_path import raw_route, route_ops_until_pong
from test_leafnodes import nodes, start_node, client_of  # noqa

@pytest.mark.parametrize("kind", ["gnatsd", "go2.9", "go2.15"])
@pytest.mark.parametrize("line", [b"RMSG $G foo 1_0\r\n0123456789\r\n", b"RMSG $G foo +5\r\nabcde\r\n",
    b"RMSG $G foo -1\r\n\r\n", b"RMSG $G foo 05\r\nabcde\r\n", b"HMSG $G foo 12 10\r\nNATS/1.0\r\n\r\n\r\n",
    b"RMSG $G foo bar baz 2\r\nab\r\n", b"RMSG $G foo 2\r\nabXY", b"RMSG $G foo 99999999999999999999\r\n"])
def test_probe(kind, line, nodes, tmp_path):
    srv = start_node(nodes, kind, tmp_path, "node", 'cluster {\n  name: c1\n  listen: "127.0.0.1:-1"\n}\n')
    peer = raw_route(srv)
    c = client_of(srv, b"SUB foo 1\r\n")
    route_ops_until_pong(peer)
    peer.send(line + b"PING\r\n")
    got = peer.read_all(1.0)
    print("\nRESULT", kind, line, got[-200:], "closed" if peer.closed else "open", c.read_all(0.3))
    print(srv.log[-600:].decode(errors="replace"))
