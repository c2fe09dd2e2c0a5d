"""Tests for viworks.signing: envelopes, signatures, refusals, keys (and fuzzing of verify)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from viworks import pki, protocol, signing
from viworks.cli import main as cli_main

NOW = 1_800_000_000.0
KEY = signing.generate_private_key()
NEXT = signing.generate_private_key()
OTHER = signing.generate_private_key()
TRUSTED = (KEY.public_key(),)


def envelope(**changes) -> signing.Envelope:
    base = signing.envelope_for(
        command_id="c1",
        agent_id="gw-1",
        verb="create_panel_user",
        args={"username": "alice", "password": "correct-horse", "n": 1.5},
        expires_at=NOW + 3600,
        timeout=60.0,
        now=NOW,
        nonce="n" * 32,
    )
    return dataclasses.replace(base, **changes)


def frame_fields(env: signing.Envelope, sig: dict) -> dict:
    """The fields of the ``command`` frame the backend sends for ``env``."""
    return {
        "command_id": env.command_id,
        "agent_id": env.agent_id,
        "verb": env.verb,
        "args": dict(env.args),
        "timeout": env.timeout,
        "redacted": env.redacted,
        "expires_at": env.expires_at,
        "signature": sig,
    }


def check(env, sig, keys=TRUSTED, agent_id="gw-1", now=NOW, window=60.0):
    signing.verify(list(keys), env, sig, agent_id=agent_id, now=now, window=window)


class SignVerifyTests(unittest.TestCase):
    def refused(self, code: str, env, sig, **kw) -> signing.SignatureRefused:
        err = self.assertRaises(signing.SignatureRefused, check, env, sig, **kw)
        self.assertEqual(err.code, code, err.message)
        return err

    def frame_refused(self, check, fields) -> None:
        """``check`` (a Verifier method) refuses the received ``fields`` as INVALID_SIGNATURE."""
        err = self.assertRaises(signing.SignatureRefused, check, fields, agent_id="gw-1", now=NOW)
        self.assertEqual(err.code, signing.INVALID_SIGNATURE, err.message)

    def test_round_trip(self):
        """What sign produces verifies, also after the frame went through JSON."""
        env = envelope()
        sig = signing.sign(KEY, env)
        self.assertEqual(set(sig), {"key_id", "nonce", "issued_at", "sig"})
        self.assertEqual(sig["key_id"], signing.key_id(KEY.public_key()))
        self.assertEqual(len(base64.b64decode(sig["sig"])), 64)
        check(env, sig)
        payload = protocol.encode(
            "command",
            command_id=env.command_id,
            agent_id=env.agent_id,
            verb=env.verb,
            args=dict(env.args),
            timeout=env.timeout,
            expires_at=env.expires_at,
            signature=sig,
        )
        frame = protocol.decode(payload)
        verifier = signing.Verifier([KEY.public_key()], 60.0)
        self.assertEqual(verifier.check(frame.fields, agent_id="gw-1", now=NOW), env)

    def test_canonical_is_deterministic(self):
        """Key order does not matter; the bytes are ASCII with a fixed prefix."""
        a = envelope(args={"b": 1, "a": {"y": 2, "x": "é"}})
        b = envelope(args={"a": {"x": "é", "y": 2}, "b": 1})
        self.assertEqual(signing.canonical(a), signing.canonical(b))
        self.assertTrue(signing.canonical(a).startswith(b"viworks-command-v2\n"))
        signing.canonical(a).decode("ascii")

    def test_fresh_nonces(self):
        """Every delivery gets its own nonce."""
        nonces = {
            signing.envelope_for(
                command_id="c", agent_id="a", verb="v", args={}, expires_at=None, timeout=1, now=NOW
            ).nonce
            for _ in range(50)
        }
        self.assertEqual(len(nonces), 50)

    def test_unsigned_and_malformed(self):
        """No signature, or one that is not well formed, is INVALID_SIGNATURE."""
        env = envelope()
        good = signing.sign(KEY, env)
        self.refused(signing.INVALID_SIGNATURE, env, None)
        self.refused(signing.INVALID_SIGNATURE, env, "sig")
        self.refused(signing.INVALID_SIGNATURE, env, {})
        self.refused(signing.INVALID_SIGNATURE, env, {**good, "sig": "not base64!"})
        self.refused(
            signing.INVALID_SIGNATURE, env, {**good, "sig": base64.b64encode(b"x" * 63).decode()}
        )
        self.refused(signing.INVALID_SIGNATURE, env, {**good, "sig": 5})
        self.refused(signing.INVALID_SIGNATURE, None, good)

    def test_wrong_or_unknown_key(self):
        """A signature by a key the agent does not list is refused, even with a listed key id."""
        env = envelope()
        self.refused(signing.INVALID_SIGNATURE, env, signing.sign(OTHER, env))
        forged = {**signing.sign(OTHER, env), "key_id": signing.key_id(KEY.public_key())}
        self.refused(signing.INVALID_SIGNATURE, env, forged)
        self.refused(signing.INVALID_SIGNATURE, env, signing.sign(KEY, env), keys=())

    def test_tampering(self):
        """Changing any covered field after signing breaks the signature."""
        env = envelope()
        sig = signing.sign(KEY, env)
        for change in (
            {"args": {**env.args, "username": "mallory"}},
            {"args": {**env.args, "extra": True}},
            {"verb": "delete_panel_user"},
            {"agent_id": "gw-2"},
            {"command_id": "c2"},
            {"expires_at": NOW + 7200},
            {"expires_at": None},
            {"timeout": 0.001},
            {"timeout": 60},  # an integer: a different JSON value
            {"redacted": True},
        ):
            self.refused(signing.INVALID_SIGNATURE, dataclasses.replace(env, **change), sig)
        # nonce and issued_at travel in the signature object: changing them there breaks it too.
        other_nonce = dataclasses.replace(env, nonce="m" * 32)
        self.refused(signing.INVALID_SIGNATURE, other_nonce, {**sig, "nonce": "m" * 32})
        later = dataclasses.replace(env, issued_at=NOW + 1)
        self.refused(signing.INVALID_SIGNATURE, later, {**sig, "issued_at": NOW + 1})
        # ... and a signature object that disagrees with the envelope is refused as such.
        self.refused(signing.INVALID_SIGNATURE, env, {**sig, "nonce": "m" * 32})

    def test_timeout_and_redacted_are_covered_on_the_wire(self):
        """A frame whose timeout or redacted flag was edited, added or removed is refused."""
        verifier = signing.Verifier([KEY.public_key()], 60.0)
        env = envelope(redacted=True)
        fields = frame_fields(env, signing.sign(KEY, env))
        self.assertEqual(verifier.check(fields, agent_id="gw-1", now=NOW), env)
        for change in ({"timeout": 0.001}, {"redacted": False}, {"redacted": "yes"}):
            self.frame_refused(verifier.check, {**fields, **change})
        del fields["redacted"]
        self.frame_refused(verifier.check, fields)
        # Not redacted: an absent flag and false are the same statement.
        plain = envelope()
        fields = {**fields, "signature": signing.sign(KEY, plain)}
        verifier.check(fields, agent_id="gw-1", now=NOW)
        verifier.check({**fields, "redacted": False}, agent_id="gw-1", now=NOW)

    def test_version_1_for_protocol_1_agents(self):
        """Protocol 1 agents get the v1 envelope (no timeout, redacted); it never passes as v2."""
        self.assertEqual(signing.command_envelope_version(1), 1)
        self.assertEqual(signing.command_envelope_version(2), 2)
        old = envelope(version=1)
        text = signing.canonical(old)
        self.assertTrue(text.startswith(b"viworks-command-v1\n"))
        self.assertNotIn(b"timeout", text)
        self.assertNotIn(b"redacted", text)
        # What this agent verifies is v2: a v1 signature is refused.
        self.refused(signing.INVALID_SIGNATURE, envelope(), signing.sign(KEY, old))
        self.assertRaises(ValueError, signing.canonical, envelope(version=3))

    def test_cancel(self):
        """A cancel's signature covers its command id and addressee, and is no command's."""
        env = signing.cancel_envelope_for(command_id="c1", agent_id="gw-1", now=NOW)
        sig = signing.sign(KEY, env)
        self.assertTrue(signing.canonical(env).startswith(b"viworks-cancel-v2\n"))
        check(env, sig)
        fields = {"command_id": "c1", "agent_id": "gw-1", "signature": sig}
        verifier = signing.Verifier([KEY.public_key()], 60.0)
        self.assertEqual(verifier.check_cancel(fields, agent_id="gw-1", now=NOW), env)
        for change in ({"command_id": "c2"}, {"agent_id": "gw-2"}, {"signature": None}):
            self.frame_refused(verifier.check_cancel, {**fields, **change})
        self.refused(signing.INVALID_SIGNATURE, env, signing.sign(OTHER, env))
        self.refused(signing.EXPIRED, env, sig, now=NOW + 61)
        other = signing.cancel_envelope_for(command_id="c1", agent_id="gw-2", now=NOW)
        self.refused(signing.NOT_FOR_ME, other, signing.sign(KEY, other))
        # A command's signature never passes for a cancel, nor the other way round.
        command = envelope(command_id="c1", nonce=env.nonce, issued_at=NOW)
        self.refused(signing.INVALID_SIGNATURE, env, signing.sign(KEY, command))
        self.refused(signing.INVALID_SIGNATURE, command, sig)

    def test_not_for_me(self):
        """A genuine command addressed to another agent is NOT_FOR_ME."""
        env = envelope(agent_id="gw-2")
        self.refused(signing.NOT_FOR_ME, env, signing.sign(KEY, env))

    def test_clock_window_and_deadline(self):
        """issued_at outside now +/- window, or now past expires_at, is EXPIRED."""
        env = envelope()
        sig = signing.sign(KEY, env)
        check(env, sig, now=NOW + 60)
        check(env, sig, now=NOW - 60)
        self.refused(signing.EXPIRED, env, sig, now=NOW + 61)
        self.refused(signing.EXPIRED, env, sig, now=NOW - 61)
        check(env, sig, now=NOW + 100, window=120)
        late = envelope(expires_at=NOW - 1)
        self.refused(signing.EXPIRED, late, signing.sign(KEY, late))

    def test_rotation(self):
        """An agent listing [current, next] accepts both; the key id picks the right one."""
        keys = (KEY.public_key(), NEXT.public_key())
        env = envelope()
        check(env, signing.sign(KEY, env), keys=keys)
        check(env, signing.sign(NEXT, env), keys=keys)
        self.refused(signing.INVALID_SIGNATURE, env, signing.sign(NEXT, env))
        self.assertNotEqual(signing.key_id(KEY.public_key()), signing.key_id(NEXT.public_key()))
        self.assertEqual(len(signing.key_id(KEY.public_key())), 16)


class KeyFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())

    def test_pki_signing_key(self):
        """`viworks pki signing-key DIR` writes signing.key (0600) and signing.pub, once."""
        self.assertEqual(cli_main(["pki", "signing-key", self.dir]), 0)
        key_path = os.path.join(self.dir, "signing.key")
        pub_path = os.path.join(self.dir, "signing.pub")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(pub_path, "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN PUBLIC KEY-----"))
        key = signing.load_private_key(key_path)
        self.assertEqual(signing.load_public_key(pub_path), key.public_key())
        self.assertRaises(pki.PKIError, pki.make_signing_key, self.dir)
        self.assertEqual(cli_main(["pki", "signing-key", self.dir]), 2)
        self.assertEqual(signing.load_private_key(key_path).public_key(), key.public_key())

    def test_openssh_public_key(self):
        """A public key may also be given as an OpenSSH ssh-ed25519 line."""
        from cryptography.hazmat.primitives import serialization

        os.makedirs(self.dir)
        line = KEY.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        path = os.path.join(self.dir, "key.pub")
        with open(path, "wb") as f:
            f.write(line + b" backend\n")
        self.assertEqual(signing.load_public_key(path), KEY.public_key())

    def test_bad_key_files(self):
        """Missing, non-PEM or non-Ed25519 files are SigningKeyError naming the file."""
        pki.init_ca(self.dir)
        ca_key = os.path.join(self.dir, "ca.key")
        for loader, path in (
            (signing.load_private_key, os.path.join(self.dir, "missing")),
            (signing.load_private_key, os.path.join(self.dir, "ca.crt")),
            (signing.load_private_key, ca_key),
            (signing.load_public_key, ca_key),
            (signing.load_public_key, os.path.join(self.dir, "ca.crt")),
        ):
            err = self.assertRaises(signing.SigningKeyError, loader, path)
            self.assertIn(path, str(err))


# -- property-based fuzzing of the verifier ------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_times = st.floats(min_value=NOW - 120, max_value=NOW + 120)
_envelopes = st.builds(
    signing.Envelope,
    command_id=st.text(max_size=32),
    agent_id=st.sampled_from(["gw-1", "gw-2", ""]),
    verb=st.text(max_size=16),
    args=st.dictionaries(st.text(max_size=8), _json, max_size=5),
    issued_at=_times,
    expires_at=st.none() | _times,
    nonce=st.text(max_size=32),
    timeout=st.floats(min_value=0.001, max_value=86400) | st.integers(1, 86400),
    redacted=st.booleans(),
)
_any = st.none() | st.booleans() | st.integers() | st.text(max_size=40) | st.binary(max_size=80)
_signatures = st.fixed_dictionaries(
    {},
    optional={
        "key_id": st.sampled_from([signing.key_id(KEY.public_key())]) | st.text(max_size=16) | _any,
        "nonce": st.text(max_size=32) | _any,
        "issued_at": _times | _any,
        "sig": st.binary(min_size=64, max_size=64).map(lambda b: base64.b64encode(b).decode())
        | st.text(max_size=90)
        | _any,
    },
)
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_LISTED = [KEY.public_key(), NEXT.public_key()]


def _outcome(env, sig) -> str:
    try:
        signing.verify(_LISTED, env, sig, agent_id="gw-1", now=NOW, window=60.0)
    except signing.SignatureRefused as e:
        return e.code
    return "ok"


class VerifierPropertyTests(unittest.TestCase):
    @_FUZZ
    @given(_envelopes, _signatures | _any)
    def test_random_signatures_never_verify(self, env, sig):
        """Signatures not made by sign() are refused with INVALID_SIGNATURE, never crash."""
        self.assertEqual(_outcome(env, sig), signing.INVALID_SIGNATURE)

    @_FUZZ
    @given(_envelopes, st.sampled_from([KEY, NEXT, OTHER]))
    def test_only_listed_keys_verify(self, env, key):
        """sign() with a listed key passes the signature check (then addressee, time apply)."""
        sig = signing.sign(key, env)
        outcome = _outcome(env, sig)
        if key is OTHER:
            self.assertEqual(outcome, signing.INVALID_SIGNATURE)
        elif env.agent_id != "gw-1":
            self.assertEqual(outcome, signing.NOT_FOR_ME)
        elif abs(NOW - env.issued_at) > 60 or (env.expires_at is not None and NOW > env.expires_at):
            self.assertEqual(outcome, signing.EXPIRED)
        else:
            self.assertEqual(outcome, "ok")

    @_FUZZ
    @given(_envelopes, _envelopes)
    def test_a_signature_covers_only_its_envelope(self, env, other):
        """A genuine signature moved onto a different envelope never verifies."""
        sig = signing.sign(KEY, env)
        moved = dataclasses.replace(other, nonce=env.nonce, issued_at=env.issued_at)
        if signing.canonical(moved) == signing.canonical(env):
            return
        self.assertEqual(_outcome(moved, sig), signing.INVALID_SIGNATURE)

    @_FUZZ
    @given(_envelopes)
    def test_survives_the_wire(self, env):
        """Encoding the frame as JSON and decoding it keeps the signature valid."""
        fields = frame_fields(env, signing.sign(KEY, env))
        decoded = json.loads(json.dumps(fields, ensure_ascii=False))
        again = signing.envelope_of_frame(decoded, decoded["signature"])
        self.assertEqual(signing.canonical(again), signing.canonical(env))
