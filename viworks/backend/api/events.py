"""Route: the live events of the backend's hub as Server-Sent Events."""

from __future__ import annotations

from viworks.backend.api.parse import last_event_id, query
from viworks.backend.api.routing import ROUTES, Call
from viworks.backend.api.sse import SSE_KEEPALIVE, Streams, event_filter
from viworks.backend.authz import VIEWER
from viworks.backend.events import Event, EventHub, sse_frame


class EventRoutes:
    hub: EventHub
    streams: Streams

    @ROUTES.route("GET", "/api/v1/events", role=VIEWER)
    async def events(self, call: Call) -> bytes:
        """Hub events as Server-Sent Events until the client goes (or the backend stops).

        ``Last-Event-ID`` (or ``?after=``) replays what the bounded history still holds
        after that id; without it the stream starts now. ``?types=a,b`` keeps only those
        types (``command.*`` keeps every ``command.`` type). A resume point the history
        no longer covers (or from before a backend restart) gets an ``events.gap`` event
        first, so the client knows to re-read the state it cares about.
        """
        after = last_event_id(call.request)
        keep = event_filter(query(call.request, "types"))
        follower = self.streams.follow(call.request)
        self.streams.open.add(follower)
        hub = self.hub

        def listener(event: Event) -> None:
            if keep(event.type):
                follower.push(event)

        # Subscribe and read the history in one go: nothing can fall in between.
        unsubscribe = hub.subscribe(listener)
        try:
            follower.write(b"retry: 2000\n\n")
            last = after
            if after >= 0:
                backlog = hub.since(after)
                first = backlog[0].id if backlog else hub.last_id + 1
                if first > after + 1 or after > hub.last_id:
                    gap = {"after": after, "first": first, "last": hub.last_id}
                    follower.write(sse_frame("events.gap", gap))
                # At the pace the client reads: a long backlog must not count as stalling.
                for event in backlog:
                    await follower.writable()
                    if keep(event.type):
                        follower.write(event.sse)
                    last = event.id
            else:
                last = hub.last_id
            while not follower.gone and not follower.stopping:
                for event in await follower.next_events(SSE_KEEPALIVE):
                    if event.id > last:
                        last = event.id
                        follower.write(event.sse)
        finally:
            unsubscribe()
            self.streams.open.discard(follower)
            follower.release()
        return b""
