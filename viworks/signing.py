"""Signatures: an agent runs, or stops, only what the backend itself asked for.

Pure (no I/O apart from the key-loading helpers). The backend signs, at every
delivery, an *envelope* over the command and its delivery::

    command_id, agent_id, verb, args, timeout, redacted, issued_at, expires_at, nonce

and, for every ``cancel`` frame, a cancel envelope::

    command_id, agent_id, issued_at, nonce

with its Ed25519 key; the frame carries the signature as::

    "signature": {"key_id": "...", "nonce": "...", "issued_at": 1795736976.2, "sig": "<base64>"}

(``agent_id`` travels in the frame itself). The signed bytes are
:func:`canonical`: a prefix naming the kind and version of the envelope
(``viworks-command-v2``, ``viworks-cancel-v2``) and the envelope as ASCII JSON
with sorted keys and no spaces, so both ends compute them from the decoded
values alone and any JSON re-encoding on the way cannot matter. The prefix
keeps a signature of one kind from ever passing for another.

Version 1 command envelopes (``viworks-command-v1``: no ``timeout``, no
``redacted``, unsigned cancels) are what agents of protocol 1 verify; the
backend signs them only for such agents (:func:`command_envelope_version`).
This code verifies version 2 only.

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
from typing import Any, TypeGuard, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from viworks.files import read_bytes

__all__ = [
    "ENVELOPE_VERSION",
    "EXPIRED",
    "INVALID_SIGNATURE",
    "NOT_FOR_ME",
    "REPLAY_DETECTED",
    "CancelEnvelope",
    "Envelope",
    "SignatureRefused",
    "Verifier",
    "SigningKeyError",
    "cancel_envelope_for",
    "cancel_envelope_of_frame",
    "canonical",
    "command_envelope_version",
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

#: The command envelope this code signs for agents of protocol 2 and verifies.
ENVELOPE_VERSION = 2

# Domain separation: these bytes can never be mistaken for another signed message.
_COMMAND_PREFIXES = {1: b"viworks-command-v1\n", 2: b"viworks-command-v2\n"}
_CANCEL_PREFIX = b"viworks-cancel-v2\n"
# What a version 1 envelope does not cover.
_NOT_IN_V1 = ("timeout", "redacted")
_SIG_LENGTH = 64


_E = TypeVar("_E", "Envelope", "CancelEnvelope")


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
    """What a command's signature covers (``version`` picks the prefix and fields)."""

    command_id: str
    agent_id: str
    verb: str
    args: Mapping[str, Any]
    issued_at: float
    expires_at: float | None
    nonce: str
    #: Seconds the agent gives the verb (covered from version 2).
    timeout: float
    #: A redelivery whose secret args were replaced by "***" (covered from version 2).
    redacted: bool = False
    version: int = ENVELOPE_VERSION


@dataclass(frozen=True)
class CancelEnvelope:
    """What a ``cancel`` frame's signature covers."""

    command_id: str
    agent_id: str
    issued_at: float
    nonce: str


def canonical(envelope: Envelope | CancelEnvelope) -> bytes:
    """The exact bytes signed for ``envelope``.

    :raises ValueError: the envelope holds something JSON cannot carry (NaN, ...),
        or is of a version this code does not know.
    """
    body = asdict(envelope)
    if isinstance(envelope, CancelEnvelope):
        prefix = _CANCEL_PREFIX
    else:
        body["args"] = dict(envelope.args)
        version = body.pop("version")
        if version not in _COMMAND_PREFIXES:
            raise ValueError(f"no command envelope version {version!r}")
        prefix = _COMMAND_PREFIXES[version]
        if version == 1:
            for name in _NOT_IN_V1:
                del body[name]
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return prefix + text.encode("ascii")


def command_envelope_version(agent_protocol: Any) -> int:
    """The command envelope to sign for an agent that announced ``agent_protocol`` in HELLO.

    Protocol 1 agents verify version 1 only; every later one version 2.
    """
    return 1 if agent_protocol == 1 else ENVELOPE_VERSION


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
    timeout: float,
    now: float,
    redacted: bool = False,
    nonce: str | None = None,
    version: int = ENVELOPE_VERSION,
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
        timeout=timeout,
        redacted=redacted,
        version=version,
    )


def cancel_envelope_for(
    *, command_id: str, agent_id: str, now: float, nonce: str | None = None
) -> CancelEnvelope:
    """The envelope of one ``cancel`` frame: issued now, with a fresh nonce."""
    return CancelEnvelope(
        command_id=command_id,
        agent_id=agent_id,
        issued_at=now,
        nonce=nonce if nonce is not None else new_nonce(),
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 8 bytes of the SHA-256 of the raw public key, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8].hex()


def sign(private_key: Ed25519PrivateKey, envelope: Envelope | CancelEnvelope) -> dict[str, Any]:
    """The ``signature`` object of a ``command`` or ``cancel`` frame for ``envelope``."""
    sig = private_key.sign(canonical(envelope))
    return {
        "key_id": key_id(private_key.public_key()),
        "nonce": envelope.nonce,
        "issued_at": envelope.issued_at,
        "sig": base64.b64encode(sig).decode("ascii"),
    }


def _delivery(fields: Mapping[str, Any], signature: Any) -> tuple[str, str, float] | None:
    """``(agent_id, nonce, issued_at)`` of a received signed frame, if well formed."""
    if not isinstance(signature, Mapping):
        return None
    nonce, issued_at = signature.get("nonce"), signature.get("issued_at")
    agent_id = fields.get("agent_id")
    if not isinstance(nonce, str) or not isinstance(agent_id, str) or not _number(issued_at):
        return None
    return agent_id, nonce, issued_at


def _sent(fields: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A received frame's field as it was sent, of any type: the signature check refuses
    an envelope whose fields are not of the declared types (``_well_typed``)."""
    return fields.get(name, default)


def envelope_of_frame(fields: Mapping[str, Any], signature: Any) -> Envelope | None:
    """Rebuild the signed (version 2) envelope from a received ``command`` frame's fields.

    ``None`` if the frame or its signature lacks what an envelope needs. A
    missing ``redacted`` is ``false``, as the agent reads it.
    """
    delivery = _delivery(fields, signature)
    if delivery is None:
        return None
    agent_id, nonce, issued_at = delivery
    return Envelope(
        command_id=_sent(fields, "command_id"),
        agent_id=agent_id,
        verb=_sent(fields, "verb"),
        args=_sent(fields, "args"),
        issued_at=issued_at,
        expires_at=_sent(fields, "expires_at"),
        nonce=nonce,
        timeout=_sent(fields, "timeout"),
        redacted=_sent(fields, "redacted", False),
    )


def cancel_envelope_of_frame(fields: Mapping[str, Any], signature: Any) -> CancelEnvelope | None:
    """Rebuild the signed envelope from a received ``cancel`` frame's fields (or ``None``)."""
    delivery = _delivery(fields, signature)
    if delivery is None:
        return None
    agent_id, nonce, issued_at = delivery
    return CancelEnvelope(
        command_id=_sent(fields, "command_id"), agent_id=agent_id, issued_at=issued_at, nonce=nonce
    )


def verify(
    public_keys: Iterable[Ed25519PublicKey],
    envelope: Envelope | CancelEnvelope | None,
    signature: Any,
    *,
    agent_id: str,
    now: float,
    window: float = DEFAULT_WINDOW,
) -> None:
    """Check that ``signature`` is a listed key's over ``envelope``, for us, and current.

    Checks, in order: the signature (unsigned, malformed, unknown key, wrong key,
    anything changed: ``INVALID_SIGNATURE``), the addressee (``NOT_FOR_ME``),
    then time (``issued_at`` outside ``now`` +/- ``window``, or ``now`` past a
    command's ``expires_at``: ``EXPIRED``). Only an authentic envelope is judged
    on its addressee and time.

    :raises SignatureRefused: the command must not run.
    """
    if signature is None:
        raise SignatureRefused(INVALID_SIGNATURE, "the frame is not signed")
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
            INVALID_SIGNATURE, "the signature does not match the frame"
        ) from None
    if envelope.agent_id != agent_id:
        raise SignatureRefused(
            NOT_FOR_ME, f"the frame is addressed to {envelope.agent_id!r}, not {agent_id!r}"
        )
    if abs(now - envelope.issued_at) > window:
        raise SignatureRefused(
            EXPIRED,
            f"issued at {envelope.issued_at:.3f}, outside this agent's clock window"
            f" ({now:.3f} +/- {window:g} s)",
        )
    deadline = envelope.expires_at if isinstance(envelope, Envelope) else None
    if deadline is not None and now > deadline:
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
        return self._verified(envelope_of_frame(fields, signature), signature, agent_id, now)

    def check_cancel(
        self, fields: Mapping[str, Any], *, agent_id: str, now: float
    ) -> CancelEnvelope:
        """Verify a received ``cancel`` frame; return its envelope (for the nonce).

        :raises SignatureRefused: the cancel must be ignored.
        """
        signature = fields.get("signature")
        envelope = cancel_envelope_of_frame(fields, signature)
        return self._verified(envelope, signature, agent_id, now)

    def _verified(self, envelope: _E | None, signature: Any, agent_id: str, now: float) -> _E:
        verify(
            self.public_keys, envelope, signature, agent_id=agent_id, now=now, window=self.window
        )
        assert envelope is not None
        return envelope


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _well_typed(envelope: Envelope | CancelEnvelope) -> bool:
    delivery = (
        isinstance(envelope.command_id, str)
        and isinstance(envelope.agent_id, str)
        and isinstance(envelope.nonce, str)
        and _number(envelope.issued_at)
    )
    if isinstance(envelope, CancelEnvelope):
        return delivery
    return (
        delivery
        and isinstance(envelope.verb, str)
        and isinstance(envelope.args, Mapping)
        and (envelope.expires_at is None or _number(envelope.expires_at))
        and _number(envelope.timeout)
        and isinstance(envelope.redacted, bool)
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
    return read_bytes(path, lambda reason: SigningKeyError(f"{path}: {reason}"))


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
    key: PublicKeyTypes
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
