"""NKey users (issue 17): nkeys' encoding of keys and seeds, credentials
files, the server's id, and `authorization { users = [ { nkey: U... } ] }`
with a nonce in INFO that the client signs (test_ed25519.py tests the
curve, test_operator.py the JWTs).  Keys are made here with PyNaCl (a test-only
package, which the `nkeys` package nats-py uses needs anyway); every login
runs against gnatsd.py and Go 2.15 with the same config.
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys

import pytest

from conftest import GO_SERVERS, RawConn, import_gnatsd, start_gnatsd, start_go, t_expect, \
    write_conf

g = import_gnatsd()

KINDS = ["gnatsd", "go2.15"]


# -- Ed25519 and the encoding, in-process ---------------------------------------

@pytest.fixture(params=["pure", "default"])
def verify(request, monkeypatch):
    """ed25519_verify in plain Python (the `cryptography` package left
    out) and as it runs here (test_ed25519.py tests the curve itself)."""
    if request.param == "pure":
        monkeypatch.setattr(g, "_ED_NATIVE", False)
    return g.ed25519_verify


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


def test_seeds_decode_sign_and_bad_ones_do_not(verify):
    """decode_seed and nkey_sign against the nkeys library: the same public
    key, signatures it verifies and ed25519_verify accepts."""
    import nkeys
    for kind_letter, prefix in (("U", g.NKEY_USER), ("A", g.NKEY_ACCOUNT),
                                ("O", g.NKEY_OPERATOR), ("N", g.NKEY_SERVER)):
        raw = bytes(range(prefix & 31, (prefix & 31) + 32))
        seed = nkeys.encode_seed(raw, prefix).decode()
        assert seed.startswith("S" + kind_letter)
        assert g.decode_seed(seed) == (prefix, raw)
        pair = nkeys.from_seed(seed.encode())
        public, sig = g.nkey_sign(seed, b"nonce-123")
        assert public == pair.public_key.decode()
        assert public.startswith(kind_letter) and g.decode_nkey(public, prefix) is not None
        signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        assert pair.verify(b"nonce-123", signature)
        assert verify(g.decode_nkey(public, prefix), b"nonce-123", signature)
    seed = nkeys.encode_seed(bytes(32), g.NKEY_USER).decode()
    for bad in (seed[:-1], seed[:5] + ("A" if seed[5] != "A" else "B") + seed[6:],
                seed.lower(), "U" + seed[1:], None, ""):
        assert g.decode_seed(bad) is None, bad
    with pytest.raises(ValueError):
        g.nkey_sign("SUNOTASEED", b"x")


CREDS = """-----BEGIN NATS USER JWT-----
%s
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
%s
------END USER NKEY SEED------

*************************************************************
"""


# Fixed strings of the nkeys repository (README.md's example user, and
# creds_utils_test.go's credentials, whose JWT's signature is not genuine).
NKEYS_README_SEED = "SUAKYRHVIOREXV7EUZTBHUHL7NUMHPMAS7QMDU3GTIUWEI5LDNOXD43IZY"
NKEYS_README_PUBLIC = "UD466L6EBCM3YY5HEGHJANNTN4LSKTSUXTH7RILHCKEQMQHTBNLHJJXT"
NKEYS_CREDS_SEED = "SUAOTBNEUHZDFJT3EUMELT7MQTP24JF3XVCXQNDSCU74G5IU6VAJBKH5LI"
NKEYS_CREDS_JWT = (
    "eyJ0eXAiOiJqd3QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJHVDROVU5NRUY3Wk1XQ1JCWFZWVURLUVQ2"
    "WllQWjc3VzRKUlFYRDNMMjRIS1VKRUNRSDdRIiwiaWF0IjoxNTkwNzgxNTkzLCJpc3MiOiJBQURXTFRISUNWNFNVQU"
    "dGNkVLTlZFVzVCQlA3WVJESUJHV0dHSFo1SkJET1FZQTdHVUZNNkFRVSIsIm5hbWUiOiJPUEVSQVRPUiIsInN1YiI6"
    "IlVERTZXVEdMVFRQQ1JKUkpDS0JKUkdWTlpUTElWUjdMRUVFTFI0Q1lXV1dCS0pTN1hZSUtYRFVVIiwibmF0cyI6ey"
    "JwdWIiOnt9LCJzdWIiOnt9LCJ0eXBlIjoidXNlciIsInZlcnNpb24iOjJ9fQ.c_XQT04wEoVVNDRjPHeKwe17BOrSp"
    "QTcftwIbB7KoNEIz6peZCJDc4-J3emVepHofUOWy7IAo9TlLwYhuGHWAQ")


def test_the_nkeys_repositorys_vectors(tmp_path, verify):
    """Its README's seed has its public key; its test credentials parse
    (with \\n and with \\r\\n), the seed's key is the JWT's subject, and the
    JWT, whose signature is not its issuer's, is refused."""
    assert g.nkey_sign(NKEYS_README_SEED, b"x")[0] == NKEYS_README_PUBLIC
    for newline in ("\n", "\r\n"):
        path = tmp_path / "nkeys.creds"
        path.write_bytes((CREDS % (NKEYS_CREDS_JWT, NKEYS_CREDS_SEED)).replace(
            "\n", newline).encode())
        assert g.read_credentials(str(path)) == (NKEYS_CREDS_JWT, NKEYS_CREDS_SEED)
    claims = json.loads(base64.urlsafe_b64decode(NKEYS_CREDS_JWT.split(".")[1] + "=="))
    assert g.nkey_sign(NKEYS_CREDS_SEED, b"x")[0] == claims["sub"]
    with pytest.raises(g.JWTError, match="signature verification"):
        g.decode_jwt(NKEYS_CREDS_JWT, "user")


def test_a_creds_file_gives_its_jwt_and_seed(tmp_path):
    """read_credentials reads nsc's .creds layout; a file without both
    parts is refused."""
    import nkeys
    seed = nkeys.encode_seed(bytes(range(32)), g.NKEY_USER).decode()
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJ4IjoxfQ.c2ln"
    path = tmp_path / "u.creds"
    path.write_text(CREDS % (token, seed))
    assert g.read_credentials(str(path)) == (token, seed)
    assert g.decorated_jwt(CREDS % (token, seed)) == token
    assert g.decorated_jwt("  %s\n" % token) == token
    path.write_text("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n"
                    % token)
    with pytest.raises(ValueError):
        g.read_credentials(str(path))


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
    """As Go's: the public key of a fresh seed, so tools that decode it as a
    public nkey can, and its key bytes are a point of the curve (random
    bytes are one about half the time)."""
    import nkeys
    from nacl.signing import SigningKey
    for _ in range(20):
        server_id = g._new_server_id()
        assert len(server_id) == 56 and server_id.startswith("N")
        key = g.decode_nkey(server_id, g.NKEY_SERVER)
        assert key is not None and g._ed_decode(key) is not None
        raw = base64.b32decode(server_id)       # (35 bytes: no padding) the nkeys checksum too
        assert nkeys.crc16_checksum(raw[:-2]) == raw[-2:]
        assert nkeys.valid_public_prefix_byte(raw[0])
        seed = bytes(SigningKey.generate())
        assert g.ed25519_public_key_once(seed) == bytes(SigningKey(seed).verify_key)


def login(srv, public: str, key) -> RawConn:
    c = RawConn(srv.host, srv.port)
    nonce = c.read_info()["nonce"]
    sig = base64.urlsafe_b64encode(key.sign(nonce.encode()).signature).rstrip(b"=")
    c.send(b'CONNECT {"verbose":false,"nkey":"%s","sig":"%s"}\r\nPING\r\n'
           % (public.encode(), sig))
    return c


@pytest.mark.parametrize("kind", KINDS)
def test_connz_shows_the_nkey_as_the_authorized_user(kind, tmp_path):
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
