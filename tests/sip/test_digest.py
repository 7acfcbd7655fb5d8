"""Digest authentication: the RFCs' test vectors, credentials parsing, stateless nonces."""

import random

import pytest
from hypothesis import given, strategies as st

from gateway.protocols.sip import digest
from gateway.protocols.sip.digest import (
    FORGED, FRESH, STALE, DigestError, DigestProof, NonceCounts, NonceSigner, challenges,
    parse_credentials, response_digest,
)

# RFC 2617 §3.5: the Mufasa example (HTTP, but the formula is SIP's).
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com",'
    ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth,'
    ' nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1",'
    ' opaque="5ccc069c403ebaf9f0171e9517f40e41"')

# RFC 7616 §3.9.1: the same request with SHA-256 and MD5.
RFC7616 = dict(username="Mufasa", realm="http-auth@example.org", password="Circle of Life",
               method="GET", uri="/dir/index.html",
               nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc="00000001",
               cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop="auth")


def test_rfc2617_mufasa_response():
    assert response_digest("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET",
                           "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                           "00000001", "0a4f113b", "auth") == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize("algorithm, expected", [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_rfc7616_responses(algorithm, expected):
    assert response_digest(algorithm, **RFC7616) == expected


def test_the_rfc2617_authorization_parses_and_its_proof_knows_only_the_right_secret():
    credentials = parse_credentials(RFC2617_AUTHORIZATION)
    assert credentials["username"] == "Mufasa" and credentials["nc"] == "00000001"
    assert credentials["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert credentials.algorithm == "MD5"
    proof = DigestProof("Mufasa", "testrealm@host.com", "GET", credentials)
    assert proof.passphrase is None
    assert proof.matches("Circle Of Life")
    assert not proof.matches("Circle of Life")
    assert "6629fae" not in repr(credentials) + repr(proof)


def test_a_sha256_proof_and_a_response_without_qop():
    value = response_digest("SHA-256", **RFC7616)
    credentials = parse_credentials(
        f'Digest username="Mufasa", realm="x", uri="/dir/index.html", algorithm=SHA-256,'
        f' nonce="{RFC7616["nonce"]}", nc=00000001, cnonce="{RFC7616["cnonce"]}",'
        f' qop=auth, response="{value}"')
    assert DigestProof("Mufasa", "http-auth@example.org", "GET", credentials).matches(
        "Circle of Life")
    # RFC 2069 form, as pyVoIP sends it: no qop, no nc, no cnonce, no spaces.
    plain = response_digest("MD5", "alice", "jam", "secret", "REGISTER",
                            "sip:127.0.0.1;transport=UDP", "abc")
    credentials = parse_credentials(
        f'Digest username="alice",realm="asterisk",nonce="abc",'
        f'uri="sip:127.0.0.1;transport=UDP",response="{plain}",algorithm=MD5')
    assert DigestProof("alice", "jam", "REGISTER", credentials).matches("secret")


def test_an_md5_response_under_another_algorithm_name_is_checked_as_md5():
    plain = response_digest("MD5", "alice", "jam", "secret", "INVITE", "sip:demo@h", "n")
    credentials = parse_credentials(f'Digest username="alice", nonce="n", uri="sip:demo@h",'
                                    f' response="{plain}", algorithm=SHA-256')
    assert DigestProof("alice", "jam", "INVITE", credentials).matches("secret")


def test_sess_algorithms():
    value = response_digest("MD5-sess", "u", "r", "p", "INVITE", "sip:x@y", "n", "00000001",
                            "c", "auth")
    credentials = parse_credentials(f'Digest username="u", nonce="n", uri="sip:x@y", qop=auth,'
                                    f' nc=00000001, cnonce="c", algorithm=MD5-sess,'
                                    f' response="{value}"')
    assert DigestProof("u", "r", "INVITE", credentials).matches("p")


@pytest.mark.parametrize("value", [
    None, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Digest", 'Digest username="a"',
    'Digest username="a", nonce="n", uri="u", response="zz"',
    'Digest username="a", nonce="n", uri="u", response="00", qop=auth-int, nc=00000001, cnonce="c"',
    'Digest username="a", nonce="n", uri="u", response="00", qop=auth',
    'Digest username="a", nonce="n", uri="u", response="00", algorithm=SHA-512',
    'Digest username="a", nonce="n", uri="u", response="00", algorithm=MD5-sess',
    'Digest username="a" nonce="n"',
    "Digest " + "a=b, " * 40,
])
def test_unusable_credentials_are_refused(value):
    with pytest.raises(DigestError):
        parse_credentials(value)


def test_quoted_strings_with_escapes_and_commas():
    credentials = parse_credentials(
        r'Digest username="al\"ice, jr", nonce="n", uri="sip:a@b", response="00"')
    assert credentials["username"] == 'alice, jr'.replace("alice", 'al"ice')


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_digest_error(text):
    try:
        parse_credentials("Digest " + text)
    except DigestError:
        pass


def test_challenges_offer_md5_first_then_sha256_with_one_nonce():
    md5, sha256 = challenges('j"am', "NONCE", stale=True)
    assert md5 == 'Digest realm="j\\"am", nonce="NONCE", algorithm=MD5, qop="auth", stale=true'
    assert sha256.startswith('Digest realm="j\\"am", nonce="NONCE", algorithm=SHA-256')


def test_nonces_are_ours_fresh_then_stale_and_forgeries_are_seen():
    signer = NonceSigner(b"k" * 32, lifetime=300, rng=random.Random(1))
    nonce = signer.issue(1000.0)
    assert not set(nonce) & set('=,"\\ ')
    assert signer.check(nonce, 1000.0) == FRESH
    assert signer.check(nonce, 1299.0) == FRESH
    assert signer.check(nonce, 1301.0) == STALE
    assert signer.check(nonce, 990.0) == STALE          # from the future
    assert NonceSigner(b"x" * 32).check(nonce, 1000.0) == FORGED
    time, salt, mac = nonce.split(".")
    assert signer.check(f"{int(time, 16) + 100:x}.{salt}.{mac}", 1000.0) == FORGED
    for junk in ("", "a.b", "zz.yy.xx", "é.é.é", "." * 80):
        assert signer.check(junk, 1000.0) == FORGED
    assert signer.issue(1000.0) != nonce                # salted


def test_nonce_counts_go_up_and_forgetting_never_admits_a_replay():
    counts = NonceCounts(max_nonces=2)
    assert counts.acceptable("a", 1) and not counts.acceptable("a", 2)
    counts.accepted("a", 1)
    assert not counts.acceptable("a", 1) and counts.acceptable("a", 2)
    counts.accepted("b", 1)
    counts.accepted("c", 1)
    assert len(counts) == 2
    assert not counts.acceptable("a", 2)                # forgotten: a fresh nonce is needed
    assert digest.OFFERED == ("MD5", "SHA-256")
