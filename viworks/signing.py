"""Command signatures: an agent runs only what the backend itself issued.

Pure (no I/O apart from the key-loading helpers). The backend signs, at every
delivery, an *envelope* over the command and its delivery::

    command_id, agent_id, verb, args, issued_at, expires_at, nonce

with its Ed25519 key; the ``command`` frame carries the signature as::

    "signature": {"key_id": "...", "nonce": "...", "issued_at": 1795736976.2, "sig": "<base64>"}

(``agent_id`` travels in the frame itself). The signed bytes are
:func:`canonical`: a fixed prefix and the envelope as ASCII JSON with sorted keys
and no spaces, so both ends compute them from the decoded values alone and any
JSON re-encoding on the way cannot matter.

An agent with public keys verifies with :func:`verify`, which raises
:class:`SignatureRefused` carrying one of the codes below. Replays (a nonce
already seen) are detected by the caller, which keeps the nonces
(``REPLAY_DETECTED``).

Key ids (the first 8 bytes of the SHA-256 of the raw public key, in hex) pick
the key among the agent's listed ones, so a rotation lists ``[current, next]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "EXPIRED",
    "INVALID_SIGNATURE",
    "NOT_FOR_ME",
    "REPLAY_DETECTED",
    "Envelope",
    "SignatureRefused",
    "Verifier",
    "SigningKeyError",
    "canonical",
    "envelope_for",
    "envelope_of_frame",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign",
    "verify",
]

# Error codes of the ``result`` an agent sends for a refused command.
INVALID_SIGNATURE = "INVALID_SIGNATURE"
EXPIRED = "EXPIRED"
REPLAY_DETECTED = "REPLAY_DETECTED"
NOT_FOR_ME = "NOT_FOR_ME"

DEFAULT_WINDOW = 60.0

# Domain separation: these bytes can never be mistaken for another signed message.
_PREFIX = b"viworks-command-v1\n"
_SIG_LENGTH = 64


class SignatureRefused(Exception):
    """A command the agent must not run; ``code`` goes into the result's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SigningKeyError(Exception):
    """A signing key file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Envelope:
    """What a signature covers."""

    command_id: str
    agent_id: str
    verb: str
    args: Mapping[str, Any]
    issued_at: float
    expires_at: float | None
    nonce: str


def canonical(envelope: Envelope) -> bytes:
    """The exact bytes signed for ``envelope``.

    :raises ValueError: the envelope holds something JSON cannot carry (NaN, ...).
    """
    body = asdict(envelope)
    body["args"] = dict(envelope.args)
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return _PREFIX + text.encode("ascii")


def new_nonce() -> str:
    """A fresh random nonce (128 bits, hex)."""
    return secrets.token_hex(16)


def envelope_for(
    *,
    command_id: str,
    agent_id: str,
    verb: str,
    args: Mapping[str, Any],
    expires_at: float | None,
    now: float,
    nonce: str | None = None,
) -> Envelope:
    """The envelope of one delivery: issued now, with a fresh nonce."""
    return Envelope(
        command_id=command_id,
        agent_id=agent_id,
        verb=verb,
        args=args,
        issued_at=now,
        expires_at=expires_at,
        nonce=nonce if nonce is not None else new_nonce(),
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 8 bytes of the SHA-256 of the raw public key, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8].hex()


def sign(private_key: Ed25519PrivateKey, envelope: Envelope) -> dict[str, Any]:
    """The ``signature`` object of a ``command`` frame for ``envelope``."""
    sig = private_key.sign(canonical(envelope))
    return {
        "key_id": key_id(private_key.public_key()),
        "nonce": envelope.nonce,
        "issued_at": envelope.issued_at,
        "sig": base64.b64encode(sig).decode("ascii"),
    }


def envelope_of_frame(fields: Mapping[str, Any], signature: Any) -> Envelope | None:
    """Rebuild the signed envelope from a received ``command`` frame's fields.

    ``None`` if the frame or its signature lacks what an envelope needs.
    """
    if not isinstance(signature, Mapping):
        return None
    nonce, issued_at = signature.get("nonce"), signature.get("issued_at")
    agent_id = fields.get("agent_id")
    if not isinstance(nonce, str) or not isinstance(agent_id, str) or not _number(issued_at):
        return None
    return Envelope(
        command_id=fields.get("command_id"),
        agent_id=agent_id,
        verb=fields.get("verb"),
        args=fields.get("args"),
        issued_at=issued_at,
        expires_at=fields.get("expires_at"),
        nonce=nonce,
    )


def verify(
    public_keys: Iterable[Ed25519PublicKey],
    envelope: Envelope | None,
    signature: Any,
    *,
    agent_id: str,
    now: float,
    window: float = DEFAULT_WINDOW,
) -> None:
    """Check that ``signature`` is a listed key's over ``envelope``, for us, and current.

    Checks, in order: the signature (unsigned, malformed, unknown key, wrong key,
    anything changed: ``INVALID_SIGNATURE``), the addressee (``NOT_FOR_ME``),
    then time (``issued_at`` outside ``now`` +/- ``window``, or ``now`` past
    ``expires_at``: ``EXPIRED``). Only an authentic envelope is judged on its
    addressee and time.

    :raises SignatureRefused: the command must not run.
    """
    if signature is None:
        raise SignatureRefused(INVALID_SIGNATURE, "the command is not signed")
    if not isinstance(signature, Mapping):
        raise SignatureRefused(INVALID_SIGNATURE, "the signature is not an object")
    kid, sig_text = signature.get("key_id"), signature.get("sig")
    if not isinstance(kid, str) or not isinstance(sig_text, str):
        raise SignatureRefused(INVALID_SIGNATURE, "the signature lacks key_id or sig")
    keys = {key_id(key): key for key in public_keys}
    key = keys.get(kid)
    if key is None:
        raise SignatureRefused(
            INVALID_SIGNATURE, f"signed by key {kid[:32]!r}, which is not among the trusted keys"
        )
    try:
        sig = base64.b64decode(sig_text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SignatureRefused(INVALID_SIGNATURE, "sig is not base64") from None
    if len(sig) != _SIG_LENGTH:
        raise SignatureRefused(INVALID_SIGNATURE, f"sig must be {_SIG_LENGTH} bytes")
    if (
        envelope is None
        or signature.get("nonce") != envelope.nonce
        or signature.get("issued_at") != envelope.issued_at
        or not _well_typed(envelope)
    ):
        raise SignatureRefused(INVALID_SIGNATURE, "the signed envelope is incomplete")
    try:
        key.verify(sig, canonical(envelope))
    except (InvalidSignature, ValueError, TypeError):
        raise SignatureRefused(
            INVALID_SIGNATURE, "the signature does not match the command"
        ) from None
    if envelope.agent_id != agent_id:
        raise SignatureRefused(
            NOT_FOR_ME, f"the command is addressed to {envelope.agent_id!r}, not {agent_id!r}"
        )
    if abs(now - envelope.issued_at) > window:
        raise SignatureRefused(
            EXPIRED,
            f"issued at {envelope.issued_at:.3f}, outside this agent's clock window"
            f" ({now:.3f} +/- {window:g} s)",
        )
    if envelope.expires_at is not None and now > envelope.expires_at:
        raise SignatureRefused(EXPIRED, "the command arrived after its deadline")


@dataclass
class Verifier:
    """An agent's trusted keys (``[current, next]``) and clock window."""

    public_keys: list[Ed25519PublicKey]
    window: float = DEFAULT_WINDOW

    def check(self, fields: Mapping[str, Any], *, agent_id: str, now: float) -> Envelope:
        """Verify a received ``command`` frame; return its envelope (for the nonce).

        :raises SignatureRefused: the command must not run.
        """
        signature = fields.get("signature")
        envelope = envelope_of_frame(fields, signature)
        verify(
            self.public_keys, envelope, signature, agent_id=agent_id, now=now, window=self.window
        )
        assert envelope is not None
        return envelope


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _well_typed(envelope: Envelope) -> bool:
    return (
        isinstance(envelope.command_id, str)
        and isinstance(envelope.agent_id, str)
        and isinstance(envelope.verb, str)
        and isinstance(envelope.args, Mapping)
        and isinstance(envelope.nonce, str)
        and _number(envelope.issued_at)
        and (envelope.expires_at is None or _number(envelope.expires_at))
    )


# -- keys --------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SigningKeyError(f"{path}: cannot read: {e.strerror or e}") from None


def load_private_key(path: str) -> Ed25519PrivateKey:
    """The backend's signing key: an unencrypted PEM (PKCS#8) Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key (make one: viworks pki signing-key)")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    """A verification key: PEM SubjectPublicKeyInfo (``signing.pub``) or an OpenSSH line."""
    data = _read(path)
    try:
        if data.lstrip().startswith(b"ssh-ed25519 "):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningKeyError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key")
    return key
