"""Ed25519 in plain Python (issue 17): gnatsd.py's ed25519_public_key,
ed25519_sign and ed25519_verify, which nkey users, operator mode's JWTs
and credentials files use.  RFC 8032 7.1's vectors, PyNaCl on random keys
and messages, rejections, and the cofactorless answer (Go's) on keys and R
with small-order parts, against a slow, independent reference; the
`cryptography` package, when installed, gives the same answers."""

import hashlib
import os
import random
import subprocess
import sys

import pytest

from conftest import GNATSD, import_gnatsd

ed = import_gnatsd()

nacl_signing = pytest.importorskip("nacl.signing")
nacl_exceptions = pytest.importorskip("nacl.exceptions")

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493


@pytest.fixture(autouse=True)
def pure(monkeypatch):
    """Every test runs the pure-Python path unless it asks otherwise."""
    monkeypatch.setattr(ed, "_ED_NATIVE", False)


# RFC 8032 section 7.1: (name, secret key, public key, message, signature).
RFC8032 = [
    ("TEST 1",
     "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
     "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("TEST 2",
     "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("TEST 3",
     "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("TEST 1024",
     "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
     "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
     "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
     "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
     "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
     "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
     "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
     "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
     "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
     "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
     "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
     "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
     "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
     "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
     "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
     "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
     "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
     "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
     "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
     "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
     "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
     "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
     "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
     "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
     "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
     "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
     "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
     "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
     "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
     "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
     "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
     "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
     "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
     "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
     "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
     "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"),
    ("TEST SHA(abc)",
     "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
     "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
     "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
]


def _has_native():
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("native", [False, True], ids=["pure", "native"])
@pytest.mark.parametrize("name,secret,public,message,signature", RFC8032,
                         ids=[v[0] for v in RFC8032])
def test_rfc8032(monkeypatch, native, name, secret, public, message, signature):
    if native:
        if not _has_native():
            pytest.skip("no cryptography")
        monkeypatch.setattr(ed, "_ED_NATIVE", None)
    secret, public, message, signature = map(bytes.fromhex, (secret, public, message, signature))
    if name == "TEST 1024":
        assert len(message) == 1023
    if name == "TEST SHA(abc)":
        assert message == hashlib.sha512(b"abc").digest()
    assert ed.ed25519_public_key(secret) == public
    assert ed.ed25519_sign(secret, message) == signature
    assert ed.ed25519_verify(public, message, signature)
    assert not ed.ed25519_verify(public, message + b"\0", signature)
    # The same vectors through PyNaCl (a check of the typed hex).
    key = nacl_signing.SigningKey(secret)
    assert bytes(key.verify_key) == public
    assert key.sign(message).signature == signature
    assert (ed._ED_NATIVE is False) is (not native)


def _tampered(data: bytes, rng: random.Random) -> bytes:
    """data with one random bit flipped."""
    raw = bytearray(data)
    bit = rng.randrange(len(raw) * 8)
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


def test_random_against_pynacl():
    rng = random.Random(8032)
    for i in range(500):
        seed = rng.randbytes(32) if hasattr(rng, "randbytes") else os.urandom(32)
        size = rng.choice((0, 1, 11, 15, 64, 200, 1000))
        message = bytes(rng.getrandbits(8) for _ in range(size))
        key = nacl_signing.SigningKey(seed)
        public = bytes(key.verify_key)
        signature = key.sign(message).signature
        assert ed.ed25519_public_key(seed) == public, i
        assert ed.ed25519_sign(seed, message) == signature, i
        assert ed.ed25519_verify(public, message, signature), i
        # Tampered signature (R half and S half), key and message.
        bad_r = _tampered(signature[:32], rng) + signature[32:]
        bad_s = signature[:32] + _tampered(signature[32:], rng)
        assert not ed.ed25519_verify(public, message, bad_r), i
        assert not ed.ed25519_verify(public, message, bad_s), i
        assert not ed.ed25519_verify(_tampered(public, rng), message, signature), i
        bad_message = _tampered(message, rng) if message else b"\0"
        assert not ed.ed25519_verify(public, bad_message, signature), i
        # S + L: the same point equation, a non-canonical S (RFC 8032 5.1.7).
        s = int.from_bytes(signature[32:], "little")
        high = signature[:32] + (s + L).to_bytes(32, "little")
        assert not ed.ed25519_verify(public, message, high), i
        with pytest.raises(nacl_exceptions.BadSignatureError):
            key.verify_key.verify(message, high)


def test_bad_lengths_and_s():
    seed = bytes(range(32))
    public = ed.ed25519_public_key(seed)
    signature = ed.ed25519_sign(seed, b"nonce")
    assert ed.ed25519_verify(public, b"nonce", signature)
    assert not ed.ed25519_verify(public[:31], b"nonce", signature)
    assert not ed.ed25519_verify(public + b"\0", b"nonce", signature)
    assert not ed.ed25519_verify(public, b"nonce", signature[:63])
    assert not ed.ed25519_verify(public, b"nonce", signature + b"\0")
    assert not ed.ed25519_verify(public, b"nonce", b"")
    for s in (L, 2 ** 256 - 1):
        assert not ed.ed25519_verify(public, b"nonce", signature[:32] + s.to_bytes(32, "little"))
    with pytest.raises(ValueError):
        ed.ed25519_sign(seed[:31], b"x")
    with pytest.raises(ValueError):
        ed.ed25519_public_key(seed + b"\0")


# A slow reference, independent of gnatsd.py's formulas: projective (X:Y:Z)
# coordinates with the unified addition add-2007-bl, double-and-add.
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)


def ref_add_projective(a, b):
    x1, y1, z1 = a
    x2, y2, z2 = b
    aa = z1 * z2 % P
    bb = aa * aa % P
    c, d = x1 * x2 % P, y1 * y2 % P
    e = D * c * d % P
    f, g = bb - e, bb + e
    return (aa * f * ((x1 + y1) * (x2 + y2) - c - d) % P, aa * g * (d + c) % P, f * g % P)


def ref_affine(point):
    x, y, z = point
    zi = pow(z, P - 2, P)
    return (x * zi % P, y * zi % P)


def ref_add(a, b):
    return ref_affine(ref_add_projective(a + (1,), b + (1,)))


def ref_mul(k, point):
    point = point + (1,)
    result = (0, 1, 1)
    for bit in bin(k)[2:]:
        result = ref_add_projective(result, result)
        if bit == "1":
            result = ref_add_projective(result, point)
    return ref_affine(result)


def ref_neg(point):
    return (-point[0] % P, point[1])


def ref_decode(data):
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P or (x == 0 and sign):
        return None
    return (P - x if x & 1 != sign else x, y)


def ref_encode(point):
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


BASE = ref_decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def ref_verify(public, message, signature):
    """Go's crypto/ed25519: encode([S]B - [h]A) == R, S < L."""
    a = ref_decode(public)
    s = int.from_bytes(signature[32:], "little")
    if a is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return ref_encode(ref_add(ref_mul(s, BASE), ref_neg(ref_mul(h, a)))) == signature[:32]


def torsion_points():
    """The 8 points of order dividing 8: [L]P of points P until all found."""
    found = {IDENTITY}
    y = 2
    while len(found) < 8:
        point = ref_decode(y.to_bytes(32, "little"))
        y += 1
        if point is not None:
            t = ref_mul(L, point)
            for _ in range(8):
                found.add(t)
                t = ref_add(t, ref_mul(L, point))
    return sorted(found)


TORSION = torsion_points()


def test_reference_agrees_on_vectors():
    for _, secret, public, message, signature in RFC8032[:3]:
        public, message, signature = map(bytes.fromhex, (public, message, signature))
        assert ref_verify(public, message, signature)
        assert ref_encode(ref_mul(1, BASE)) == ed._ED_BY.to_bytes(32, "little")


def test_torsion_is_order_8():
    assert len(TORSION) == 8
    for t in TORSION:
        assert ref_mul(8, t) == IDENTITY
    assert any(ref_mul(4, t) != IDENTITY for t in TORSION)


def test_mixed_order_keys_cofactorless():
    """A = [a]B + T, R = [r]B + T': Go accepts only when T' = -[h]T
    (cofactorless); a cofactored check would accept all of them.  Every
    answer is the reference's; PyNaCl (libsodium's check is cofactorless
    too) agrees when neither A nor R is of small order."""
    rng = random.Random(25519)
    accepted = rejected = 0
    for i in range(60):
        a, r = rng.randrange(1, L), rng.randrange(1, L)
        t_a, t_r = rng.choice(TORSION), rng.choice(TORSION)
        public = ref_encode(ref_add(ref_mul(a, BASE), t_a))
        big_r = ref_encode(ref_add(ref_mul(r, BASE), t_r))
        message = b"m%d" % i
        h = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % L
        signature = big_r + ((r + h * a) % L).to_bytes(32, "little")
        expected = t_r == ref_neg(ref_mul(h, t_a))
        assert ref_verify(public, message, signature) == expected, i
        assert ed.ed25519_verify(public, message, signature) == expected, i
        try:
            nacl_signing.VerifyKey(public).verify(message, signature)
            nacl_answer = True
        except nacl_exceptions.BadSignatureError:
            nacl_answer = False
        assert nacl_answer == expected, i
        accepted += expected
        rejected += not expected
    assert accepted and rejected


def test_small_order_keys():
    """Keys of small order (the identity, order 2, 4, 8): Go's answer."""
    rng = random.Random(7)
    accepted = 0
    for t in TORSION:
        public = ref_encode(t)
        for i in range(4):
            s = rng.randrange(L)
            message = b"small %d" % i
            # With A of order 8, [S]B - [h]A is [S]B - [h mod 8]A: R of
            # the form [S]B + T' (h depends on R: some T' are right).
            for t_r in TORSION:
                big_r = ref_encode(ref_add(ref_mul(s, BASE), t_r))
                signature = big_r + s.to_bytes(32, "little")
                expected = ref_verify(public, message, signature)
                assert ed.ed25519_verify(public, message, signature) == expected
                accepted += expected
    assert accepted >= 2 * 8 // 8   # the identity key accepts R = [S]B


def test_non_points_rejected():
    seed = b"\x07" * 32
    signature = ed.ed25519_sign(seed, b"m")
    # y with no x on the curve.
    y = 2
    while ref_decode(y.to_bytes(32, "little")) is not None:
        y += 1
    not_a_point = y.to_bytes(32, "little")
    assert ed._ed_decode(not_a_point) is None
    assert not ed.ed25519_verify(not_a_point, b"m", signature)
    assert not ed.ed25519_verify(ed.ed25519_public_key(seed), b"m", not_a_point + signature[32:])
    # Non-canonical encodings: y >= p, and x = 0 with the sign bit set.
    for y in (P, P + 1, 2 ** 255 - 1):
        assert ed._ed_decode(y.to_bytes(32, "little")) is None
    assert ed._ed_decode((1 | 1 << 255).to_bytes(32, "little")) is None
    assert ed._ed_decode((P - 1 | 1 << 255).to_bytes(32, "little")) is None
    assert ed._ed_decode((1).to_bytes(32, "little")) == (0, 1)


def test_decode_matches_reference():
    rng = random.Random(3)
    for _ in range(300):
        data = rng.getrandbits(256).to_bytes(32, "little")
        assert ed._ed_decode(data) == ref_decode(data)


def test_halve():
    rng = random.Random(5)
    special = [0, 1, 2, 3, 2 ** 128, L - 1, L - 8, L // 2]
    for h in special + [rng.randrange(L) for _ in range(2000)]:
        u, v = ed._ed_halve(h)
        assert v & 1 and 0 <= u < 8 * L and abs(v) < 2 ** 128
        assert (u - h * v) % (8 * L) == 0
        if h not in special:
            assert u < 2 ** 150     # ~128 bits: rarely many more


def test_sum():
    """_ed_sum against the reference, on scalars of all sizes and both
    kinds of table (and on the empty sum)."""
    rng = random.Random(13)
    tables = ed._ed_base_table()
    point = ref_mul(rng.randrange(L), BASE)
    odd = ed._ed_odd_multiples((point[0], point[1], 1, point[0] * point[1] % P),
                               1 << (ed._ED_VAR_W - 2))
    var_table = ed._ed_signed_table([ed._ed_cached(m) for m in odd])
    edges = [(0, 0, 0), (1, 0, 0), (0, 0, 1), (2 ** 128 - 1, 2 ** 125 - 1, 2 ** 130 - 1)]
    for k1, k2, k3 in edges + [
            (rng.getrandbits(128), rng.getrandbits(rng.randrange(1, 130)), rng.getrandbits(128))
            for _ in range(6)]:
        x, y, z = ed._ed_sum([(k1, tables[0]), (k2, tables[128 // ed._ED_BASE_STEP])],
                             [(k3, var_table)])
        expected = ref_add(ref_mul(k1 + (k2 << 128), BASE), ref_mul(k3, point))
        assert ref_affine((x, y, z)) == expected


def test_key_cache():
    """Decoded keys are cached, bounded; a bad key is not cached."""
    ed._ED_KEYS.clear()
    seed = b"\x01" * 32
    public = ed.ed25519_public_key(seed)
    signature = ed.ed25519_sign(seed, b"m")
    assert ed.ed25519_verify(public, b"m", signature)
    assert public in ed._ED_KEYS
    assert ed.ed25519_verify(bytearray(public), b"m", signature)      # bytes-like too
    assert not ed.ed25519_verify(public, b"n", signature)
    y = 2
    while ref_decode(y.to_bytes(32, "little")) is not None:
        y += 1
    assert not ed.ed25519_verify(y.to_bytes(32, "little"), b"m", signature)
    assert len(ed._ED_KEYS) == 1
    for i in range(ed._ED_KEYS_MAX + 5):
        ed.ed25519_verify(ref_encode(ref_mul(i + 2, BASE)), b"m", signature)   # new keys
    assert len(ed._ED_KEYS) <= ed._ED_KEYS_MAX
    assert ed.ed25519_verify(public, b"m", signature)


def test_base_table():
    tables = ed._ed_base_table()
    assert len(tables) == 256 // ed._ED_BASE_STEP
    for j in (0, 3, 7):
        base = ref_mul(2 ** (ed._ED_BASE_STEP * j), BASE)
        for d in (1, 3, 127, -1, -127):
            x, y = ref_mul(abs(d), base)
            if d < 0:
                x = -x % P
            yp, ym, t2d = tables[j][d]
            assert (yp % P, ym % P, t2d % P) == ((y + x) % P, (y - x) % P, 2 * D * x * y % P)


def test_sha512_matches_hashlib():
    for data in (b"", b"abc", bytes(range(256)) * 9):
        assert ed._ed_sha512(data) == hashlib.sha512(data).digest()
        assert ed._ed_sha512(data[:5], data[5:]) == hashlib.sha512(data).digest()


def test_sha512_fallback_to_hashlib(monkeypatch):
    """No _sha2/_sha512 built: hashlib's sha512."""
    monkeypatch.setitem(sys.modules, "_sha2", None)
    monkeypatch.setitem(sys.modules, "_sha512", None)
    monkeypatch.setattr(ed, "_ED_SHA512", None)
    assert ed._ed_sha512(b"abc") == hashlib.sha512(b"abc").digest()
    assert ed._ED_SHA512 is hashlib.sha512
    monkeypatch.setattr(ed, "_ED_SHA512", None)


def test_native_agrees():
    if not _has_native():
        pytest.skip("no cryptography")
    rng = random.Random(11)
    cases = []
    for i in range(30):
        seed = bytes(rng.getrandbits(8) for _ in range(32))
        message = bytes(rng.getrandbits(8) for _ in range(i * 3))
        cases.append((seed, message))
    pure = [(ed.ed25519_public_key(s), ed.ed25519_sign(s, m)) for s, m in cases]
    ed._ED_NATIVE = None
    assert ed._ed_native()
    native = [(ed.ed25519_public_key(s), ed.ed25519_sign(s, m)) for s, m in cases]
    assert pure == native
    for (seed, message), (public, signature) in zip(cases, native):
        assert ed.ed25519_verify(public, message, signature)
        assert not ed.ed25519_verify(public, message + b"!", signature)


def test_no_hashlib_no_libcrypto():
    """The pure path uses CPython's own sha512 (when built): no hashlib, no
    OpenSSL mapped."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('gnatsd', %r)\n"
            "ed = importlib.util.module_from_spec(spec); sys.modules['gnatsd'] = ed\n"
            "spec.loader.exec_module(ed); ed._ED_NATIVE = False\n"
            "s = ed.ed25519_sign(bytes(32), b'x')\n"
            "assert ed.ed25519_verify(ed.ed25519_public_key(bytes(32)), b'x', s)\n"
            "maps = open('/proc/self/maps').read()\n"
            "print('hashlib' in sys.modules, 'libcrypto' in maps)\n" % GNATSD)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
