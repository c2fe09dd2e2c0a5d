"""Requests waiting for a command to finish (``POST ...commands?wait=N``).

A waiter is woken by the command's final ``command.status`` event on the hub (with the
command as stored, from the event's ``CommandChanged``, or read from the store when
the event carries only its wire form), after every other subscriber has had the
event, or answered None when its time is up or the backend stops.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from viworks import lifecycle
from viworks.backend.commandevents import COMMAND_STATUS, command_changed
from viworks.backend.events import Event, EventHub
from viworks.backend.model import Command
from viworks.backend.store import Store
from viworks.logs import Logger


class CommandWaiters:
    """Deferreds waiting for commands to be final, by command id."""

    log = Logger()

    def __init__(self, hub: EventHub, store: Store, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self._waiters: dict[str, list[Deferred[Command | None]]] = {}
        # Last: whoever a waiter's answer resumes finds every other subscriber up to date.
        hub.subscribe(self._on_event, details=True, last=True)

    def wait(self, command_id: str, seconds: float) -> Deferred[Command | None]:
        """A Deferred firing with the command once final, or None after ``seconds``."""
        d: Deferred[Command | None] = Deferred()
        self._waiters.setdefault(command_id, []).append(d)
        timer = self.clock.callLater(seconds, self._release, command_id, d, None)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        return d

    async def wait_final(
        self, command_id: str, seconds: float, *, unfinished: bool = False
    ) -> Command | None:
        """The command once final, or None after ``seconds``.

        Unlike ``wait`` this also covers a command that finished just before the call
        (a fast agent can answer before the API starts waiting): the store is read,
        unless ``unfinished`` says the caller saw the command unfinished after any
        event this process could have published for it (it has just created it).
        """
        d = self.wait(command_id, seconds)
        if not unfinished:
            command = await self.store.get_command(command_id)
            if command is not None and command.status in lifecycle.FINAL:
                self._release(command_id, d, command)
        return await d

    def stop(self) -> None:
        """Answer every waiter now (with None): the backend is stopping."""
        waiters, self._waiters = self._waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                waiter.callback(None)

    def _on_event(self, event: Event) -> None:
        if event.type != COMMAND_STATUS or event.data["status"] not in lifecycle.FINAL:
            return
        command_id = event.data["command_id"]
        if command_id not in self._waiters:
            return
        change = command_changed(event)
        if change is not None:
            self._wake(command_id, change.command)
            return
        d = Deferred.fromCoroutine(self._wake_from_store(command_id))
        d.addErrback(self._store_failed, command_id)

    async def _wake_from_store(self, command_id: str) -> None:
        command = await self.store.get_command(command_id)
        if command is not None:
            self._wake(command_id, command)

    def _store_failed(self, failure: Failure, command_id: str) -> None:
        # The waiters time out as usual.
        self.log.failure("waiters of command {command_id}", failure, command_id=command_id)

    def _wake(self, command_id: str, command: Command) -> None:
        for waiter in self._waiters.pop(command_id, []):
            waiter.callback(command)

    def _release(self, command_id: str, d: Deferred[Command | None], value: Command | None) -> None:
        waiters = self._waiters.get(command_id, [])
        if d in waiters:
            waiters.remove(d)
            if not waiters:
                self._waiters.pop(command_id, None)
            d.callback(value)
