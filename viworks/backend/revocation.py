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


def peer_cert_serial(transport: Any, request: Any = None) -> str | None:
    """The serial of the agent's certificate: the TLS peer's, or the one a trusted
    nginx forwarded (only called once the session's ``identify`` accepted it)."""
    cert = peer_certificate(transport)
    if cert is None and request is not None:
        from viworks.backend.identity import forwarded_certificate

        cert = forwarded_certificate(request)
    return None if cert is None else certificate_serial(cert)


class RevocationWatcher:
    """Keeps the session factories' revoked serials current; closes revoked sessions."""

    log = Logger()

    def __init__(
        self,
        store: Any,
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
        self.last_seq = rows[-1]["seq"]
        serials = {row["serial"] for row in rows}
        for factory in self.factories:
            factory.revoked_serials.update(serials)
            for session in list(factory.registry):
                if getattr(session, "cert_serial", None) in serials:
                    session.close_revoked()
        return len(rows)
