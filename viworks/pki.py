"""A tiny private PKI: one CA that issues the backend's server certificate and
one client certificate per gateway agent.

Layout of a PKI directory::

    DIR/ca.crt  DIR/ca.key                      the CA
    DIR/server.crt  DIR/server.key              the backend's TLS identity
    DIR/agents/AGENT_ID.crt  AGENT_ID.key       one per gateway agent
    DIR/signing.key  DIR/signing.pub            the backend's command-signing key (Ed25519)

Keys are EC P-256 (fast to generate, supported by every TLS stack we use),
written mode 0600; every file is written atomically.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from viworks.files import read_bytes

__all__ = [
    "PKIError",
    "agent_id_of",
    "init_ca",
    "issue_agent",
    "issue_server",
    "make_signing_key",
    "spki_pin",
    "spki_pin_of_certificate",
]

AGENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Tolerate small clock differences between the issuing host and its peers.
_BACKDATE = datetime.timedelta(minutes=5)


class PKIError(Exception):
    """A PKI operation failed; the message names the file or value at fault."""


def init_ca(directory: str, common_name: str = "ViWorkS CA", days: int = 3650) -> None:
    """Create a self-signed CA as DIR/ca.crt and DIR/ca.key.

    Creates DIR (mode 0700) if needed. Raises L{PKIError} if DIR/ca.key already
    exists: replacing a CA silently would orphan every certificate it issued.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path = os.path.join(directory, "ca.key")
    if os.path.lexists(key_path):
        raise PKIError(f"{key_path}: a CA key already exists; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = _sign(
        subject=name,
        public_key=key.public_key(),
        issuer=name,
        issuer_key=key,
        days=days,
        is_ca=True,
    )
    # The key goes first and never replaces an existing file, so two racing
    # init_ca calls cannot leave a certificate paired with the wrong key.
    _write_key(key_path, key, replace=False)
    _write_file(os.path.join(directory, "ca.crt"), _cert_pem(cert), 0o644)


def issue_server(
    directory: str, name: str, ips: Sequence[str] = (), days: int = 825
) -> tuple[str, str]:
    """Issue the backend's server certificate, signed by the CA in DIR.

    Subject CN=name; SANs are DNSName(name) plus an IPAddress for each of
    C{ips} (and for C{name} itself when it is an IP literal); EKU serverAuth.
    Writes DIR/server.crt and DIR/server.key, replacing any previous pair, and
    returns their paths.
    """
    if not name:
        raise PKIError("server name must not be empty")
    addresses = []
    for text in ([name] if _is_ip(name) else []) + list(ips):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise PKIError(f"invalid IP address for server certificate: {text!r}") from None
        if address not in addresses:
            addresses.append(address)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    sans += [x509.IPAddress(a) for a in addresses]
    return _issue_leaf(
        directory,
        os.path.join(directory, "server"),
        name,
        sans,
        ExtendedKeyUsageOID.SERVER_AUTH,
        days,
    )


def issue_agent(directory: str, agent_id: str, days: int = 825) -> tuple[str, str]:
    """Issue a client certificate for gateway agent C{agent_id}.

    Subject CN=agent_id, SAN DNSName(agent_id), EKU clientAuth. Writes
    DIR/agents/AGENT_ID.crt and .key (DIR/agents is created mode 0700) and
    returns their paths. Raises L{PKIError} for an agent id that does not match
    C{AGENT_ID_PATTERN} (it is used as a file name and a DNS label).
    """
    if not isinstance(agent_id, str) or not AGENT_ID_PATTERN.fullmatch(agent_id):
        raise PKIError(
            f"invalid agent id {agent_id!r}: use 1-64 characters from "
            "A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    agents = os.path.join(directory, "agents")
    os.makedirs(agents, mode=0o700, exist_ok=True)
    return _issue_leaf(
        directory,
        os.path.join(agents, agent_id),
        agent_id,
        [x509.DNSName(agent_id)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        days,
    )


def make_signing_key(directory: str) -> tuple[str, str]:
    """Create the backend's Ed25519 command-signing key pair in DIR.

    Writes DIR/signing.key (PKCS#8 PEM, 0600) and DIR/signing.pub (PEM
    SubjectPublicKeyInfo, 0644, for the agents' ``[signing] public_keys``) and
    returns their paths. Creates DIR (0700) if needed. Raises L{PKIError} if
    DIR/signing.key exists: agents trust the key it replaces, so a rotation
    makes the next key in another directory (see docs/security.md).
    """
    from viworks import signing

    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path = os.path.join(directory, "signing.key")
    pub_path = os.path.join(directory, "signing.pub")
    key = signing.generate_private_key()
    # The private key first, never clobbering, so the pair always matches.
    _write_file(key_path, signing.private_key_pem(key), 0o600, replace=False)
    _write_file(pub_path, signing.public_key_pem(key.public_key()), 0o644)
    return key_path, pub_path


def spki_pin(cert_path_or_pem: str | bytes | os.PathLike[str]) -> str:
    """Return the SPKI pin (C{"sha256/<base64>"}) of a PEM certificate.

    Accepts PEM bytes or text, or the path of a PEM file.
    """
    if isinstance(cert_path_or_pem, bytes):
        pem, source = cert_path_or_pem, "<PEM data>"
    elif isinstance(cert_path_or_pem, str) and cert_path_or_pem.lstrip().startswith("-----BEGIN"):
        pem, source = cert_path_or_pem.encode("ascii"), "<PEM data>"
    else:
        source = os.fspath(cert_path_or_pem)
        pem = _read(source)
    return spki_pin_of_certificate(_parse_cert(pem, source))


def spki_pin_of_certificate(cert: x509.Certificate) -> str:
    """Return C{"sha256/" + base64(sha256(SubjectPublicKeyInfo DER))} for C{cert}."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def agent_id_of(cert: x509.Certificate) -> str | None:
    """Return the first CommonName of C{cert}'s subject, or None if it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not isinstance(names[0].value, str):
        return None
    return names[0].value


# -- private helpers --------------------------------------------------------


def _issue_leaf(
    directory: str,
    base_path: str,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[str, str]:
    """Create a key and a CA-signed leaf certificate at BASE_PATH.{crt,key}."""
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(
        subject=_name(common_name),
        public_key=key.public_key(),
        issuer=ca_cert.subject,
        issuer_key=ca_key,
        days=days,
        is_ca=False,
        sans=sans,
        usages=[usage],
        issuer_cert=ca_cert,
    )
    cert_path, key_path = base_path + ".crt", base_path + ".key"
    _write_key(key_path, key, replace=True)
    _write_file(cert_path, _cert_pem(cert), 0o644)
    return cert_path, key_path


def _sign(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    is_ca: bool,
    sans: Iterable[x509.GeneralName] = (),
    usages: Iterable[x509.ObjectIdentifier] = (),
    issuer_cert: x509.Certificate | None = None,
) -> x509.Certificate:
    """The one place certificates are built and signed (CA and leaves)."""
    if days <= 0:
        raise PKIError(f"certificate lifetime must be positive, got {days} days")
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None),
            critical=True,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    # Strict verifiers (e.g. cryptography's own) want AKI on issued certificates.
    if issuer_cert is not None:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
            critical=False,
        )
    sans = list(sans)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    usages = list(usages)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _load_ca(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path = os.path.join(directory, "ca.crt")
    key_path = os.path.join(directory, "ca.key")
    cert = _parse_cert(_read(cert_path), cert_path)
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except (ValueError, TypeError) as e:
        raise PKIError(f"{key_path}: not a usable unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: expected an EC private key")
    if key.public_key() != cert.public_key():
        raise PKIError(f"{key_path}: does not match the CA certificate {cert_path}")
    return cert, key


def _parse_cert(pem: bytes, source: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise PKIError(f"{source}: not a PEM certificate ({e})") from None


def _read(path: str) -> bytes:
    return read_bytes(path, lambda reason: PKIError(f"{path}: {reason}"))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: str, key: ec.EllipticCurvePrivateKey, *, replace: bool) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(path, pem, 0o600, replace=replace)


def _write_file(path: str, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write DATA to PATH atomically: readers see the old file or the new one.

    The temporary file is created 0600 by mkstemp, so a key is never readable
    by others, even briefly. With replace=False an existing PATH is an error.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            # link() fails if PATH exists: an atomic "create, never clobber".
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PKIError(f"{path}: already exists; refusing to overwrite it") from None
    except OSError as e:
        raise PKIError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
