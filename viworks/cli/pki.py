"""``pki init|server|agent|signing-key|pin``: the PKI's files (``pki revoke`` works on the
backend's database: ``viworks.cli.admin``)."""

from __future__ import annotations

import argparse
import os

from viworks import pki, signing
from viworks.cli.errors import EXIT_OK


def cmd_pki(args: argparse.Namespace) -> int:
    if args.pki_command == "init":
        pki.init_ca(args.dir)
        print(f"CA written: {os.path.join(args.dir, 'ca.crt')} (key: ca.key, 0600)")
    elif args.pki_command == "server":
        cert, key = pki.issue_server(args.dir, args.name, args.ip or [])
        print(f"server certificate: {cert}\nserver key: {key}\npin: {pki.spki_pin(cert)}")
    elif args.pki_command == "agent":
        cert, key = pki.issue_agent(args.dir, args.agent_id)
        print(f"agent certificate: {cert}\nagent key: {key}")
    elif args.pki_command == "signing-key":
        key, pub = pki.make_signing_key(args.dir)
        key_id = signing.key_id(signing.load_public_key(pub))
        print(f"signing key: {key} (0600; backend.toml [signing] key)")
        print(f"public key: {pub} (agent.toml [signing] public_keys)\nkey id: {key_id}")
    else:
        print(pki.spki_pin(args.cert))
    return EXIT_OK
