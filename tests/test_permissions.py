"""Multi-user authorization and subject permissions, as nats-server 2.x does it.

Every test runs the same raw-socket transcript against gnatsd.py, Go 2.9.10
and Go 2.15.1 (`any_server_with`), started with the config CONF below, and
asserts Go's exact bytes.

Facts from Go 2.9.10 and 2.15.1 (both agree unless said otherwise):
* `authorization { users = [...] }`: INFO has `"auth_required":true`; a wrong
  password, an unknown user or no user at all gets
  `-ERR 'Authorization Violation'` and a close.
* A user without `permissions` gets `default_permissions`, as a whole: a user
  with `permissions` that names only `subscribe` may publish anywhere (the
  default's publish part is not merged in), and vice versa.
* A denied PUB/HPUB gets `-ERR 'Permissions Violation for Publish to "SUBJ"'`,
  the message goes nowhere, and the connection stays open.  Only the subject
  is checked: the reply subject is not.
* A denied SUB gets `-ERR 'Permissions Violation for Subscription to "SUBJ"'`,
  or with a queue group `... to "SUBJ" using queue "Q"'`; no subscription
  is made and the connection stays open.
* Deny beats allow; no allow list means everything is allowed (minus deny).
* The check is Go's sublist Match of the SUB subject against the allow and
  deny lists, so a wildcard SUB is checked token by token: `SUB *.x` is not
  caught by a deny of `private.>` (the literal lookup of "*" finds nothing),
  but `SUB private.*` is.  Messages delivered to a wildcard subscription are
  filtered by the subscriber's deny list, per delivered subject.
* An allow entry "SUBJ QUEUE" only allows queue subscriptions in that group
  (a queue name may be a wildcard: "grp.*" allows "grp.x"); a plain SUB to
  SUBJ is then denied.  An entry without a queue allows any queue.
* verbose: a denied PUB or SUB gets only the -ERR, no +OK.
* Every violation is logged at [ERR].  The shapes differ:
    2.9:  `127.0.0.1:P - cid:N - Publish Violation - User "alice", Subject "foo.secret"`
    2.15: `127.0.0.1:P - cid:N - "$G/user:alice" - Publish Violation - Subject "foo.secret"`
  (Subscription: `... Subscription Violation - ... Subject "S", Queue: "Q", SID 2`.)
  gnatsd.py is held to the 2.15 shape in test_violation_log_line_exact_shape
  only; the other log test is loose.
* auth error log with no user: 2.9 `authentication error - User ""`,
  2.15 `authentication error` (not asserted here).
"""
from __future__ import annotations

import re

import pytest

from conftest import t_expect, t_expect_exact, t_ping_pong, t_read_all, t_read_until_closed, write_conf

CONF = """
authorization {
  default_permissions = { publish = "SANDBOX.>", subscribe = ["PUBLIC.>", "_INBOX.>"] }
  users = [
    { user: alice, password: pa, permissions: {
        publish: { allow: ["foo.*", "bar.>"], deny: ["foo.secret"] },
        subscribe: { allow: [">"], deny: ["private.>", "foo.secret"] } } }
    { user: bob, password: pb }
    { user: qu, password: pq, permissions: { subscribe: ["work.* workers", "jobs.> grp.*"] } }
    { user: pubonly, password: pp, permissions: { publish: "x", subscribe: { deny: ">" } } }
    # No permissions would mean default_permissions, so admin says ">" outright.
    { user: admin, password: px, permissions: { publish: ">", subscribe: ">" } }
  ]
}
"""

PASSWORDS = {"alice": "pa", "bob": "pb", "qu": "pq", "pubonly": "pp", "admin": "px"}
AUTH_VIOLATION = b"-ERR 'Authorization Violation'\r\n"


def pub_err(subject: str) -> bytes:
    return b"-ERR 'Permissions Violation for Publish to \"%s\"'\r\n" % subject.encode()


def sub_err(subject: str, queue: str | None = None) -> bytes:
    q = b' using queue "%s"' % queue.encode() if queue else b""
    return b"-ERR 'Permissions Violation for Subscription to \"%s\"%s'\r\n" % (subject.encode(), q)


def connect(user=None, password=None, verbose=False) -> bytes:
    fields = ['"verbose":%s' % ("true" if verbose else "false"), '"pedantic":false']
    if user is not None:
        fields.append('"user":"%s"' % user)
    if password is not None:
        fields.append('"pass":"%s"' % password)
    return b"CONNECT {" + ",".join(fields).encode() + b"}\r\n"


def start(any_server_with, tmp_path):
    return any_server_with("-c", write_conf(tmp_path, CONF))


def login(srv, raw_factory, user, verbose=False):
    """A logged-in connection of `user`, synced with PING/PONG (and +OK if verbose)."""
    c = raw_factory(srv, connect(user, PASSWORDS[user], verbose) + b"PING\r\n")
    c.timeout = 2.0  # keep failures against an unfinished server short
    t_expect_exact(c, (b"+OK\r\n" if verbose else b"") + b"PONG\r\n")
    return c


def msg(subject: str, sid: int, payload: bytes, reply: str = "") -> bytes:
    r = (reply + " ") if reply else ""
    return b"MSG %s %d %s%d\r\n%s\r\n" % (subject.encode(), sid, r.encode(), len(payload), payload)


# -- authentication ---------------------------------------------------------------


def test_info_says_auth_required(any_server_with, raw_factory, tmp_path):
    c = raw_factory(start(any_server_with, tmp_path), None)
    assert c.info["auth_required"] is True


def test_every_user_logs_in_with_own_password(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    for user in PASSWORDS:
        c = login(srv, raw_factory, user)
        t_ping_pong(c)  # still open
        c.close()


@pytest.mark.parametrize("user, password", [
    ("alice", "pb"),      # another user's password
    ("bob", "wrong"),
    ("nobody", "pa"),     # unknown user
    ("alice", None),      # no password
    (None, None),         # no user at all
], ids=["other-users-password", "wrong-password", "unknown-user", "no-password", "no-user"])
def test_bad_credentials_are_refused_and_closed(any_server_with, raw_factory, tmp_path,
                                                user, password):
    srv = start(any_server_with, tmp_path)
    c = raw_factory(srv, connect(user, password) + b"PING\r\n")
    assert t_read_until_closed(c, 3) == AUTH_VIOLATION
    if user:
        port = c.sock.getsockname()[1]
        srv.wait_for_log(rb'\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - authentication error - User "%s"'
                         % (port, user.encode()))


# -- publish permissions ----------------------------------------------------------


def test_alice_publishes_to_allowed_subjects(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    admin = login(srv, raw_factory, "admin")
    admin.send(b"SUB > 9\r\n")
    t_ping_pong(admin)
    alice = login(srv, raw_factory, "alice")
    # The reply subject is not checked against publish permissions.
    alice.send(b"PUB foo.a 1\r\n1\r\nPUB bar.x.y 1\r\n2\r\nPUB foo.b zzz.reply 1\r\n3\r\n"
               b"PING\r\n")
    t_expect_exact(alice, b"PONG\r\n")
    t_expect_exact(admin, msg("foo.a", 9, b"1") + msg("bar.x.y", 9, b"2")
                   + msg("foo.b", 9, b"3", "zzz.reply"))


def test_alice_denied_publish_errs_stays_open_and_is_not_delivered(any_server_with, raw_factory,
                                                                   tmp_path):
    srv = start(any_server_with, tmp_path)
    admin = login(srv, raw_factory, "admin")
    admin.send(b"SUB > 9\r\n")
    t_ping_pong(admin)
    alice = login(srv, raw_factory, "alice")
    # foo.secret: matches allow foo.* but deny wins.  zzz, bar, foo.a.b: outside allow.
    alice.send(b"PUB foo.secret 2\r\nno\r\nPUB zzz 2\r\nno\r\nPUB bar 2\r\nno\r\n"
               b"PUB foo.a.b 2\r\nno\r\nPUB foo.ok 2\r\nok\r\nPING\r\n")
    t_expect_exact(alice, pub_err("foo.secret") + pub_err("zzz") + pub_err("bar")
                   + pub_err("foo.a.b") + b"PONG\r\n")
    t_ping_pong(alice)  # still open
    # Only the allowed one reached the subscriber (a leak would come first).
    t_expect_exact(admin, msg("foo.ok", 9, b"ok"))
    t_ping_pong(admin)
    assert t_read_all(admin, 0.2) == b""


def test_denied_hpub_is_a_publish_violation(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    alice = raw_factory(srv, b'CONNECT {"verbose":false,"headers":true,"user":"alice","pass":"pa"}\r\n'
                        b"HPUB foo.secret 12 14\r\nNATS/1.0\r\n\r\nno\r\nPING\r\n")
    alice.timeout = 2.0
    t_expect_exact(alice, pub_err("foo.secret") + b"PONG\r\n")


# -- subscribe permissions --------------------------------------------------------


def test_alice_denied_subscribe_errs_and_stays_open(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    alice = login(srv, raw_factory, "alice")
    # private.* is caught by deny private.>; foo.secret by the literal deny.
    alice.send(b"SUB private.x 1\r\nSUB private.* 2\r\nSUB foo.secret 3\r\nSUB ok 4\r\nPING\r\n")
    t_expect_exact(alice, sub_err("private.x") + sub_err("private.*") + sub_err("foo.secret")
                   + b"PONG\r\n")
    t_ping_pong(alice)
    # Nothing was subscribed for the refused sids; sid 4 works.
    admin = login(srv, raw_factory, "admin")
    admin.send(b"PUB private.x 1\r\n1\r\nPUB foo.secret 1\r\n2\r\nPUB ok 1\r\n3\r\nPING\r\n")
    t_expect_exact(admin, b"PONG\r\n")
    t_expect_exact(alice, msg("ok", 4, b"3"))


def test_alice_wildcard_subscription_never_gets_denied_subjects(any_server_with, raw_factory,
                                                                tmp_path):
    srv = start(any_server_with, tmp_path)
    all_ = login(srv, raw_factory, "alice")
    all_.send(b"SUB > 1\r\n")
    t_ping_pong(all_)
    foo = login(srv, raw_factory, "alice")
    foo.send(b"SUB foo.* 2\r\n")
    t_ping_pong(foo)
    # *.x and *.secret are allowed (see the module docstring), filtered on delivery.
    star = login(srv, raw_factory, "alice", verbose=True)
    star.send(b"SUB *.x 3\r\nSUB *.secret 4\r\nPING\r\n")
    t_expect_exact(star, b"+OK\r\n+OK\r\nPONG\r\n")
    admin = login(srv, raw_factory, "admin")
    admin.send(b"PUB private.x 1\r\n1\r\nPUB foo.secret 1\r\n2\r\nPUB foo.a 1\r\n3\r\n"
               b"PUB x 1\r\n4\r\nPUB private.deep.y 1\r\n5\r\nPUB foo.x 1\r\n6\r\n"
               b"PUB private.x 1\r\n7\r\nPUB foo.secret 1\r\n8\r\nPUB end 1\r\n9\r\nPING\r\n")
    t_expect_exact(admin, b"PONG\r\n")
    t_expect_exact(all_, msg("foo.a", 1, b"3") + msg("x", 1, b"4") + msg("foo.x", 1, b"6")
                   + msg("end", 1, b"9"))
    t_expect_exact(foo, msg("foo.a", 2, b"3") + msg("foo.x", 2, b"6"))
    t_expect_exact(star, msg("foo.x", 3, b"6"))
    for c in (all_, foo, star):
        t_ping_pong(c)


def test_denied_sid_is_not_registered_and_can_be_reused(any_server_with, raw_factory, tmp_path):
    """A refused SUB leaves no subscription: UNSUB of its sid is a silent no-op
    (+OK in verbose mode), and the sid can be used again for an allowed SUB."""
    srv = start(any_server_with, tmp_path)
    alice = login(srv, raw_factory, "alice", verbose=True)
    alice.send(b"SUB private.x 1\r\nUNSUB 1\r\nSUB ok 1\r\nPING\r\n")
    t_expect_exact(alice, sub_err("private.x") + b"+OK\r\n+OK\r\nPONG\r\n")
    admin = login(srv, raw_factory, "admin")
    admin.send(b"PUB private.x 1\r\n1\r\nPUB ok 1\r\n2\r\nPING\r\n")
    t_expect_exact(admin, b"PONG\r\n")
    t_expect_exact(alice, msg("ok", 1, b"2"))


# -- default_permissions ------------------------------------------------------------


def test_bob_gets_default_permissions(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    admin = login(srv, raw_factory, "admin")
    admin.send(b"SUB > 9\r\n")
    t_ping_pong(admin)
    bob = login(srv, raw_factory, "bob")
    bob.send(b"SUB PUBLIC.> 1\r\nSUB _INBOX.> 2\r\nSUB other 3\r\nSUB > 4\r\n"
             b"SUB PUBLIC.* q 5\r\nPING\r\n")
    t_expect_exact(bob, sub_err("other") + sub_err(">") + b"PONG\r\n")
    bob.send(b"PUB SANDBOX.a 1\r\n1\r\nPUB other 1\r\n2\r\nPUB PUBLIC.a 1\r\n3\r\n"
             b"PUB SANDBOX.b.c 1\r\n4\r\nPING\r\n")
    t_expect_exact(bob, pub_err("other") + pub_err("PUBLIC.a") + b"PONG\r\n")
    t_expect_exact(admin, msg("SANDBOX.a", 9, b"1") + msg("SANDBOX.b.c", 9, b"4"))
    admin.send(b"PUB _INBOX.r 1\r\nr\r\nPUB other 1\r\no\r\nPUB PUBLIC.z 1\r\nz\r\nPING\r\n")
    t_expect_exact(admin, msg("_INBOX.r", 9, b"r") + msg("other", 9, b"o")
                   + msg("PUBLIC.z", 9, b"z") + b"PONG\r\n")
    # PUBLIC.z matches sid 1 and queue sid 5: compare without depending on their order.
    t_expect_exact(bob, msg("_INBOX.r", 2, b"r"))
    bob.send(b"PING\r\n")
    got = t_expect(bob, rb"(.*?)PONG\r\n").group(1)
    assert sorted(re.findall(rb"MSG [^\r]*\r\n[^\r]*\r\n", got)) == [
        msg("PUBLIC.z", 1, b"z"), msg("PUBLIC.z", 5, b"z")], got


def test_explicit_permissions_replace_defaults_as_a_whole(any_server_with, raw_factory, tmp_path):
    """qu names only subscribe permissions: publish is then unrestricted (not
    SANDBOX.>), and PUBLIC.> from the defaults is not merged in."""
    srv = start(any_server_with, tmp_path)
    admin = login(srv, raw_factory, "admin")
    admin.send(b"SUB > 9\r\n")
    t_ping_pong(admin)
    qu = login(srv, raw_factory, "qu")
    qu.send(b"PUB anything 1\r\na\r\nSUB PUBLIC.a 1\r\nPING\r\n")
    t_expect_exact(qu, sub_err("PUBLIC.a") + b"PONG\r\n")
    t_expect_exact(admin, msg("anything", 9, b"a"))


# -- queue permissions --------------------------------------------------------------


def test_queue_permissions(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    qu = login(srv, raw_factory, "qu")
    qu.send(b"SUB work.a workers 1\r\nSUB work.a other 2\r\nSUB work.a 3\r\n"
            b"SUB work.b.c workers 4\r\nSUB work.* workers 5\r\nPING\r\n")
    t_expect_exact(qu, sub_err("work.a", "other") + sub_err("work.a") + sub_err("work.b.c", "workers")
                   + b"PONG\r\n")
    admin = login(srv, raw_factory, "admin")
    admin.send(b"PUB work.z 1\r\nz\r\nPING\r\n")
    t_expect_exact(admin, b"PONG\r\n")
    t_expect_exact(qu, msg("work.z", 5, b"z"))
    t_ping_pong(qu)


def test_queue_permission_with_wildcard_queue_name(any_server_with, raw_factory, tmp_path):
    """"jobs.> grp.*": the queue name is matched as a subject (2.9 and 2.15 agree)."""
    srv = start(any_server_with, tmp_path)
    qu = login(srv, raw_factory, "qu")
    qu.send(b"SUB jobs.a grp.x 1\r\nSUB jobs.a grp 2\r\nSUB jobs.a grp.x.y 3\r\n"
            b"SUB jobs.a.b grp.* 4\r\nSUB jobs.a 5\r\nPING\r\n")
    t_expect_exact(qu, sub_err("jobs.a", "grp") + sub_err("jobs.a", "grp.x.y") + sub_err("jobs.a")
                   + b"PONG\r\n")


def test_queue_permission_sublist_quirk_work_fwc(any_server_with, raw_factory, tmp_path):
    """Go quirk: `SUB work.> workers` is allowed by "work.* workers", because
    Go's sublist Match treats the ">" token of the SUB subject as a literal
    token that the allow entry's "*" matches.  It then gets work.a.b too."""
    srv = start(any_server_with, tmp_path)
    qu = login(srv, raw_factory, "qu")
    qu.send(b"SUB work.> workers 1\r\nPING\r\n")
    t_expect_exact(qu, b"PONG\r\n")
    admin = login(srv, raw_factory, "admin")
    admin.send(b"PUB work.a.b 1\r\nw\r\nPING\r\n")
    t_expect_exact(admin, b"PONG\r\n")
    t_expect_exact(qu, msg("work.a.b", 1, b"w"))


# -- pubonly ------------------------------------------------------------------------


def test_pubonly_cannot_subscribe(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    admin = login(srv, raw_factory, "admin")
    admin.send(b"SUB > 9\r\n")
    t_ping_pong(admin)
    p = login(srv, raw_factory, "pubonly")
    p.send(b"SUB x 1\r\nSUB a q 2\r\nSUB > 3\r\nPUB x 1\r\n1\r\nPUB y 1\r\n2\r\nPING\r\n")
    t_expect_exact(p, sub_err("x") + sub_err("a", "q") + sub_err(">") + pub_err("y") + b"PONG\r\n")
    t_expect_exact(admin, msg("x", 9, b"1"))
    t_ping_pong(admin)
    assert t_read_all(admin, 0.1) == b""


# -- verbose ------------------------------------------------------------------------


def test_verbose_denied_pub_and_sub_get_only_the_err(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    alice = login(srv, raw_factory, "alice", verbose=True)
    alice.send(b"PUB foo.secret 2\r\nhi\r\nSUB private.x 1\r\nPUB foo.a 2\r\nhi\r\n"
               b"SUB ok 2\r\nSUB foo.secret 3\r\nPING\r\n")
    t_expect_exact(alice, pub_err("foo.secret") + sub_err("private.x") + b"+OK\r\n+OK\r\n"
                   + sub_err("foo.secret") + b"PONG\r\n")
    qu = login(srv, raw_factory, "qu", verbose=True)
    qu.send(b"SUB work.a other 1\r\nSUB work.a workers 2\r\nPING\r\n")
    t_expect_exact(qu, sub_err("work.a", "other") + b"+OK\r\nPONG\r\n")


# -- log ----------------------------------------------------------------------------


def _violations(srv, raw_factory):
    alice = login(srv, raw_factory, "alice")
    alice.send(b"PUB foo.secret 2\r\nhi\r\nSUB private.x 1\r\nPING\r\n")
    t_expect_exact(alice, pub_err("foo.secret") + sub_err("private.x") + b"PONG\r\n")
    qu = login(srv, raw_factory, "qu")
    qu.send(b"SUB work.a other 7\r\nPING\r\n")
    t_expect_exact(qu, sub_err("work.a", "other") + b"PONG\r\n")
    return alice.sock.getsockname()[1], qu.sock.getsockname()[1]


def test_violations_are_logged_at_err(any_server_with, raw_factory, tmp_path):
    srv = start(any_server_with, tmp_path)
    pa, pq = _violations(srv, raw_factory)
    head = rb"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - [^\n]*"
    srv.wait_for_log(head % pa + rb'Publish Violation - [^\n]*Subject "foo\.secret"', 3)
    srv.wait_for_log(head % pa + rb'Subscription Violation - [^\n]*Subject "private\.x"', 3)
    srv.wait_for_log(head % pq + rb'Subscription Violation - [^\n]*Subject "work\.a", '
                     rb'Queue: "other", SID 7', 3)


def test_violation_log_line_exact_shape(any_server_with, raw_factory, tmp_path):
    """2.9 names the user after the violation; 2.15 names "$G/user:NAME"
    (account/user) before it.  gnatsd.py must match 2.15."""
    srv = start(any_server_with, tmp_path)
    pa, pq = _violations(srv, raw_factory)
    if srv.kind == "nats-server 2.9":
        lines = [(pa, b'Publish Violation - User "alice", Subject "foo.secret"'),
                 (pa, b'Subscription Violation - User "alice", Subject "private.x", SID 1'),
                 (pq, b'Subscription Violation - User "qu", Subject "work.a", Queue: "other", '
                      b'SID 7')]
    else:
        lines = [(pa, b'"$G/user:alice" - Publish Violation - Subject "foo.secret"'),
                 (pa, b'"$G/user:alice" - Subscription Violation - Subject "private.x", SID 1'),
                 (pq, b'"$G/user:qu" - Subscription Violation - Subject "work.a", '
                      b'Queue: "other", SID 7')]
    for port, text in lines:
        srv.wait_for_log(rb"\[ERR\] 127\.0\.0\.1:%d - cid:\d+ - %s\r?\n" % (port, re.escape(text)), 3)


@pytest.mark.parametrize("spelling", ["permission", "authorization"])
def test_a_user_may_spell_permissions_as_go_also_reads_them(any_server_with, raw_factory,
                                                            tmp_path, spelling):
    """Go's users parser takes `permission` and `authorization` for
    `permissions` (nats.js's test configs write `permission`)."""
    conf = write_conf(tmp_path, 'authorization { users = [\n'
                                '  { user: u, password: p, %s: { publish: "ok.>" } }\n] }\n'
                      % spelling)
    srv = any_server_with("-c", conf)
    c = raw_factory(srv, connect=b'CONNECT {"verbose":false,"user":"u","pass":"p"}\r\n')
    c.send(b"PUB ok.1 1\r\nx\r\nPUB no 1\r\nx\r\n")
    t_expect_exact(c, b"-ERR 'Permissions Violation for Publish to \"no\"'\r\n")
