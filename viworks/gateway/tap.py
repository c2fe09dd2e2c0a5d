"""``twistd viworks-gateway``: options and the service tree.

MultiService
 |- BackendLink (ClientService: the outbound mutual-TLS WebSocket)
 `- the local HTTP API listener (bind_address)
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage
from twisted.web.server import Site

from viworks import signing
from viworks.config import AgentConfig, ConfigError, load_agent_config
from viworks.files import ensure_private_dir
from viworks.gateway.catalog import catalog_from_config
from viworks.gateway.journal import Journal
from viworks.gateway.link import BackendLink
from viworks.gateway.localapi import GatewayAPI
from viworks.gateway.procgroups import ProcessGroups
from viworks.gateway.runner import ProcessRunner
from viworks.logs import Logger, set_log_level
from viworks.net import ConnectionLimit, listen_service
from viworks.netaddr import parse_bind
from viworks.pki import agent_id_of
from viworks.reload import Reloader, install_sighup
from viworks.runtime import tune_gc
from viworks.service import build_or_exit
from viworks.tls import ReloadableTLS, client_tls_options, load_pem_certificate

log = Logger()


class Options(usage.Options):
    optParameters = [
        ["config", "c", "/etc/viworks/agent.toml", "The gateway agent's configuration file (TOML)."]
    ]


class GatewayService(MultiService):
    """The whole gateway agent: its link to the backend, and what SIGHUP reloads."""

    def __init__(self, link: BackendLink, reloader: Reloader) -> None:
        super().__init__()
        self.link = link
        self.reloader = reloader
        link.setServiceParent(self)


def build_gateway(config: AgentConfig, reactor: Any) -> GatewayService:
    """The whole gateway agent for ``config``; used by twistd, the .tac and ``viworks dev``."""
    set_log_level(config.agent.log_level)
    ensure_private_dir(config.agent.state_dir)
    journal = Journal(os.path.join(config.agent.state_dir, "journal.db"), clock=reactor)
    # The verbs' process groups, recorded in the journal (ended at start-up after a crash).
    groups = ProcessGroups(journal, reactor)
    runner = ProcessRunner(reactor, run_as=config.agent.run_as_user or None, groups=groups)
    catalog = catalog_from_config(runner, config, clock=reactor)
    for tool, verbs in catalog.missing_tools().items():
        log.warn(
            "{tool} is not installed (or not executable): {verbs} cannot run on this host",
            tool=tool,
            verbs=", ".join(verbs),
        )
    outbound = config.outbound
    host = outbound.backend_host
    link = BackendLink(
        reactor=reactor,
        backend_url=outbound.backend_url,
        agent_id=outbound.agent_id,
        site=config.agent.site,
        hostname=socket.gethostname(),
        labels=dict(config.agent.labels),
        catalog=catalog,
        journal=journal,
        groups=groups,
        # Swapped on SIGHUP: the next reconnect uses the new certificate, key and CA.
        tls_options=ReloadableTLS(lambda: _client_tls(config, host)),
        pins=list(config.tls.backend_spki_pins),
        heartbeat_interval=outbound.heartbeat_interval,
        reconnect_initial=outbound.reconnect_initial,
        reconnect_max=outbound.reconnect_max,
        telemetry_interval=config.agent.telemetry_interval,
        verifier=signing_verifier(config),
    )
    top = GatewayService(link, _gateway_reloader(config, link))
    top.reloader.add("command signing keys", lambda new: link.set_verifier(signing_verifier(new)))
    api_host, api_port = parse_bind(config.agent.bind_address)
    # request_timeout closes idle local-API connections; max_connections caps them.
    site = Site(GatewayAPI(link, reactor).resource(), timeout=config.agent.request_timeout)
    limited = ConnectionLimit(site, config.agent.max_connections)
    listen_service(
        reactor, api_host, api_port, limited, key="[agent] bind_address"
    ).setServiceParent(top)
    return top


def signing_verifier(config: AgentConfig) -> signing.Verifier | None:
    """The trusted keys of ``[signing]``, or None when the section is left out."""
    if config.signing is None:
        return None
    keys = [signing.load_public_key(path) for path in config.signing.public_keys]
    return signing.Verifier(keys, config.signing.clock_window)


def _client_tls(config: AgentConfig, host: str) -> Any:
    check_identity(config)
    return client_tls_options(host, config.tls.cert, config.tls.key, config.tls.ca)


def check_identity(config: AgentConfig) -> None:
    """Refuse an ``agent_id`` that is not the identity (CommonName) of ``[tls] cert``.

    The backend takes the identity from the certificate and refuses a HELLO naming
    another (IDENTITY_MISMATCH): such an agent could only loop on reconnects.
    """
    cert_path = config.tls.cert
    identity = agent_id_of(load_pem_certificate(cert_path))
    agent_id = config.outbound.agent_id
    if identity == agent_id:
        return
    named = "has no CommonName" if identity is None else f"names {identity!r}"
    raise ConfigError(
        config.path,
        f"{agent_id!r} is not the identity of [tls] cert {cert_path} (it {named}); the"
        " backend would refuse every connection (IDENTITY_MISMATCH)",
        section="outbound",
        key="agent_id",
    )


def _gateway_reloader(config: AgentConfig, link: BackendLink) -> Reloader:
    """What SIGHUP reloads: log level, TLS material and the backend's pins (next connect).

    The open link stays up. backend_url (the host checked against the backend's
    certificate) keeps its start-up value: changing it needs a restart. More
    material (signing public keys) registers with ``top.reloader.add``.
    """
    reloader = Reloader(lambda: load_agent_config(config.path))
    reloader.add("log level", lambda new: set_log_level(new.agent.log_level))

    # The start-up URL's host: the endpoint cannot change without a restart.
    host = config.outbound.backend_host
    reloader.add(
        "TLS certificate, key and CA",
        lambda new: link.tls_options.reload(lambda: _client_tls(new, host)),
    )
    reloader.add("backend SPKI pins", lambda new: link.set_pins(new.tls.backend_spki_pins))
    return reloader


def makeService(options: Any, reactor: Any = None) -> GatewayService:
    if reactor is None:
        from twisted.internet import reactor
    service = build_or_exit(load_agent_config, build_gateway, options, reactor)
    install_sighup(reactor, service.reloader)
    tune_gc()
    return service
