"""Revoked agent certificates: which serials to refuse, and dropping live sessions.

``viworks pki revoke`` writes to the store's ``revoked_certificates`` every
certificate serial an agent id ever connected with (the sessions record each one
at the handshake: ``agent_certificates``), or one ``--serial``, possibly while the
backend runs, possibly from another host sharing the PostgreSQL database. The
``RevocationWatcher`` of each backend loads every revoked serial at start-up,
then polls the store every ``interval`` seconds for revocations newer than the
last it saw: their serials are refused at every later handshake
(``AgentSessionFactory.revoked_serials``) and a live session using one is closed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from viworks.backend import audit
from viworks.backend.model import AgentCertificate
from viworks.backend.store import Store
from viworks.logs import Logger
from viworks.tls import peer_certificate

POLL_INTERVAL = 2.0


def certificate_serial(cert: Any) -> str:
    """How serials are written everywhere: lower-case hex, no leading zeros."""
    return format(cert.serial_number, "x")


def parse_serial(text: str) -> str:
    """An operator's serial (``1A:2B``, ``0x1a2b``, ``serial=1A2B`` as ``openssl x509
    -serial`` prints it) written as everywhere else; ValueError if it is not hex."""
    digits = text.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
    if not digits or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{text!r} is not a hexadecimal certificate serial")
    return format(int(digits, 16), "x")


def _agent_certificate(transport: Any, request: Any) -> Any:
    """The agent's certificate: the TLS peer's, or the one a trusted nginx forwarded
    (only asked once the session's ``identify`` accepted it)."""
    cert = peer_certificate(transport)
    if cert is None and request is not None:
        from viworks.backend.identity import forwarded_certificate

        cert = forwarded_certificate(request)
    return cert


def peer_cert_serial(transport: Any, request: Any = None) -> str | None:
    """The serial of the agent's certificate (see ``_agent_certificate``)."""
    cert = _agent_certificate(transport, request)
    return None if cert is None else certificate_serial(cert)


def peer_cert_not_after(transport: Any, request: Any = None) -> float | None:
    """The end of the agent certificate's validity, in epoch seconds (the console
    lists certificates nearing it)."""
    cert = _agent_certificate(transport, request)
    return None if cert is None else cert.not_valid_after_utc.timestamp()


async def revoke_agent_certificates(
    store: Store, agent_id: str, actor: str, now: float, reason: str | None = None
) -> list[tuple[AgentCertificate, bool]]:
    """Revoke every certificate ``agent_id`` ever connected with (``agent_certificates``,
    and the one of its last HELLO); audited as one ``certificate.revoke`` by ``actor``.

    Returns ``(certificate, revoked)`` pairs, first seen first: each certificate (the
    one of its last HELLO without times if it was never recorded) and False when it was
    already revoked; empty when no certificate is known for the agent (nothing revoked).
    Running backends drop the sessions using them within ``POLL_INTERVAL``.
    """
    seen = {c.serial: c for c in await store.agent_certificates(agent_id=agent_id)}
    agent = await store.get_agent(agent_id)
    if agent is not None and agent.cert_serial and agent.cert_serial not in seen:
        seen[agent.cert_serial] = AgentCertificate(agent_id, agent.cert_serial, None, None)
    done = [
        (cert, await store.revoke_certificate(cert.serial, agent_id, now, reason))
        for cert in seen.values()
    ]
    new = [cert.serial for cert, revoked in done if revoked]
    await store.append_audit(
        now,
        actor,
        "certificate.revoke",
        f"agent:{agent_id}",
        audit.OK if new else audit.REFUSED,
        {
            "serials": new,
            "already": [cert.serial for cert, revoked in done if not revoked],
            "reason": reason if done else "no certificate serial known",
        },
    )
    return done


async def revoke_serial(
    store: Store, serial: str, actor: str, now: float, reason: str | None = None
) -> tuple[str, bool]:
    """Revoke one certificate by serial, audited as ``certificate.revoke`` by ``actor``.

    Returns ``(agent_id, revoked)``: the agent seen with it ("" when none was: a stolen
    certificate not used yet is revoked all the same), False when already revoked.
    """
    seen = await store.agent_certificates(serial=serial)
    agent_id = seen[0].agent_id if seen else ""
    done = await store.revoke_certificate(serial, agent_id, now, reason)
    await store.append_audit(
        now,
        actor,
        "certificate.revoke",
        f"certificate:{serial}",
        audit.OK if done else audit.REFUSED,
        {"serial": serial, "agent_id": agent_id or None, "reason": reason, "already": not done},
    )
    return agent_id, done


class RevocationWatcher:
    """Keeps the session factories' revoked serials current; closes revoked sessions."""

    log = Logger()

    def __init__(
        self,
        store: Store,
        factories: list[Any],
        clock: IReactorTime,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.factories = factories
        self.clock = clock
        self.interval = interval
        self.last_seq = 0
        self._loop: LoopingCall | None = None

    async def start(self) -> None:
        """Load every revocation (before the listeners start), then poll."""
        await self.check()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> Deferred:
        d = Deferred.fromCoroutine(self.check())
        # A failed poll (database away) is logged; the loop goes on.
        d.addErrback(lambda f: self.log.warn("revocation poll failed: {e}", e=f.getErrorMessage()))
        return d

    async def check(self) -> int:
        """Apply revocations newer than the last seen; return how many there were."""
        rows = await self.store.revocations_since(self.last_seq)
        if not rows:
            return 0
        self.last_seq = rows[-1].seq
        serials = {row.serial for row in rows}
        for factory in self.factories:
            factory.revoked_serials.update(serials)
            for session in list(factory.registry):
                if session.cert_serial in serials:
                    session.close_revoked()
        return len(rows)
