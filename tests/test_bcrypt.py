"""bcrypt password and token hashes, as the Go server verifies them.

A secret that starts with $2a$, $2b$ or $2y$ is a bcrypt hash: the client's
plain password is checked against it, and the hash itself is never accepted
as a password.  gnatsd.py verifies with the standard `crypt` module where
the C library supports bcrypt (CPython <= 3.12 here), else with the optional
`bcrypt` package, else it refuses to start.
"""
from __future__ import annotations

import glob
import os
import subprocess

import pytest

from conftest import GNATSD, t_expect_exact, t_read_until_closed, write_conf

# bcrypt (cost 4) of "s3cr3t".
HASH = "$2b$04$l5q.aanWC/vG6p1IZEZDSuQb0TqjCat5SmkF3LpksbbYjJ1g2qSP6"
AUTH_ERR = b"-ERR 'Authorization Violation'\r\n"


def connect(user=None, password=None, token=None) -> bytes:
    fields = ['"verbose":false', '"pedantic":false']
    if user is not None:
        fields.append('"user":"%s"' % user)
    if password is not None:
        fields.append('"pass":"%s"' % password)
    if token is not None:
        fields.append('"auth_token":"%s"' % token)
    return b"CONNECT {" + ",".join(fields).encode() + b"}\r\nPING\r\n"


def test_user_with_bcrypt_password(any_server_with, raw_factory):
    srv = any_server_with("--user", "derek", "--pass", HASH)
    good = raw_factory(srv, connect("derek", "s3cr3t"))
    t_expect_exact(good, b"PONG\r\n")
    for wrong in ("wrong", HASH):   # the hash itself is not the password
        bad = raw_factory(srv, connect("derek", wrong))
        assert t_read_until_closed(bad) == AUTH_ERR


def test_token_with_bcrypt_hash(any_server_with, raw_factory):
    srv = any_server_with("--auth", HASH)
    t_expect_exact(raw_factory(srv, connect(token="s3cr3t")), b"PONG\r\n")
    assert t_read_until_closed(raw_factory(srv, connect(token=HASH))) == AUTH_ERR


def test_users_list_with_bcrypt_password(any_server_with, raw_factory, tmp_path):
    conf = write_conf(tmp_path, 'authorization { users = [ {user: a, password: "%s"} ] }\n' % HASH)
    srv = any_server_with("-c", conf)
    t_expect_exact(raw_factory(srv, connect("a", "s3cr3t")), b"PONG\r\n")
    assert t_read_until_closed(raw_factory(srv, connect("a", "nope"))) == AUTH_ERR


def _python_without_bcrypt():
    """A CPython here that has neither a bcrypt-capable crypt nor bcrypt."""
    probe = ("import sys\ntry:\n import crypt\n sys.exit(1)\nexcept ImportError:\n pass\n"
             "try:\n import bcrypt\n sys.exit(1)\nexcept ImportError:\n sys.exit(0)\n")
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for python in sorted(glob.glob(os.path.join(root, "versions", "3.1[3-9]*", "bin", "python3"))):
        if subprocess.run([python, "-c", probe]).returncode == 0:
            return python
    return None


def test_refuses_to_start_when_bcrypt_cannot_be_verified():
    python = _python_without_bcrypt()
    if python is None:
        pytest.skip("every Python here can verify bcrypt")
    r = subprocess.run([python, GNATSD, "-a", "127.0.0.1", "-p", "-1", "--user", "u",
                        "--pass", HASH], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "bcrypt" in r.stderr and "Traceback" not in r.stderr
