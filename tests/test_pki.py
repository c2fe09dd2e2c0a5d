"""Tests for viworks.pki: CA, server and agent certificate issuance."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial import unittest

from viworks import pki


def _load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class PKITests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        pki.init_ca(self.dir, common_name="Test CA")
        self.ca = _load(os.path.join(self.dir, "ca.crt"))

    def test_ca(self) -> None:
        """init_ca writes a self-signed CA certificate and a 0600 key."""
        self.assertEqual(_mode(os.path.join(self.dir, "ca.key")), 0o600)
        self.assertEqual(pki.agent_id_of(self.ca), "Test CA")
        constraints = self.ca.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.value.ca)
        self.ca.verify_directly_issued_by(self.ca)

    def test_ca_not_overwritten(self) -> None:
        """init_ca refuses to replace an existing CA key and leaves it intact."""
        key_path = os.path.join(self.dir, "ca.key")
        with open(key_path, "rb") as f:
            before = f.read()
        e = self.assertRaises(pki.PKIError, pki.init_ca, self.dir)
        self.assertIn(key_path, str(e))
        with open(key_path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_server(self) -> None:
        """issue_server sets CN, DNS and IP SANs and serverAuth, signed by the CA."""
        cert_path, key_path = pki.issue_server(
            self.dir, "backend.example", ips=["127.0.0.1", "::1"]
        )
        self.assertEqual(cert_path, os.path.join(self.dir, "server.crt"))
        self.assertEqual(_mode(key_path), 0o600)
        cert = _load(cert_path)
        cert.verify_directly_issued_by(self.ca)
        self.assertEqual(pki.agent_id_of(cert), "backend.example")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["backend.example"])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])

    def test_server_name_is_ip(self) -> None:
        """A server name that is an IP literal also becomes an IPAddress SAN."""
        cert_path, _ = pki.issue_server(self.dir, "10.0.0.1")
        san = _load(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("10.0.0.1")]
        )

    def test_server_bad_ip(self) -> None:
        """issue_server rejects a malformed IP address with PKIError."""
        self.assertRaises(pki.PKIError, pki.issue_server, self.dir, "x", ips=["nope"])

    def test_agent(self) -> None:
        """issue_agent writes agents/ID.crt (chained to the CA) and a 0600 key."""
        cert_path, key_path = pki.issue_agent(self.dir, "gw-01.site_a")
        agents = os.path.join(self.dir, "agents")
        self.assertEqual(cert_path, os.path.join(agents, "gw-01.site_a.crt"))
        self.assertEqual(key_path, os.path.join(agents, "gw-01.site_a.key"))
        self.assertEqual(_mode(agents), 0o700)
        self.assertEqual(_mode(key_path), 0o600)
        cert = _load(cert_path)
        cert.verify_directly_issued_by(self.ca)
        self.assertEqual(pki.agent_id_of(cert), "gw-01.site_a")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["gw-01.site_a"])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        self.assertEqual(key.public_key(), cert.public_key())

    def test_agent_serials_random(self) -> None:
        """Re-issuing an agent certificate yields a new key and serial number."""
        first = _load(pki.issue_agent(self.dir, "gw")[0])
        second = _load(pki.issue_agent(self.dir, "gw")[0])
        self.assertNotEqual(first.serial_number, second.serial_number)
        self.assertNotEqual(first.public_key(), second.public_key())

    def test_bad_agent_id(self) -> None:
        """Agent ids that are unsafe as file names or DNS labels are refused."""
        for bad in ["", "-x", ".hidden", "../etc", "a/b", "a b", "x" * 65, "ok\n"]:
            e = self.assertRaises(pki.PKIError, pki.issue_agent, self.dir, bad)
            self.assertIn("invalid agent id", str(e))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "etc.crt")))

    def test_issue_without_ca(self) -> None:
        """Issuing from a directory without a CA names the missing file."""
        empty = self.mktemp()
        os.mkdir(empty)
        e = self.assertRaises(pki.PKIError, pki.issue_agent, empty, "gw")
        self.assertIn(os.path.join(empty, "ca.crt"), str(e))

    def test_spki_pin(self) -> None:
        """spki_pin is sha256/base64 of the SPKI DER, from a path or PEM bytes."""
        cert_path, _ = pki.issue_agent(self.dir, "gw")
        cert = _load(cert_path)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        expected = "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
        self.assertEqual(pki.spki_pin(cert_path), expected)
        with open(cert_path, "rb") as f:
            pem = f.read()
        self.assertEqual(pki.spki_pin(pem), expected)
        self.assertEqual(pki.spki_pin(pem.decode()), expected)
        self.assertEqual(pki.spki_pin_of_certificate(cert), expected)
        self.assertEqual(len(base64.b64decode(expected[len("sha256/") :])), 32)

    def test_spki_pin_bad_file(self) -> None:
        """spki_pin of a missing or non-PEM file raises PKIError naming it."""
        missing = os.path.join(self.dir, "missing.crt")
        self.assertIn(missing, str(self.assertRaises(pki.PKIError, pki.spki_pin, missing)))
        key = os.path.join(self.dir, "ca.key")
        self.assertIn(key, str(self.assertRaises(pki.PKIError, pki.spki_pin, key)))

    def test_no_temporary_files_left(self) -> None:
        """Atomic writes leave no temporary files behind."""
        pki.issue_server(self.dir, "backend")
        pki.issue_agent(self.dir, "gw")
        leftovers = [
            name for _, _, names in os.walk(self.dir) for name in names if name.startswith(".tmp")
        ]
        self.assertEqual(leftovers, [])
