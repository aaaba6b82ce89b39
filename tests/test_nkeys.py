"""NKey users (issue 17, first part): Ed25519 in plain Python, nkeys'
encoding, and `authorization { users = [ { nkey: U... } ] }` with a nonce in
INFO that the client signs.  Keys are made here with PyNaCl (a test-only
package, which the `nkeys` package nats-py uses needs anyway); every login
runs against gnatsd.py and Go 2.15 with the same config.
"""
from __future__ import annotations

import asyncio
import base64
import sys

import pytest

from conftest import GO_SERVERS, RawConn, import_gnatsd, start_gnatsd, start_go, t_expect, \
    write_conf

g = import_gnatsd()

KINDS = ["gnatsd", "go2.15"]


# -- Ed25519 and the encoding, in-process ---------------------------------------

# RFC 8032 section 7.1, TESTs 1-3: (public key, message, signature).
RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701"
     "cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613"
     "d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f7609"
     "84dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


@pytest.fixture(params=["pure", "default"])
def verify(request, monkeypatch):
    """ed25519_verify in plain Python (the `cryptography` package hidden)
    and as it runs here."""
    if request.param == "pure":
        monkeypatch.setitem(sys.modules, "cryptography", None)
    return g.ed25519_verify


@pytest.mark.parametrize("public, message, signature", RFC8032)
def test_rfc8032_vectors_verify_and_tampering_does_not(verify, public, message, signature):
    public, message, signature = (bytes.fromhex(x) for x in (public, message, signature))
    assert verify(public, message, signature)
    assert not verify(public, message + b"x", signature)
    bad = bytearray(signature)
    bad[5] ^= 1
    assert not verify(public, message, bytes(bad))
    bad = bytearray(public)
    bad[0] ^= 1
    assert not verify(bytes(bad), message, signature)
    high_s = signature[:32] + (int.from_bytes(signature[32:], "little") + g._ED_L).to_bytes(
        32, "little")
    assert not verify(public, message, high_s)          # s must be below the group order


def encode(raw: bytes) -> str:
    """An nkey or seed as the nkeys library writes one (its own checksum)."""
    import nkeys
    return base64.b32encode(raw + nkeys.crc16_checksum(raw)).decode().rstrip("=")


def new_user():
    """(public nkey "U...", seed "SU...", signing key) for a fresh user."""
    from nacl.signing import SigningKey
    key = SigningKey.generate()
    user = 20 << 3
    public = encode(bytes([user]) + bytes(key.verify_key))
    seed = encode(bytes([(18 << 3) | (user >> 5), (user & 31) << 3]) + bytes(key))
    return public, seed, key


def test_public_nkeys_decode_and_bad_ones_do_not():
    public, seed, key = new_user()
    assert public.startswith("U") and seed.startswith("SU") and len(public) == 56
    assert g.decode_nkey(public, g.NKEY_USER) == bytes(key.verify_key)
    import nkeys
    assert nkeys.from_seed(seed.encode()).public_key.decode() == public   # the nkeys library
    assert g.crc16_xmodem(b"123456789") == 0x31C3                         # the CRC's check value
    bad = public[:10] + ("A" if public[10] != "A" else "B") + public[11:]
    for text in (bad, public[:-1], public.lower(), "N" + public[1:], seed, ""):
        assert g.decode_nkey(text, g.NKEY_USER) is None, text


# -- logging in ------------------------------------------------------------------------


def server(kind: str, conf: str):
    if kind == "gnatsd":
        return start_gnatsd("-c", conf)
    if "2.15" not in GO_SERVERS:
        pytest.skip("Go nats-server 2.15 is not installed (make dev)")
    return start_go("-c", conf, version="2.15")


def nkey_conf(tmp_path, public: str, other: str) -> str:
    return write_conf(tmp_path, """
authorization {
  users = [
    { nkey: %s, permissions: { publish: "ok.>", subscribe: ["ok.>", "_INBOX.>"] } }
    { user: plain, password: pw }
    { nkey: %s }
  ]
}
""" % (public, other))


@pytest.mark.parametrize("kind", KINDS)
def test_an_nkey_user_signs_the_nonce_with_raw_bytes(kind, tmp_path):
    public, _seed, key = new_user()
    other, _, _ = new_user()
    srv = server(kind, nkey_conf(tmp_path, public, other))
    try:
        for sig_of, expect in ((key, rb"PONG\r\n"), (new_user()[2], rb"-ERR 'Authorization "
                                                                     rb"Violation'\r\n")):
            c = RawConn(srv.host, srv.port)
            info = c.read_info()
            nonce = info["nonce"]
            assert len(nonce) == 15 and info["auth_required"] is True
            sig = base64.urlsafe_b64encode(sig_of.sign(nonce.encode()).signature).rstrip(b"=")
            c.send(b'CONNECT {"verbose":false,"nkey":"%s","sig":"%s"}\r\nPING\r\n'
                   % (public.encode(), sig))
            t_expect(c, expect)
            c.close()
        c = RawConn(srv.host, srv.port)
        assert c.read_info()["nonce"] != nonce                  # one per connection
        c.send(b'CONNECT {"verbose":false,"nkey":"%s"}\r\nPING\r\n' % public.encode())
        t_expect(c, rb"-ERR 'Authorization Violation'\r\n")     # no signature
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_nats_py_logs_in_with_a_seed_and_gets_the_users_permissions(kind, tmp_path):
    import nats
    public, seed, _key = new_user()
    other, _, _ = new_user()
    srv = server(kind, nkey_conf(tmp_path, public, other))

    async def main():
        nc = await nats.connect(srv.url, nkeys_seed_str=seed, allow_reconnect=False)
        errors = []

        async def on_error(e):
            errors.append(str(e))
        nc._error_cb = on_error
        sub = await nc.subscribe("ok.x")
        await nc.publish("ok.x", b"allowed")
        assert (await sub.next_msg(timeout=2)).data == b"allowed"
        await nc.publish("denied", b"no")
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.02)
        await nc.close()
        return errors
    try:
        errors = asyncio.run(main())
        assert any("permissions violation for publish" in e.lower() for e in errors), errors
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_an_invalid_nkey_in_the_config_names_the_line(kind, tmp_path):
    conf = write_conf(tmp_path, "authorization {\n  users = [\n    { nkey: UNOTAKEY }\n  ]\n}\n")
    import subprocess
    argv = ([sys.executable, g.__file__] if kind == "gnatsd" else
            [GO_SERVERS.get("2.15") or pytest.skip("no Go 2.15")]) + ["-c", conf]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    assert r.returncode == 1
    assert "%s:3:7: Not a valid public nkey for a user" % conf in r.stderr, r.stderr


def test_the_server_id_is_a_server_nkey():
    """As Go's: tools that decode it as a public nkey can."""
    import nkeys
    for _ in range(20):
        server_id = g._new_server_id()
        assert len(server_id) == 56 and server_id.startswith("N")
        assert g.decode_nkey(server_id, 13 << 3) is not None
        raw = base64.b32decode(server_id)       # (35 bytes: no padding) the nkeys checksum too
        assert nkeys.crc16_checksum(raw[:-2]) == raw[-2:]
        assert nkeys.valid_public_prefix_byte(raw[0])


def login(srv, public: str, key) -> RawConn:
    c = RawConn(srv.host, srv.port)
    nonce = c.read_info()["nonce"]
    sig = base64.urlsafe_b64encode(key.sign(nonce.encode()).signature).rstrip(b"=")
    c.send(b'CONNECT {"verbose":false,"nkey":"%s","sig":"%s"}\r\nPING\r\n'
           % (public.encode(), sig))
    return c


@pytest.mark.parametrize("kind", KINDS)
def test_connz_shows_the_nkey_as_the_authorized_user(kind, tmp_path):
    import json
    import re
    import urllib.request
    public, _seed, key = new_user()
    conf = write_conf(tmp_path, "authorization { users = [ { nkey: %s } ] }\n" % public)
    srv = (start_gnatsd("-c", conf, "-m", "-1") if kind == "gnatsd" else
           start_go("-c", conf, "-m", "-1", version="2.15") if "2.15" in GO_SERVERS else
           pytest.skip("no Go 2.15"))
    try:
        mon = int(srv.wait_for_log(rb"Starting http monitor on \S+:(\d+)").group(1))
        c = login(srv, public, key)
        t_expect(c, rb"PONG\r\n")
        with urllib.request.urlopen("http://127.0.0.1:%d/connz?auth=1" % mon, timeout=5) as r:
            conn = json.loads(r.read())["connections"][0]
        assert conn["authorized_user"] == public
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_reload_drops_a_removed_nkey_and_admits_an_added_one(kind, tmp_path):
    import signal
    kept, _, kept_key = new_user()
    gone, _, gone_key = new_user()
    added, _, added_key = new_user()
    text = "authorization { users = [ { nkey: %s }, { nkey: %s } ] }\n"
    conf = write_conf(tmp_path, text % (kept, gone))
    srv = server(kind, conf)
    try:
        stay, leave = login(srv, kept, kept_key), login(srv, gone, gone_key)
        for c in (stay, leave):
            t_expect(c, rb"PONG\r\n")
        write_conf(tmp_path, text % (kept, added))
        mark = len(srv.log)
        srv.signal(signal.SIGHUP)
        srv.wait_for_log(rb"Reloaded server configuration", 10, start=mark)
        from conftest import t_read_until_closed, t_ping_pong
        t_read_until_closed(leave)
        t_ping_pong(stay)
        t_expect(login(srv, added, added_key), rb"PONG\r\n")
        t_expect(login(srv, gone, gone_key), rb"-ERR 'Authorization Violation'\r\n")
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_no_auth_user_may_name_an_nkey_user(kind, tmp_path):
    """A client without credentials is that nkey user, with its permissions."""
    public, _seed, _key = new_user()
    conf = write_conf(tmp_path, """
no_auth_user: %s
authorization {
  users = [
    { nkey: %s, permissions: { publish: "ok.>", subscribe: "ok.>" } }
  ]
}
""" % (public, public))
    srv = server(kind, conf)
    try:
        c = RawConn(srv.host, srv.port)
        c.read_info()
        c.send(b'CONNECT {"verbose":false}\r\nSUB ok.1 1\r\nPUB ok.1 1\r\nx\r\n'
               b'PUB no 1\r\nx\r\nPING\r\n')
        t_expect(c, rb"MSG ok.1 1 1\r\nx\r\n-ERR 'Permissions Violation for Publish to \"no\"'\r\n"
                    rb"PONG\r\n")
    finally:
        srv.stop()
