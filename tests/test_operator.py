"""Operator (JWT) mode (issue 17): `operator`, `resolver: MEMORY`,
`resolver_preload` and `system_account`, against Go 2.15.

In operator mode there are no users in the config.  The server trusts an
operator (its JWT, inline or in a file); the operator signs account JWTs,
which the MEMORY resolver holds (`resolver_preload`); an account (or one of
its signing keys) signs user JWTs.  A client sends its user JWT in CONNECT
(`jwt`) and signs the INFO's `nonce` with the user's seed (`sig`), as
nats-py does from a creds file.  The user JWT carries the user's
permissions, limits, source networks, connection types, bearer flag and
expiry; the account JWT carries limits, default permissions, revocations,
signing keys (plain, or scoped with a permission template), exports and
imports.

Keys are made with the `nkeys` package; the JWTs with the tiny encoder
below (`encode_jwt`), whose claim names are those of nats-io/jwt v2
(claims.go, user_claims.go, account_claims.go, types.go, signingkeys.go,
exports.go, imports.go, revocation_list.go), and with nats-jwt, the
PyPI package, in one test.  Every scenario runs against gnatsd.py and Go
2.15 with the same config and asserts the same bytes: the -ERR texts, and
the log lines Go writes (at -D where it only says why at debug level).

Go's behaviour asserted here (read from server/auth.go, client.go,
accounts.go, jwt.go and opts.go, then checked against the 2.15 binary):

* Every refused login gets `-ERR 'Authorization Violation'` and the close.
  At -D the log has the reason (DBG; `Bad src Ip 127.0.0.1` and `Outside
  connect times` are ERR), then `[ERR] <client> - authentication error`,
  then `Client connection closed: Authentication Failure`.  A JWT that does
  not decode as a user JWT (tampered, an account JWT) is "Authentication
  requires a user JWT"; an account missing from the preload, or signed by
  another operator, or already expired when first looked up, is "Account
  JWT lookup error: account missing" (plus `[WRN] Account fetch failed:
  account missing`) or "... account validation failed".
* Once logged in, a JWT user's log lines carry `"ACCOUNT/NAME/jwt:USER"`
  after the cid.
* A user JWT's own `exp` arms a timer at login of `exp - now` in whole
  seconds, so the client gets `-ERR 'User Authentication Expired'` between
  exp and exp + 1 s and is closed (DBG `... - User Authentication Expired -
  Account:ACCOUNT/NAME - jwt:USER`).  An account's `exp` closes its clients
  the same way with `-ERR 'Account Authentication Expired'`; later logins
  are refused ("Account JWT has expired").  Validation is `now > exp` in
  whole seconds: a JWT still logs in during exp's own second.
* Limits are per connection (`subs`, `payload`: the smaller of the user's,
  or a scope template's, and the account's; -1 = no limit) and per account
  (`conn`: `-ERR 'maximum account active connections exceeded'`, no
  Authorization Violation).  A limit that a user JWT leaves out is 0, not
  unlimited, which makes the client be at its subscription limit from the
  start: -ERR and a close.  nsc writes -1 for "no limit", as the encoder
  here does by default.
* A scoped signing key's user must carry no permissions or limits of its
  own; it gets the template's, with `{{name()}}` filled in.
* A few configs Go refuses at startup, with its messages (exit status 1).
"""
from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import os
import re
import time

import nats
import nkeys
import pytest

from conftest import RawConn, start_kind, t_expect, t_ping_pong, t_read_all, \
    t_read_until_closed, write_conf

KINDS = ["gnatsd", "go2.15"]

AUTH_VIOLATION = b"-ERR 'Authorization Violation'\r\n"


# -- keys, JWTs and creds ----------------------------------------------------------

PREFIXES = {"O": nkeys.PREFIX_BYTE_OPERATOR, "A": nkeys.PREFIX_BYTE_ACCOUNT,
            "U": nkeys.PREFIX_BYTE_USER}


class Key:
    """A fresh nkey of one role ("O" operator, "A" account, "U" user)."""

    def __init__(self, role: str):
        self.seed = nkeys.encode_seed(os.urandom(32), PREFIXES[role]).decode()
        self.kp = nkeys.from_seed(bytearray(self.seed.encode()))
        self.public = self.kp.public_key.decode()

    def sign(self, data: bytes) -> bytes:
        return self.kp.sign(data)

    def __repr__(self):
        return "Key(%s)" % self.public


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


JWT_HEADER = b64url(compact({"typ": "JWT", "alg": "ed25519-nkey"}))

# ClaimsData's fields in Go's struct order: the jti is the hash of these
# (with jti empty) as the jwt library computes it (claims.go, hash()).
CLAIMS_DATA = ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub")


def claims_hash(claims: dict) -> str:
    data = {k: claims[k] for k in CLAIMS_DATA if claims.get(k) and k != "jti"}
    try:
        digest = hashlib.new("sha512_256", compact(data)).digest()
    except ValueError:                     # an OpenSSL without SHA-512/256
        digest = hashlib.sha256(compact(data)).digest()
    return base64.b32encode(digest).decode().rstrip("=")


def encode_jwt(claims: dict, signer: Key) -> str:
    """A JWT as nats-io/jwt v2 writes one: `iss` is the signer, `iat` now
    (unless given), `jti` the claims' hash; the signature is the signer's
    Ed25519 over "header.payload"."""
    claims = dict(claims)
    claims["iss"] = signer.public
    claims.setdefault("iat", int(time.time()))
    claims.pop("jti", None)
    claims = {"jti": claims_hash(claims), **claims}
    signing_input = "%s.%s" % (JWT_HEADER, b64url(compact(claims)))
    return "%s.%s" % (signing_input, b64url(signer.sign(signing_input.encode())))


def decode_payload(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# What NewAccountClaims and NewUserClaims start from (-1 is "no limit").
ACCOUNT_LIMITS = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                  "wildcards": True, "conn": -1, "leaf": -1}
USER_LIMITS = {"subs": -1, "data": -1, "payload": -1}


def operator_jwt(op: Key, name: str = "OP", **nats_fields) -> str:
    return encode_jwt({"name": name, "sub": op.public,
                       "nats": {**nats_fields, "type": "operator", "version": 2}}, op)


def account_jwt(acc: Key, signer: Key, name: str = "ACC", limits: dict | None = None,
                claims: dict | None = None, **nats_fields) -> str:
    """An account JWT; `limits` are merged into the no-limit defaults."""
    body = {"limits": {**ACCOUNT_LIMITS, **(limits or {})}, "default_permissions":
            {"pub": {}, "sub": {}}, **nats_fields, "type": "account", "version": 2}
    return encode_jwt({"name": name, "sub": acc.public, **(claims or {}), "nats": body}, signer)


def user_jwt(user: Key, signer: Key, name: str = "user", claims: dict | None = None,
             scoped: bool = False, **nats_fields) -> str:
    """A user JWT signed by `signer` (the account or one of its signing
    keys: then pass issuer_account=...).  A `scoped` user carries no
    permissions or limits at all (IssueUserJWT's SetScoped(true))."""
    body = {} if scoped else {"pub": {}, "sub": {}, **USER_LIMITS}
    body = {**body, **nats_fields, "type": "user", "version": 2}
    return encode_jwt({"name": name, "sub": user.public, **(claims or {}), "nats": body}, signer)


def creds_text(token: str, seed: str) -> str:
    """A creds file as jwt.FormatUserConfig writes it (creds_utils.go)."""
    return ("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n" % (token, seed))


def write_creds(tmp_path, token: str, user: Key, name: str = "user.creds") -> str:
    path = tmp_path / name
    path.write_text(creds_text(token, user.seed))
    return str(path)


def operator_conf(tmp_path, op_token: str, preload: dict, system_account: str = "",
                  operator_file: bool = False, extra: str = "", name: str = "op.conf") -> str:
    """The config of an operator-mode server: the operator JWT inline (or
    in a file next to the config), MEMORY resolver, `preload` {pubkey: JWT}."""
    if operator_file:
        (tmp_path / "operator.jwt").write_text(op_token)
        operator = '"%s"' % (tmp_path / "operator.jwt")
    else:
        operator = '"%s"' % op_token
    lines = ["operator: %s" % operator, "resolver: MEMORY", "resolver_preload {"]
    lines += ['  %s: "%s"' % item for item in preload.items()]
    lines.append("}")
    if system_account:
        lines.append("system_account: %s" % system_account)
    return write_conf(tmp_path, "\n".join(lines) + "\n" + extra + "\n", name)


class World:
    """An operator, its system account SYS and an account APP, with helpers
    to add accounts and make users; `conf()` writes the server's config."""

    def __init__(self):
        self.op = Key("O")
        self.sys = Key("A")
        self.app = Key("A")
        self.op_jwt = operator_jwt(self.op)
        self.preload = {}
        self.account(self.sys, name="SYS")
        self.account(self.app, name="APP")

    def account(self, key: Key, signer: Key | None = None, **kw) -> str:
        token = account_jwt(key, signer or self.op, **kw)
        self.preload[key.public] = token
        return token

    def user(self, account: Key | None = None, signer: Key | None = None, **kw):
        """(user JWT, user key) of a new user of `account` (APP)."""
        user = Key("U")
        return user_jwt(user, signer or account or self.app, **kw), user

    def conf(self, tmp_path, **kw) -> str:
        return operator_conf(tmp_path, self.op_jwt, self.preload, self.sys.public, **kw)


@pytest.fixture
def world():
    return World()


@pytest.fixture
def serve(kind):
    """serve(conf, *args) -> the `kind` server started with `-c conf`."""
    started = []

    def make(conf: str, *args):
        srv = start_kind(kind, "-c", conf, *args)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


# -- raw logins ---------------------------------------------------------------------


def connect_line(token: str | None, sig: str | None = None, **extra) -> bytes:
    opts = {"verbose": False, "pedantic": False, **extra}
    if token is not None:
        opts["jwt"] = token
    if sig is not None:
        opts["sig"] = sig
    return b"CONNECT " + compact(opts) + b"\r\n"


def login(srv, token: str | None, user: Key | None, sign_with: Key | None = None,
          sig: str | None = None, then: bytes = b"PING\r\n") -> RawConn:
    """A raw client: INFO, CONNECT with the JWT and the nonce signed by
    `user` (or `sign_with`; or the given `sig`), then `then`."""
    c = RawConn(srv.host, srv.port)
    c.info = c.read_info()
    signer = sign_with or user
    if sig is None and signer is not None:
        sig = b64url(signer.sign(c.info["nonce"].encode()))
    c.send(connect_line(token, sig) + then)
    return c


def logged_in(srv, token: str, user: Key) -> RawConn:
    c = login(srv, token, user)
    t_expect(c, rb"PONG\r\n")
    return c


def assert_refused(c: RawConn) -> None:
    """-ERR 'Authorization Violation', then the server closes."""
    t_expect(c, re.escape(AUTH_VIOLATION))
    assert t_read_until_closed(c) == b""


def client_port(c: RawConn) -> int:
    return c.sock.getsockname()[1]


def client_log(srv, c: RawConn, level: str, text: str, timeout: float = 5.0):
    """Wait for the server's log line about this client: `[LVL] 127.0.0.1:PORT
    - cid:N - text` (`text` is a regex)."""
    return srv.wait_for_log(rb"\[%s\] 127\.0\.0\.1:%d - cid:\d+ - %s\r?\n" % (
        level.encode(), client_port(c), text.encode()), timeout)


def label(account: Key, account_name: str, user: Key) -> str:
    """Go 2.15's name for a JWT user in its log lines: `"ACCOUNT/NAME/jwt:USER"`
    after the client's address and cid."""
    return '"%s/%s/jwt:%s"' % (account.public, account_name, user.public)


def expired_lines(srv, c: RawConn, account: Key, account_name: str, user: Key, what: str):
    """Go's two debug lines for an expiry: the reason (rate-limited debug,
    with the account and user appended) and the close."""
    who = label(account, account_name, user)
    client_log(srv, c, "DBG", re.escape("%s - %s - Account:%s/%s - jwt:%s" % (
        who, what, account.public, account_name, user.public)))
    client_log(srv, c, "DBG", re.escape("%s - Client connection closed: Authentication Expired"
                                        % who))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


# -- 1. the operator, inline or in a file; no JWT, no login ------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator_file", [False, True], ids=["inline", "file"])
def test_operator_inline_or_file_nonce_and_no_jwt_refused(kind, serve, world, tmp_path,
                                                          operator_file):
    srv = serve(world.conf(tmp_path, operator_file=operator_file))
    iat = decode_payload(world.op_jwt)["iat"]
    issued = time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(iat)).encode()
    srv.wait_for_log(rb"\[INF\] Trusted Operators\r?\n"
                     rb"[^\n]*\[INF\]   System  : \"\"\r?\n"
                     rb"[^\n]*\[INF\]   Operator: \"OP\"\r?\n"
                     rb"[^\n]*\[INF\]   Issued  : " + re.escape(issued) + rb"\r?\n"
                     rb"[^\n]*\[INF\]   Expires : Never\r?\n")
    c = RawConn(srv.host, srv.port)
    info = c.read_info()
    assert info["auth_required"] is True
    assert isinstance(info["nonce"], str) and len(info["nonce"]) == 15
    c.send(connect_line(None) + b"PING\r\n")
    assert_refused(c)
    client_log(srv, c, "ERR", "authentication error")
    second = RawConn(srv.host, srv.port)
    assert second.read_info()["nonce"] != info["nonce"]        # one per connection
    second.close()


# -- 2. nats-py with a creds file ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_nats_py_with_a_creds_file_publishes_and_subscribes(kind, serve, world, tmp_path):
    token, user = world.user(name="alice")
    srv = serve(world.conf(tmp_path))
    creds = write_creds(tmp_path, token, user)

    async def main():
        nc = await nats.connect(srv.url, user_credentials=creds, allow_reconnect=False)
        try:
            sub = await nc.subscribe("greet.*")
            await nc.publish("greet.x", b"hello")
            msg = await sub.next_msg(timeout=3)
            assert (msg.subject, msg.data) == ("greet.x", b"hello")

            async def echo(m):
                await m.respond(b"echo:" + m.data)
            await nc.subscribe("svc", cb=echo)
            reply = await nc.request("svc", b"ping", timeout=3)
            assert reply.data == b"echo:ping"
        finally:
            await nc.close()
    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_standard_base64_signature_is_accepted_too(kind, serve, world, tmp_path):
    """nats-py signs the nonce in padded standard base64; Go falls back to it."""
    token, user = world.user()
    srv = serve(world.conf(tmp_path))
    c = RawConn(srv.host, srv.port)
    nonce = c.read_info()["nonce"]
    sig = base64.b64encode(user.sign(nonce.encode())).decode()
    c.send(connect_line(token, sig) + b"PING\r\n")
    t_expect(c, rb"PONG\r\n")


@pytest.mark.parametrize("kind", KINDS)
def test_nats_jwt_package_makes_jwts_the_server_accepts(kind, serve, tmp_path):
    """The operator, accounts and user made with nats-jwt (PyPI), not the
    encoder here: its snippets write the limits as nsc does."""
    from nats_jwt.v2.operator_claims import OperatorClaims
    from nats_jwt.v2.snippets import Operator
    op = Operator()
    op.set_claims(OperatorClaims(op.key_pair.public_key.decode(), "OP"))
    sys_acc, app = op.create_account("SYS"), op.create_account("APP")
    alice = app.create_user("alice")
    preload = {acc.key_pair.public_key.decode(): acc.jwt for acc in (sys_acc, app)}
    srv = serve(operator_conf(tmp_path, op.jwt, preload, sys_acc.key_pair.public_key.decode()))
    creds = tmp_path / "alice.creds"
    creds.write_text(creds_text(alice.jwt, alice.key_pair.seed.decode()))

    async def main():
        nc = await nats.connect(srv.url, user_credentials=str(creds), allow_reconnect=False)
        try:
            sub = await nc.subscribe("made.by.nats_jwt")
            await nc.publish("made.by.nats_jwt", b"ok")
            assert (await sub.next_msg(timeout=3)).data == b"ok"
        finally:
            await nc.close()
    run(main())


# -- 3. refusals ----------------------------------------------------------------------------
#
# Each case's build(world) returns (user JWT, the key that signs the nonce
# or None for no sig, another key to sign it with instead, a literal sig).
# One server per kind (module-scoped, at -D) holds every account they need.


def _case_bad_signature(w):
    token, user = w.user()
    return token, user, Key("U"), None


def _case_no_signature(w):
    token, user = w.user()
    return token, None, None, None


def _case_signature_not_base64(w):
    token, user = w.user()
    return token, None, None, "%%%not-base64%%%"


def _case_unknown_account(w):
    stranger = Key("A")                    # not in resolver_preload
    token, user = w.user(signer=stranger)
    return token, user, None, None


def _case_account_of_another_operator(w):
    token, user = w.user(signer=w.untrusted)
    return token, user, None, None


def _case_expired_user(w):
    token, user = w.user(claims={"exp": int(time.time()) - 10})
    return token, user, None, None


def _case_user_not_yet_valid(w):
    token, user = w.user(claims={"nbf": int(time.time()) + 3600})
    return token, user, None, None


def _case_revoked_user(w):
    return w.revoked_jwt, w.revoked_user, None, None


def _case_revoked_all(w):
    token, user = w.user(account=w.revoke_all)
    return token, user, None, None


def _case_src_excludes_client(w):
    token, user = w.user(src=["10.0.0.0/8", "192.168.0.0/16"])
    return token, user, None, None


def _case_websocket_only_over_tcp(w):
    token, user = w.user(allowed_connection_types=["WEBSOCKET"])
    return token, user, None, None


def _case_unknown_connection_type_only(w):
    token, user = w.user(allowed_connection_types=["CARRIER_PIGEON"])
    return token, user, None, None


def _case_outside_connect_times(w):
    # A one-hour window twelve hours from now (local time, as Go reads it).
    start = time.localtime(time.time() + 12 * 3600)
    end = time.localtime(time.time() + 13 * 3600)
    token, user = w.user(times=[{"start": time.strftime("%H:%M:%S", start),
                                 "end": time.strftime("%H:%M:%S", end)}])
    return token, user, None, None


def _case_unknown_signing_key(w):
    token, user = w.user(signer=Key("A"), issuer_account=w.app.public)
    return token, user, None, None


def _case_signing_key_without_issuer_account(w):
    token, user = w.user(signer=w.signing_key)
    return token, user, None, None


def _case_scoped_user_with_permissions(w):
    token, user = w.user(signer=w.scoped_key, issuer_account=w.scoped.public,
                         pub={"allow": [">"]})
    return token, user, None, None


def _case_bearer_disallowed(w):
    token, user = w.user(account=w.no_bearer, bearer_token=True)
    return token, None, None, None


def _case_expired_account(w):
    token, user = w.user(account=w.expired)
    return token, user, None, None


def _case_account_jwt_as_user_jwt(w):
    return w.preload[w.app.public], Key("U"), None, None


def _case_tampered_user_jwt(w):
    token, user = w.user(pub={"allow": ["only.this"]})
    head, payload, sig = token.split(".")
    claims = decode_payload(token)
    claims["nats"]["pub"] = {"allow": [">"]}
    return "%s.%s.%s" % (head, b64url(compact(claims)), sig), user, None, None


# (id, build, the line Go logs for the reason: DBG unless marked ERR).  The
# texts are Go's, exact: `%+v` of the validation results prints the issue.
REFUSALS = [
    ("bad_signature", _case_bad_signature, "Signature not verified"),
    ("no_signature", _case_no_signature, "Signature missing"),
    ("signature_not_base64", _case_signature_not_base64, "Signature not valid base64"),
    ("unknown_account", _case_unknown_account, "Account JWT lookup error: account missing"),
    ("account_of_another_operator", _case_account_of_another_operator,
     "Account JWT lookup error: account validation failed"),
    ("expired_user", _case_expired_user, "User JWT no longer valid: &{Issues:[claim is expired]}"),
    ("user_not_yet_valid", _case_user_not_yet_valid,
     "User JWT no longer valid: &{Issues:[claim is not yet valid]}"),
    ("revoked_user", _case_revoked_user, "User authentication revoked"),
    ("revoked_all", _case_revoked_all, "User authentication revoked"),
    ("src_excludes_client", _case_src_excludes_client, "ERR Bad src Ip 127.0.0.1"),
    ("websocket_only_over_tcp", _case_websocket_only_over_tcp, "Connection type not allowed"),
    ("unknown_connection_type_only", _case_unknown_connection_type_only,
     'invalid connection types ["CARRIER_PIGEON"]'),
    ("outside_connect_times", _case_outside_connect_times, "ERR Outside connect times"),
    ("unknown_signing_key", _case_unknown_signing_key, "User JWT issuer is not known"),
    ("signing_key_without_issuer_account", _case_signing_key_without_issuer_account,
     "Account JWT lookup error: account missing"),
    ("scoped_user_with_permissions", _case_scoped_user_with_permissions,
     "User JWT is not valid: scoped users require no permissions or limits set"),
    ("bearer_disallowed", _case_bearer_disallowed, "Account does not allow bearer tokens"),
    # Expired when it was loaded: the lookup fails (an account that expires
    # while loaded says "Account JWT has expired", below).
    ("expired_account", _case_expired_account,
     "Account JWT lookup error: account validation failed"),
    ("account_jwt_as_user_jwt", _case_account_jwt_as_user_jwt,
     "Authentication requires a user JWT"),
    ("tampered_user_jwt", _case_tampered_user_jwt, "Authentication requires a user JWT"),
]


def refusal_world() -> World:
    """A World with the accounts the refusal cases need."""
    w = World()
    now = int(time.time())
    w.untrusted = Key("A")
    w.account(w.untrusted, signer=Key("O"), name="UNTRUSTED")
    # A user revoked at `now` (JWTs issued at or before then are refused).
    w.revoked_user = Key("U")
    w.revoked_jwt = user_jwt(w.revoked_user, w.app, claims={"iat": now - 60})
    w.reissued_jwt = user_jwt(w.revoked_user, w.app, claims={"iat": now + 1})
    w.revoke_all = Key("A")
    w.account(w.revoke_all, name="REVOKE_ALL", revocations={"*": now + 60})
    w.signing_key = Key("A")
    w.scoped = Key("A")
    w.scoped_key = Key("A")
    w.account(w.scoped, name="SCOPED", signing_keys=[
        {"kind": "user_scope", "key": w.scoped_key.public, "role": "r",
         "template": {"pub": {"allow": ["scoped.>"]}, "sub": {"allow": ["scoped.>"]}}}])
    w.account(w.app, name="APP", revocations={w.revoked_user.public: now},
              signing_keys=[w.signing_key.public])
    w.no_bearer = Key("A")
    w.account(w.no_bearer, name="NO_BEARER", limits={"disallow_bearer": True})
    w.expired = Key("A")
    w.account(w.expired, name="EXPIRED", claims={"exp": now - 10})
    return w


@pytest.fixture(scope="module")
def refusal_servers(tmp_path_factory):
    """{kind: (world, server)}, each started at first use, with -D."""
    servers = {}

    def get(kind):
        if kind not in servers:
            w = refusal_world()
            conf = w.conf(tmp_path_factory.mktemp("refusals"))
            servers[kind] = (w, start_kind(kind, "-c", conf, "-D"))
        return servers[kind]

    yield get
    for _w, srv in servers.values():
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case, build, reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_logins(kind, refusal_servers, case, build, reason):
    """-ERR 'Authorization Violation' and the close; in the log (at -D) the
    reason, `authentication error` and the close, one after the other."""
    w, srv = refusal_servers(kind)
    token, user, sign_with, sig = build(w)
    c = login(srv, token, user, sign_with=sign_with, sig=sig)
    assert_refused(c)
    level, reason = ("ERR", reason[4:]) if reason.startswith("ERR ") else ("DBG", reason)
    prefix = r"[^\n]*\[%s\] 127\.0\.0\.1:%d - cid:(\d+) - "
    port = client_port(c)
    m = srv.wait_for_log(("%s%s\r?\n%sauthentication error\r?\n"
                          "%sClient connection closed: Authentication Failure\r?\n" % (
                              prefix % (level, port), re.escape(reason), prefix % ("ERR", port),
                              prefix % ("DBG", port))).encode())
    assert len(set(m.groups())) == 1                      # one cid


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_account_is_a_warning(kind, refusal_servers):
    w, srv = refusal_servers(kind)
    token, user, _, _ = _case_unknown_account(w)
    assert_refused(login(srv, token, user))
    srv.wait_for_log(rb"\[WRN\] Account fetch failed: account missing\r?\n")


@pytest.mark.parametrize("kind", KINDS)
def test_an_expired_account_is_reported_at_startup(kind, refusal_servers):
    w, srv = refusal_servers(kind)
    srv.wait_for_log(rb"\[WRN\] Account \[%s\] has validation issues:\r?\n"
                     rb"[^\n]*\[WRN\]   - claim is expired\r?\n" % w.expired.public.encode())


@pytest.mark.parametrize("kind", KINDS)
def test_accepted_variants_of_the_refused_cases(kind, refusal_servers):
    """The other side of each refusal: a src that includes 127.0.0.1 (also
    as Go's comma-separated string), STANDARD (any case) among unknown
    types, a user re-issued after its revocation, a plain signing key with
    issuer_account, a window of connect times around now."""
    w, srv = refusal_servers(kind)
    now = time.time()
    cases = [
        w.user(src=["10.0.0.0/8", "127.0.0.0/8"]),
        w.user(src="10.0.0.0/8,127.0.0.1/32"),
        w.user(allowed_connection_types=["STANDARD"]),
        w.user(allowed_connection_types=["standard", "CARRIER_PIGEON"]),
        (w.reissued_jwt, w.revoked_user),
        w.user(signer=w.signing_key, issuer_account=w.app.public),
        w.user(times=[{"start": time.strftime("%H:%M:%S", time.localtime(now - 3600)),
                       "end": time.strftime("%H:%M:%S", time.localtime(now + 3600))}]),
    ]
    for token, user in cases:
        c = login(srv, token, user)
        try:
            t_expect(c, rb"PONG\r\n")
        except AssertionError as exc:
            raise AssertionError("refused: %r\n%s" % (decode_payload(token)["nats"], exc))
        c.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.filterwarnings("ignore:parameter 'timeout' of type 'float' is deprecated")
# nats-py's websocket transport leaves aiohttp's response of a refused
# login to the garbage collector (its __del__ then warns); not the server's.
# The test collects it itself, so that the warning is not raised (and
# blamed) in whatever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_connection_types_over_websocket(kind, serve, world, tmp_path):
    """["WEBSOCKET"] logs in over ws://, ["STANDARD"] does not."""
    ws_only, ws_user = world.user(allowed_connection_types=["WEBSOCKET"])
    tcp_only, tcp_user = world.user(allowed_connection_types=["STANDARD"])
    srv = serve(world.conf(tmp_path, extra="websocket {\n  host: 127.0.0.1\n  port: -1\n"
                                            "  no_tls: true\n}\n"))
    ws_port = int(srv.wait_for_log(rb"Listening for websocket clients on ws://\S+:(\d+)").group(1))
    url = "ws://127.0.0.1:%d" % ws_port

    async def main():
        nc = await nats.connect(url, user_credentials=write_creds(tmp_path, ws_only, ws_user),
                                allow_reconnect=False)
        sub = await nc.subscribe("ws")
        await nc.publish("ws", b"over websocket")
        assert (await sub.next_msg(timeout=3)).data == b"over websocket"
        await nc.close()
        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(url, user_credentials=write_creds(tmp_path, tcp_only, tcp_user,
                                                                   "tcp.creds"),
                               allow_reconnect=False, max_reconnect_attempts=0)
    run(main())
    gc.collect()


# -- 4. signing keys ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_signing_keys_plain_and_scoped(kind, serve, world, tmp_path):
    """A user signed by a plain signing key keeps its own permissions; one
    signed by a scoped key gets the scope's template ({{name()}} filled in)."""
    plain, scoped = Key("A"), Key("A")
    world.account(world.app, name="APP", signing_keys=[
        plain.public,
        {"kind": "user_scope", "key": scoped.public, "role": "team",
         "template": {"pub": {"allow": ["team.{{name()}}.>"], "deny": ["team.*.secret"]},
                      "sub": {"allow": ["team.>"]}, "subs": 2}}])
    plain_jwt, plain_user = world.user(signer=plain, issuer_account=world.app.public,
                                       pub={"allow": ["plain.>"]})
    bob_jwt, bob = world.user(signer=scoped, issuer_account=world.app.public, scoped=True,
                              name="bob")
    srv = serve(world.conf(tmp_path))

    c = logged_in(srv, plain_jwt, plain_user)
    c.send(b"SUB plain.> 1\r\nPUB plain.x 1\r\na\r\nPUB team.bob.x 1\r\nb\r\nPING\r\n")
    t_expect(c, rb"MSG plain\.x 1 1\r\na\r\n"
                rb"-ERR 'Permissions Violation for Publish to \"team\.bob\.x\"'\r\nPONG\r\n")

    b = logged_in(srv, bob_jwt, bob)
    b.send(b"SUB team.> 1\r\nPUB team.bob.x 2\r\nok\r\nPUB team.alice.x 2\r\nno\r\n"
           b"PUB team.bob.secret 2\r\nno\r\nSUB other 2\r\nPING\r\n")
    t_expect(b, rb"MSG team\.bob\.x 1 2\r\nok\r\n"
                rb"-ERR 'Permissions Violation for Publish to \"team\.alice\.x\"'\r\n"
                rb"-ERR 'Permissions Violation for Publish to \"team\.bob\.secret\"'\r\n"
                rb"-ERR 'Permissions Violation for Subscription to \"other\"'\r\nPONG\r\n")
    # The template's limits apply too: subs 2.
    b.send(b"SUB team.a 3\r\nSUB team.b 4\r\nPING\r\n")
    t_expect(b, rb"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")


# -- 5. permissions ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_user_permissions_from_the_jwt(kind, serve, world, tmp_path):
    token, user = world.user(pub={"allow": ["ok.>"], "deny": ["ok.no"]},
                             sub={"allow": ["ok.>", "_INBOX.>"], "deny": ["ok.secret"]})
    srv = serve(world.conf(tmp_path))
    c = logged_in(srv, token, user)
    c.send(b"SUB ok.> 1\r\nPUB ok.1 1\r\na\r\nPUB ok.no 1\r\nb\r\nPUB elsewhere 1\r\nc\r\n"
           b"SUB ok.secret 2\r\nSUB nope 3\r\nSUB _INBOX.x 4\r\nPING\r\n")
    t_expect(c, rb"MSG ok\.1 1 1\r\na\r\n"
                rb"-ERR 'Permissions Violation for Publish to \"ok\.no\"'\r\n"
                rb"-ERR 'Permissions Violation for Publish to \"elsewhere\"'\r\n"
                rb"-ERR 'Permissions Violation for Subscription to \"ok\.secret\"'\r\n"
                rb"-ERR 'Permissions Violation for Subscription to \"nope\"'\r\nPONG\r\n")
    t_ping_pong(c)                                        # still connected


@pytest.mark.parametrize("kind", KINDS)
def test_account_default_permissions_apply_to_users_without_their_own(kind, serve, world,
                                                                      tmp_path):
    world.account(world.app, name="APP", default_permissions={
        "pub": {"deny": ["restricted.>"]}, "sub": {"allow": ["open.>"]}})
    plain_jwt, plain = world.user()
    own_jwt, own = world.user(pub={"allow": ["restricted.>"]})
    srv = serve(world.conf(tmp_path))
    c = logged_in(srv, plain_jwt, plain)
    c.send(b"SUB open.> 1\r\nSUB closed 2\r\nPUB open.x 1\r\na\r\nPUB restricted.x 1\r\nb\r\n"
           b"PING\r\n")
    t_expect(c, rb"-ERR 'Permissions Violation for Subscription to \"closed\"'\r\n"
                rb"MSG open\.x 1 1\r\na\r\n"
                rb"-ERR 'Permissions Violation for Publish to \"restricted\.x\"'\r\nPONG\r\n")
    o = logged_in(srv, own_jwt, own)                      # its own: defaults ignored
    o.send(b"SUB closed 1\r\nPUB restricted.x 1\r\nc\r\nPUB open.y 1\r\nd\r\nPING\r\n")
    t_expect(o, rb"-ERR 'Permissions Violation for Publish to \"open\.y\"'\r\nPONG\r\n")
    c.send(b"PING\r\n")
    t_expect(c, rb"PONG\r\n")                              # restricted.x never reached c


@pytest.mark.parametrize("kind", KINDS)
def test_response_permission_from_the_jwt(kind, serve, world, tmp_path):
    """`resp` {max, ttl (nanoseconds)}: a user that may publish nowhere may
    answer a request once."""
    token, user = world.user(pub={"allow": ["nothing"]}, sub={"allow": ["svc"]},
                             resp={"max": 1, "ttl": 60 * 10 ** 9})
    srv = serve(world.conf(tmp_path))
    responder = logged_in(srv, token, user)
    responder.send(b"SUB svc 1\r\nPING\r\n")
    t_expect(responder, rb"PONG\r\n")
    asker_jwt, asker_user = world.user()
    asker = logged_in(srv, asker_jwt, asker_user)
    asker.send(b"SUB reply.1 9\r\nPUB svc reply.1 1\r\nq\r\nPING\r\n")
    t_expect(asker, rb"PONG\r\n")
    t_expect(responder, rb"MSG svc 1 reply\.1 1\r\nq\r\n")
    responder.send(b"PUB reply.1 1\r\na\r\nPUB reply.1 1\r\nb\r\nPING\r\n")
    t_expect(responder, rb"-ERR 'Permissions Violation for Publish to \"reply\.1\"'\r\n"
                        rb"PONG\r\n")
    t_expect(asker, rb"MSG reply\.1 9 1\r\na\r\n")
    assert t_read_all(asker) == b""


# -- 6. bearer tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_bearer_token_user_needs_no_signature(kind, serve, world, tmp_path):
    token, _user = world.user(bearer_token=True)
    srv = serve(world.conf(tmp_path))
    c = login(srv, token, None)                                  # no sig at all
    t_expect(c, rb"PONG\r\n")
    c = login(srv, token, None, sign_with=Key("U"))              # a wrong one: not checked
    t_expect(c, rb"PONG\r\n")
    plain, _ = world.user()
    assert_refused(login(srv, plain, None))                      # not a bearer: refused


# -- 7. expiry while connected ----------------------------------------------------------------


def wait_closed_after(c: RawConn, err: bytes, exp: int, timeout: float = 8.0) -> float:
    """Wait for `err` and the close; return when it came, relative to exp."""
    t_expect(c, re.escape(err), timeout=timeout)
    at = time.time()
    assert t_read_until_closed(c, 3) == b""
    return at - exp


@pytest.mark.parametrize("kind", KINDS)
def test_a_user_jwt_expiring_while_connected_closes_the_client(kind, serve, world, tmp_path):
    srv = serve(world.conf(tmp_path), "-D")
    exp = int(time.time()) + 3
    token, user = world.user(claims={"exp": exp})
    c = logged_in(srv, token, user)
    other_jwt, other = world.user()
    stays = logged_in(srv, other_jwt, other)
    t_ping_pong(c)
    late = wait_closed_after(c, b"-ERR 'User Authentication Expired'\r\n", exp)
    assert -0.1 <= late <= 1.3, "closed %.2f s after exp" % late
    expired_lines(srv, c, world.app, "APP", user, "User Authentication Expired")
    t_ping_pong(stays)
    # Once the clock has passed exp (Go: now > exp, in whole seconds), the
    # JWT is refused.  (Within exp's own second it still logs in, and its
    # timer of 0 s expires it at once.)
    time.sleep(max(0.0, exp + 1.05 - time.time()))
    again = login(srv, token, user)
    assert_refused(again)
    client_log(srv, again, "DBG", "User JWT no longer valid: .*")


@pytest.mark.parametrize("kind", KINDS)
def test_an_account_jwt_expiring_closes_its_clients(kind, serve, world, tmp_path):
    exp = int(time.time()) + 3
    short = Key("A")
    world.account(short, name="SHORT", claims={"exp": exp})
    srv = serve(world.conf(tmp_path), "-D")
    token, user = world.user(account=short)
    c = logged_in(srv, token, user)
    app_jwt, app_user = world.user()
    stays = logged_in(srv, app_jwt, app_user)
    late = wait_closed_after(c, b"-ERR 'Account Authentication Expired'\r\n", exp)
    assert -0.1 <= late <= 1.3, "closed %.2f s after exp" % late
    expired_lines(srv, c, short, "SHORT", user, "Account Authentication Expired")
    t_ping_pong(stays)
    again = login(srv, token, user)
    assert_refused(again)
    client_log(srv, again, "DBG", "Account JWT has expired")


# -- 8. limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_account_connection_limit(kind, serve, world, tmp_path):
    """`conn` 1: the second client of the account gets Go's -ERR (not an
    Authorization Violation) and is closed; others are not limited."""
    one = Key("A")
    world.account(one, name="ONE", limits={"conn": 1})
    srv = serve(world.conf(tmp_path), "-D")
    first = logged_in(srv, *world.user(account=one))
    second = login(srv, *world.user(account=one))
    t_expect(second, rb"-ERR 'maximum account active connections exceeded'\r\n")
    assert t_read_until_closed(second) == b""
    client_log(srv, second, "ERR", "maximum account active connections exceeded")
    client_log(srv, second, "DBG", "Client connection closed: Maximum Account Connections "
                                   "Exceeded")
    t_ping_pong(first)
    logged_in(srv, *world.user()).close()                # other accounts are not limited
    first.close()
    deadline = time.monotonic() + 5                       # the slot frees once the server
    while True:                                           # has seen the close
        c = login(srv, *world.user(account=one))
        got = t_expect(c, rb"PONG\r\n|-ERR 'maximum account active connections exceeded'"
                          rb"\r\n").group()
        c.close()
        if got == b"PONG\r\n" or time.monotonic() > deadline:
            break
    assert got == b"PONG\r\n"


@pytest.mark.parametrize("kind", KINDS)
def test_account_subscription_limit_is_per_connection(kind, serve, world, tmp_path):
    """`subs` 2: the third SUB gets -ERR and the connection stays; an
    UNSUB makes room; every connection of the account has its own 2."""
    two = Key("A")
    world.account(two, name="TWO", limits={"subs": 2})
    srv = serve(world.conf(tmp_path), "-D")
    user_jwt_, user = world.user(account=two)
    c = logged_in(srv, user_jwt_, user)
    c.send(b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n")
    t_expect(c, rb"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")
    client_log(srv, c, "ERR", re.escape(label(two, "TWO", user) +
                                        " - maximum subscriptions exceeded"))
    c.send(b"UNSUB 1\r\nSUB c 3\r\nSUB d 4\r\nPUB c 1\r\nx\r\nPING\r\n")
    t_expect(c, rb"-ERR 'maximum subscriptions exceeded'\r\nMSG c 3 1\r\nx\r\nPONG\r\n")
    d = logged_in(srv, *world.user(account=two))          # a second connection: its own 2
    d.send(b"SUB a 1\r\nSUB b 2\r\nPING\r\n")
    t_expect(d, rb"PONG\r\n")


@pytest.mark.parametrize("kind", KINDS)
def test_account_payload_limit(kind, serve, world, tmp_path):
    small = Key("A")
    world.account(small, name="SMALL", limits={"payload": 8})
    srv = serve(world.conf(tmp_path), "-D")
    token, user = world.user(account=small)
    c = logged_in(srv, token, user)
    c.send(b"SUB x 1\r\nPUB x 8\r\n12345678\r\nPING\r\n")
    t_expect(c, rb"MSG x 1 8\r\n12345678\r\nPONG\r\n")
    c.send(b"PUB x 9\r\n123456789\r\n")
    t_expect(c, rb"-ERR 'Maximum Payload Violation'\r\n")
    assert t_read_until_closed(c) == b""
    who = label(small, "SMALL", user)
    client_log(srv, c, "ERR", re.escape(who + " - maximum payload exceeded: 9 vs 8"))
    client_log(srv, c, "DBG", re.escape(who + " - Client connection closed: Maximum Message "
                                              "Payload Exceeded"))


@pytest.mark.parametrize("kind", KINDS)
def test_user_limits_and_the_smaller_of_user_and_account(kind, serve, world, tmp_path):
    capped = Key("A")
    world.account(capped, name="CAPPED", limits={"subs": 2, "payload": 100})
    srv = serve(world.conf(tmp_path))
    c = logged_in(srv, *world.user(subs=1, payload=4))            # APP: no limits
    c.send(b"SUB a 1\r\nSUB b 2\r\nPING\r\n")
    t_expect(c, rb"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")
    c.send(b"PUB a 5\r\n12345\r\n")
    t_expect(c, rb"-ERR 'Maximum Payload Violation'\r\n")
    assert t_read_until_closed(c) == b""
    d = logged_in(srv, *world.user(account=capped, subs=5, payload=3))
    d.send(b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n")             # the account's 2
    t_expect(d, rb"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")
    d.send(b"PUB a 4\r\n1234\r\n")                                 # the user's 3
    t_expect(d, rb"-ERR 'Maximum Payload Violation'\r\n")
    assert t_read_until_closed(d) == b""


@pytest.mark.parametrize("kind", KINDS)
def test_limits_a_jwt_leaves_out_are_zero(kind, serve, world, tmp_path):
    """A user JWT without subs/data/payload: Go decodes them as 0, so the
    user is at its subscription limit from the start, gets -ERR and is
    closed (20 ms later, MaxSubscriptionsExceeded).  nsc always writes -1
    for "no limit"."""
    user = Key("U")
    token = encode_jwt({"name": "bare", "sub": user.public,
                        "nats": {"type": "user", "version": 2}}, world.app)
    srv = serve(world.conf(tmp_path), "-D")
    c = login(srv, token, user, then=b"")
    got = t_read_until_closed(c, 5)
    assert got == b"-ERR 'maximum subscriptions exceeded'\r\n", got
    # (Logged while the client is being registered: with or without its label.)
    who = "(?:%s - )?" % re.escape(label(world.app, "APP", user))
    client_log(srv, c, "ERR", who + "maximum subscriptions exceeded")
    client_log(srv, c, "DBG", who + "Client connection closed: Maximum Subscriptions Exceeded")


# -- 9. exports and imports ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stream_and_service_exports_and_imports(kind, serve, world, tmp_path):
    a, b = Key("A"), Key("A")
    world.account(a, name="A", exports=[
        {"name": "s", "subject": "a.>", "type": "stream"},
        {"name": "p", "subject": "p.>", "type": "stream"},
        {"name": "m", "subject": "m.*", "type": "stream"},
        {"name": "echo", "subject": "svc.echo", "type": "service"},
        {"name": "time", "subject": "svc.time", "type": "service"},
    ])
    world.account(b, name="B", imports=[
        {"name": "s", "subject": "a.>", "account": a.public, "type": "stream"},
        {"name": "p", "subject": "p.>", "account": a.public, "type": "stream", "to": "froma"},
        {"name": "m", "subject": "m.*", "account": a.public, "type": "stream",
         "local_subject": "mapped.$1"},
        {"name": "secret", "subject": "secret.>", "account": a.public, "type": "stream"},
        {"name": "echo", "subject": "svc.echo", "account": a.public, "type": "service"},
        {"name": "time", "subject": "svc.time", "account": a.public, "type": "service",
         "local_subject": "my.time"},
    ])
    srv = serve(world.conf(tmp_path))
    pub_a = logged_in(srv, *world.user(account=a))
    sub_b = logged_in(srv, *world.user(account=b))
    sub_b.send(b"SUB a.> 1\r\nSUB froma.> 2\r\nSUB mapped.* 3\r\nSUB secret.> 4\r\n"
               b"SUB p.> 5\r\nSUB m.* 6\r\nPING\r\n")
    t_expect(sub_b, rb"PONG\r\n")
    pub_a.send(b"PUB a.x 1\r\n1\r\nPUB p.y 1\r\n2\r\nPUB m.z 1\r\n3\r\n"
               b"PUB secret.w 1\r\n4\r\nPING\r\n")
    t_expect(pub_a, rb"PONG\r\n")
    t_expect(sub_b, rb"MSG a\.x 1 1\r\n1\r\nMSG froma\.p\.y 2 1\r\n2\r\n"
                    rb"MSG mapped\.z 3 1\r\n3\r\n")
    t_ping_pong(sub_b)
    back = logged_in(srv, *world.user(account=a))         # streams go one way only
    back.send(b"SUB a.> 1\r\nPING\r\n")
    t_expect(back, rb"PONG\r\n")
    sub_b.send(b"PUB a.from_b 1\r\nx\r\nPING\r\n")
    t_expect(sub_b, rb"MSG a\.from_b 1 1\r\nx\r\nPONG\r\n")
    assert t_read_all(back) == b""

    async def main():
        nca = await nats.connect(srv.url, user_credentials=write_creds(
            tmp_path, *world.user(account=a), "a.creds"), allow_reconnect=False)
        ncb = await nats.connect(srv.url, user_credentials=write_creds(
            tmp_path, *world.user(account=b), "b.creds"), allow_reconnect=False)
        try:
            async def echo(m):
                await m.respond(b"A:" + m.subject.encode() + b":" + m.data)
            await nca.subscribe("svc.*", cb=echo)
            await nca.flush()
            # Go 2.15 once answered the first request with no responders on a loaded CI machine
            # (the flushed subscriber was in place): wait, bounded, for the import to reach it.
            deadline = time.monotonic() + 5
            while True:
                try:
                    reply = await ncb.request("svc.echo", b"hi", timeout=3)
                    break
                except nats.errors.NoRespondersError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            assert reply.data == b"A:svc.echo:hi"
            assert (await ncb.request("my.time", b"t", timeout=3)).data == b"A:svc.time:t"
            with pytest.raises(nats.errors.NoRespondersError):
                await ncb.request("svc.time", b"not under its own name", timeout=3)
        finally:
            await nca.close()
            await ncb.close()
    run(main())


# -- 10. the system account ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("named_in", ["config", "operator_jwt"])
def test_a_system_account_user_pings_the_server(kind, serve, world, tmp_path, named_in):
    """The system account named by `system_account` or by the operator JWT's
    `system_account`: its user's PING gets one answer, this server's id;
    another account's user has no responders."""
    if named_in == "operator_jwt":
        world.op_jwt = operator_jwt(world.op, system_account=world.sys.public)
        conf = operator_conf(tmp_path, world.op_jwt, world.preload)
    else:
        conf = world.conf(tmp_path)
    srv = serve(conf)
    c = RawConn(srv.host, srv.port)
    server_id = c.read_info()["server_id"]
    c.close()

    async def main():
        sys_nc = await nats.connect(srv.url, user_credentials=write_creds(
            tmp_path, *world.user(account=world.sys), "sys.creds"), allow_reconnect=False)
        app_nc = await nats.connect(srv.url, user_credentials=write_creds(
            tmp_path, *world.user(), "app.creds"), allow_reconnect=False)
        try:
            inbox = sys_nc.new_inbox()
            sub = await sys_nc.subscribe(inbox)
            await sys_nc.publish("$SYS.REQ.SERVER.PING", b"", reply=inbox)
            first = json.loads((await sub.next_msg(timeout=3)).data)
            with pytest.raises(nats.errors.TimeoutError):
                await sub.next_msg(timeout=0.5)               # one server, one answer
            assert first["server"]["id"] == server_id
            with pytest.raises(nats.errors.NoRespondersError):  # other accounts: not theirs
                await app_nc.request("$SYS.REQ.SERVER.PING", b"", timeout=3)
        finally:
            await sys_nc.close()
            await app_nc.close()
    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_no_system_account_is_a_warning(kind, serve, world, tmp_path):
    srv = serve(operator_conf(tmp_path, world.op_jwt, world.preload))
    srv.wait_for_log(rb"\[WRN\] Trusted Operators should utilize a System Account\r?\n")
    logged_in(srv, *world.user()).close()


# -- 10b. claims of the wrong type ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_claims_of_the_wrong_type_are_refused_cleanly(kind, serve, world, tmp_path):
    """A user JWT its account signed, whose claims have types the jwt
    library does not decode (exp a string, a permission list a string,
    times_location a map, resp.max a string): refused as any bad JWT,
    never an error inside the server (a string deny list once became one
    deny per character, letting the subject through)."""
    srv = serve(world.conf(tmp_path))
    cases = [dict(claims={"exp": "soon"}), dict(pub={"deny": "secret.>"}),
             dict(times_location={"x": 1}), dict(resp={"max": "1", "ttl": 0})]
    for case in cases:
        user = Key("U")
        token = user_jwt(user, world.app, **case)
        assert_refused(login(srv, token, user))
    t_ping_pong(logged_in(srv, *world.user()))
    assert b"Unexpected error" not in bytes(srv.log) and b"Traceback" not in bytes(srv.log)


# -- 11. a leaf node logs in with a .creds file --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_gnatsd_leaf_logs_in_to_an_operator_hub_with_a_creds_file(kind, serve, world,
                                                                     tmp_path):
    """A gnatsd.py leaf whose remote names a .creds file signs the hub's
    nonce with its seed and binds to the user's account on the hub (Go
    2.15 or gnatsd.py, operator mode): messages cross both ways between a
    hub client of that account and a leaf client; a hub client of another
    account sees nothing."""
    from conftest import start_gnatsd
    other = Key("A")
    world.account(other, name="OTHER")
    hub = serve(world.conf(tmp_path, extra="leafnodes { listen: 127.0.0.1:-1 }"))
    leaf_port = int(hub.wait_for_log(rb"Listening for leafnode connections on \S+:(\d+)")
                    .group(1))
    creds = write_creds(tmp_path, *world.user(), "leaf.creds")
    conf = write_conf(tmp_path, 'leafnodes { remotes = [ { url: "nats-leaf://127.0.0.1:%d", '
                                'credentials: "%s" } ], reconnect: 1 }\n' % (leaf_port, creds),
                      "leaf.conf")
    leaf = start_gnatsd("-c", conf)
    try:
        leaf.wait_for_log(rb"Leafnode connection created for account: \$G", 10)

        async def crossing(sub_nc, pub_nc, subject: str) -> bytes:
            sub = await sub_nc.subscribe(subject)
            await sub_nc.flush()
            deadline = time.monotonic() + 5          # until the interest has crossed
            while time.monotonic() < deadline:
                await pub_nc.publish(subject, b"x")
                try:
                    return (await sub.next_msg(timeout=0.1)).data
                except nats.errors.TimeoutError:
                    continue
            return b""

        async def main():
            app = await nats.connect(hub.url, user_credentials=write_creds(
                tmp_path, *world.user(), "app.creds"), allow_reconnect=False)
            stranger = await nats.connect(hub.url, user_credentials=write_creds(
                tmp_path, *world.user(account=other), "other.creds"), allow_reconnect=False)
            local = await nats.connect(leaf.url, allow_reconnect=False)
            try:
                watch = await stranger.subscribe(">")
                await stranger.flush()
                assert await crossing(app, local, "to.hub") == b"x"
                assert await crossing(local, app, "to.leaf") == b"x"
                with pytest.raises(nats.errors.TimeoutError):
                    await watch.next_msg(timeout=0.3)
            finally:
                for nc in (app, stranger, local):
                    await nc.close()
        run(main())
    finally:
        leaf.stop()


# -- configs Go refuses ------------------------------------------------------------------------


def _conf_sys_not_preloaded(w, tmp_path):
    return operator_conf(tmp_path, w.op_jwt, {w.app.public: w.preload[w.app.public]},
                         w.sys.public), "error resolving system account: account missing"


def _conf_with_users(w, tmp_path):
    return w.conf(tmp_path, extra="authorization { users = [ {user: a, password: b} ] }"), \
        "operators do not allow users to be configured directly"


def _conf_with_accounts(w, tmp_path):
    return w.conf(tmp_path, extra="accounts { X { users = [ {user: a, password: b} ] } }"), \
        "operators do not allow Accounts to be configured directly"


def _conf_bad_preload(w, tmp_path):
    path = operator_conf(tmp_path, w.op_jwt, {w.app.public: "eyJnotajwt"})
    return path, "%s:4:3: invalid account JWT" % path


def _conf_missing_operator_file(w, tmp_path):
    path = write_conf(tmp_path, 'operator: "/nonexistent/op.jwt"\nresolver: MEMORY\n')
    return path, ("%s:1:0: error parsing operator JWT: open /nonexistent/op.jwt: no such file "
                  "or directory" % path)


def _conf_account_jwt_as_operator(w, tmp_path):
    path = write_conf(tmp_path, 'operator: "%s"\nresolver: MEMORY\n' % w.preload[w.app.public])
    return path, "%s:1:0: error parsing operator JWT: not operator claim" % path


def _conf_system_account_mismatch(w, tmp_path):
    op_jwt = operator_jwt(w.op, system_account=w.sys.public)
    return operator_conf(tmp_path, op_jwt, w.preload, w.app.public), \
        "system_account in config and operator JWT must be identical"


BAD_CONFS = [_conf_sys_not_preloaded, _conf_with_users, _conf_with_accounts, _conf_bad_preload,
             _conf_missing_operator_file, _conf_account_jwt_as_operator,
             _conf_system_account_mismatch]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make", BAD_CONFS, ids=[f.__name__[6:] for f in BAD_CONFS])
def test_configs_go_refuses(kind, world, tmp_path, make):
    """Exit status 1 and Go's message on stderr (`nats-server: ...`)."""
    import subprocess
    from conftest import GO_SERVERS, gnatsd_argv
    conf, message = make(world, tmp_path)
    argv = (gnatsd_argv("-c", conf) if kind == "gnatsd" else
            [GO_SERVERS.get("2.15") or pytest.skip("no Go 2.15"), "-c", conf])
    r = subprocess.run(argv + ["-a", "127.0.0.1", "-p", "-1"], capture_output=True, text=True,
                       timeout=15)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert message in r.stderr, r.stderr[-2000:]
