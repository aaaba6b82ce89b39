"""Authentication and permissions end to end with the official nats-py client,
against gnatsd.py and the Go servers alike."""
from __future__ import annotations

import asyncio

import nats
import pytest
from nats.errors import NoServersError

from conftest import write_conf

CONF = """authorization {
  users = [
    {user: alice, password: pa, permissions: {publish: ["orders.>", "_INBOX.>"],
                                              subscribe: ["orders.*", "_INBOX.>"]}}
    {user: admin, password: px}
  ]
}
"""


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_user_password_and_token(any_server_with):
    srv = any_server_with("--user", "derek", "--pass", "s3cr3t")

    async def main():
        nc = await nats.connect(srv.url, user="derek", password="s3cr3t", max_reconnect_attempts=0)
        assert nc.is_connected
        await nc.close()
        with pytest.raises((NoServersError, nats.errors.Error, OSError)):
            await nats.connect(srv.url, user="derek", password="wrong",
                               max_reconnect_attempts=0, allow_reconnect=False)
    run(main())


def test_token(any_server_with):
    srv = any_server_with("--auth", "t0k3n")

    async def main():
        nc = await nats.connect(srv.url, token="t0k3n", max_reconnect_attempts=0)
        sub = await nc.subscribe("t")
        await nc.publish("t", b"ok")
        assert (await sub.next_msg(timeout=3)).data == b"ok"
        await nc.close()
    run(main())


def test_permission_error_reaches_the_client_and_the_connection_stays(any_server_with,
                                                                        tmp_path):
    srv = any_server_with("-c", write_conf(tmp_path, CONF))

    async def main():
        errors = []
        got_error = asyncio.Event()

        async def on_error(e):
            errors.append(str(e))
            got_error.set()

        alice = await nats.connect(srv.url, user="alice", password="pa", error_cb=on_error)
        admin = await nats.connect(srv.url, user="admin", password="px")
        seen = await admin.subscribe("secret.>")
        orders = await alice.subscribe("orders.*")
        await alice.flush()
        await alice.publish("secret.plans", b"x")       # denied
        await asyncio.wait_for(got_error.wait(), 5)
        assert any("permissions violation for publish" in e.lower() and "secret.plans" in e
                   for e in errors), errors
        # Still connected and still working.
        await alice.publish("orders.new", b"ok")
        assert (await orders.next_msg(timeout=3)).data == b"ok"
        assert alice.is_connected
        with pytest.raises(nats.errors.TimeoutError):
            await seen.next_msg(timeout=0.3)
        await alice.close()
        await admin.close()
    run(main())
