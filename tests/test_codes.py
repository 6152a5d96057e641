"""The signed code format (docs/codes.md): what a kiosk accepts and why it refuses."""

from __future__ import annotations

import json
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from o2o_protocol.codes import (
    Code,
    Rejected,
    b64url_decode,
    b64url_encode,
    extract_token,
    issue_code,
    verify_code,
)
from o2o_protocol.messages import Reason
from tests.keys import Issuer

NOW = time.time()
ISSUER = Issuer(clock=lambda: NOW)


def verify(text: str, *, store: str = "s1", now: float = NOW) -> Code | Rejected:
    return verify_code(text, ISSUER.public_keys, store=store, now=now)


def reason(text: str, **kw: object) -> Reason | None:
    result = verify(text, **kw)  # type: ignore[arg-type]
    return result.reason if isinstance(result, Rejected) else None


def test_every_code_type_round_trips() -> None:
    for t in "mcpsr":
        token = ISSUER.code(t, f"id-{t}", n="小明")
        result = verify(token)
        assert isinstance(result, Code), result
        assert result.type.value == t and result.id == f"id-{t}"
        assert result.payload.n == "小明"


def test_token_layout_is_the_public_format() -> None:
    token = ISSUER.code("c", "cp-1", cp="spring", v="¥10 off")
    prefix, payload, sig = token.split(".")
    assert prefix == "O2O1"
    body = json.loads(b64url_decode(payload))
    assert body["t"] == "c" and body["st"] == "s1" and body["kid"] == ISSUER.kid
    assert body["cp"] == "spring" and body["v"] == "¥10 off"
    assert "=" not in token
    ISSUER.key.public_key().verify(b64url_decode(sig), f"{prefix}.{payload}".encode())


def test_rejection_reasons() -> None:
    assert reason(ISSUER.code("c", "x"), store="other") is Reason.WRONG_STORE
    assert reason(ISSUER.code("c", "x", exp=int(NOW) - 3600)) is Reason.EXPIRED
    assert reason(ISSUER.code("c", "x", nbf=int(NOW) + 3600)) is Reason.NOT_YET_VALID
    assert reason(ISSUER.code("m", "x", iat=int(NOW) + 3600)) is Reason.NOT_YET_VALID
    stranger = Issuer()
    assert reason(stranger.code("m", "x")) is Reason.UNKNOWN_KEY
    assert reason("hello world") is Reason.MALFORMED
    assert reason("") is Reason.MALFORMED


def test_forged_payload_with_trusted_kid_is_bad_signature() -> None:
    token = ISSUER.code("c", "cp-1", v="¥10")
    prefix, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body["v"] = "¥1000"
    forged = f"{prefix}.{b64url_encode(json.dumps(body).encode())}.{sig}"
    assert reason(forged) is Reason.BAD_SIGNATURE
    # A key the attacker made, claiming the shop's key id, is no better.
    attacker = Ed25519PrivateKey.generate()
    signed = f"{prefix}.{payload}"
    assert reason(f"{signed}.{b64url_encode(attacker.sign(signed.encode()))}") is (
        Reason.BAD_SIGNATURE
    )


def test_coupon_without_expiry_is_malformed() -> None:
    body = {"t": "c", "id": "x", "st": "s1", "kid": ISSUER.kid, "iat": int(NOW)}
    payload = b64url_encode(json.dumps(body).encode())
    signed = f"O2O1.{payload}"
    token = f"{signed}.{b64url_encode(ISSUER.key.sign(signed.encode()))}"
    assert reason(token) is Reason.MALFORMED


def test_token_inside_a_url_is_accepted() -> None:
    token = ISSUER.code("m", "u1")
    assert extract_token(f"https://shop.example/m/{token}") == token
    assert extract_token(f"https://shop.example/join?c={token}&x=1") == token
    assert isinstance(verify(f"https://shop.example/c/{token}/"), Code)


def test_issuer_refuses_to_sign_a_malformed_payload() -> None:
    try:
        issue_code(ISSUER.key, type="c", id="x", store="s1", iat="soon")  # type: ignore[arg-type]
    except ValueError:
        return
    raise AssertionError("issue_code signed a payload with a non-integer iat")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_random_text_never_raises_and_is_refused(text: str) -> None:
    result = verify(text)
    assert isinstance(result, Rejected)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_tokens_are_refused_never_raise(data: st.DataObject) -> None:
    token = ISSUER.code(data.draw(st.sampled_from("mcpsr")), "id-1")
    pos = data.draw(st.integers(0, len(token) - 1))
    op = data.draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
    ch = data.draw(st.characters(codec="ascii"))
    if op == "flip":
        if token[pos] == ch:
            return
        mutated = token[:pos] + ch + token[pos + 1 :]
    elif op == "drop":
        mutated = token[:pos] + token[pos + 1 :]
    elif op == "insert":
        mutated = token[:pos] + ch + token[pos:]
    else:
        mutated = token[:pos]
    if mutated.strip() == token:
        return  # whitespace around a scan is not part of the code
    # One code has one spelling: any change at all is refused, never accepted.
    result = verify(mutated)
    assert isinstance(result, Rejected)
    assert result.reason in {Reason.MALFORMED, Reason.BAD_SIGNATURE, Reason.UNKNOWN_KEY}


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=8,
        ),
    )
)
def test_signed_but_arbitrary_json_never_raises(body: dict[str, object]) -> None:
    payload = b64url_encode(json.dumps(body).encode())
    signed = f"O2O1.{payload}"
    token = f"{signed}.{b64url_encode(ISSUER.key.sign(signed.encode()))}"
    result = verify(token)
    assert isinstance(result, Rejected)


def test_expiry_is_exact_and_overlong_codes_are_not_issued() -> None:
    assert reason(ISSUER.code("c", "x", exp=int(NOW) - 1)) is Reason.EXPIRED
    assert reason(ISSUER.code("c", "x", exp=int(NOW) + 5)) is None
    try:
        ISSUER.code("m", "x", n="名" * 700)
    except ValueError as exc:
        assert "at most" in str(exc)
    else:
        raise AssertionError("a code longer than kiosks read was issued")


def test_lone_surrogates_are_malformed() -> None:
    body = {"t": "m", "id": "\ud800", "st": "s1", "kid": ISSUER.kid, "iat": int(NOW)}
    payload = b64url_encode(json.dumps(body).encode())
    token = f"O2O1.{payload}.{b64url_encode(b'x' * 64)}"
    assert reason(token) is Reason.MALFORMED


# --- campaign codes (docs/codes.md: cn, ck, hrs, uses; ac) -------------------------------

HOURS = [{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}]


def signed_body(**fields: object) -> str:
    """A signed coupon whose payload the issuer would refuse to sign."""
    body = {"t": "c", "id": "x", "st": "s1", "kid": ISSUER.kid, "iat": int(NOW) - 60}
    body.update(exp=int(NOW) + 3600, **fields)
    signed = f"O2O1.{b64url_encode(json.dumps(body).encode())}"
    return f"{signed}.{b64url_encode(ISSUER.key.sign(signed.encode()))}"


def test_campaign_fields_are_named_on_the_code() -> None:
    token = ISSUER.code(
        "c", "vc1", cp="spring", cn="春季团购", ck="visit_card", v="双人套餐", hrs=HOURS, uses=3
    )
    c = verify(token)
    assert isinstance(c, Code)
    assert (c.campaign, c.campaign_name, c.kind, c.value, c.uses) == (
        "spring",
        "春季团购",
        "visit_card",
        "双人套餐",
        3,
    )
    assert [w.wire() for w in c.hours] == HOURS
    ticket = verify(ISSUER.code("r", "t1", ac="yoga-1", sv="Yoga"))
    assert isinstance(ticket, Code) and ticket.activity == "yoga-1"


def test_old_coupon_is_single_use_at_any_time() -> None:
    c = verify(ISSUER.code("c", "old", cp="spring", v="¥10 off"))
    assert isinstance(c, Code)
    assert (c.uses, c.hours, c.campaign_name, c.kind) == (1, (), None, None)


def test_unreadable_hours_or_uses_are_malformed_never_raise() -> None:
    bad = [
        {"hrs": []},
        {"hrs": "14:00-17:00"},
        {"hrs": [{"days": [8], "from": "14:00", "to": "17:00"}]},
        {"hrs": [{"days": [2], "from": "25:00", "to": "17:00"}]},
        {"hrs": [{"days": [2], "from": "14:00"}]},
        {"hrs": [{"days": [True], "from": "14:00", "to": "17:00"}]},
        {"hrs": [{"days": ["2"], "from": "14:00", "to": "17:00"}]},
        {"hrs": HOURS * 15},
        {"uses": 1},
        {"uses": 0},
        {"uses": "3"},
        {"uses": 2.5},
        {"uses": True},
    ]
    for fields in bad:
        result = verify(signed_body(**fields))
        assert isinstance(result, Rejected) and result.reason is Reason.MALFORMED, fields
    assert isinstance(verify(signed_body(hrs=HOURS, uses=2)), Code)
