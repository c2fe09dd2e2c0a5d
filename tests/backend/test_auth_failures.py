"""Unauthenticated floods: failed authentications are rate-limited per source and audited
in aggregate (StubTreq, a deterministic clock, a real SQLite store)."""

from __future__ import annotations

import ipaddress
import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.backend.helpers import json_call, sqlite_store, wire
from viworks.backend import auditchain
from viworks.backend.api import BackendAPI
from viworks.backend.authfailures import OVERFLOW, source_key
from viworks.backend.tokens import hash_token

BURST = 5
RATE = 0.5  # one more failure every 2 s
INTERVAL = 60.0


class AuthFailureTests(unittest.TestCase):
    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        await self.store.create_token("ops", hash_token("vw_ops"), 1.0)
        await self.store.create_token("gone", hash_token("vw_gone"), 1.0)
        await self.store.revoke_token("gone", 2.0)
        self.clock = Clock()
        self.clock.advance(5000)
        self.api = self.make_api()

    def make_api(self, max_sources: int = 4096, trusted: tuple[str, ...] = ()) -> BackendAPI:
        api = wire(self, self.store, self.clock).api(
            trusted_proxies=tuple(ipaddress.ip_network(p) for p in trusted),
            auth_failure_rate=RATE,
            auth_failure_burst=BURST,
            auth_failure_sources=max_sources,
            auth_failure_audit_interval=INTERVAL,
        )
        self.http = StubTreq(api.resource())
        return api

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    async def post(self, token: str | None = None, forwarded: str | None = None):
        headers = {}
        if token is not None:
            headers[b"authorization"] = [f"Bearer {token}".encode()]
        if forwarded is not None:
            headers[b"x-forwarded-for"] = [forwarded.encode()]
        return await json_call(
            self.http, "POST", "/api/v1/agents/gw-1/commands", {"verb": "ping"}, headers
        )

    async def audit_rows(self) -> list[dict]:
        await self.api.audit.flush()
        return await self.store.audit_records(limit=100000)

    async def test_flood_writes_one_aggregate_record(self):
        """1,000 POSTs without a token: the first BURST get 401, the rest 429 with
        Retry-After, and the audit log gains nothing until the interval ends, then ONE
        api.refused record with the count; the chain verifies."""
        before = len(await self.audit_rows())
        codes = []
        for _ in range(1000):
            response, body = await self.post()
            codes.append(response.code)
        self.assertEqual(codes, [401] * BURST + [429] * (1000 - BURST))
        self.assertEqual(body["error"]["code"], "RATE_LIMITED")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"2"])
        self.assertEqual(len(await self.audit_rows()), before)
        self.clock.advance(INTERVAL)
        rows = await self.audit_rows()
        self.assertEqual(len(rows), before + 1)
        [record] = rows[before:]
        self.assertEqual(
            (record.actor, record.action, record.target, record.outcome),
            ("anonymous", "api.refused", "127.0.0.1", "refused"),
        )
        detail = json.loads(record.detail)
        self.assertEqual(
            {k: detail[k] for k in ("source", "count", "limited", "interval", "first_path")},
            {
                "source": "127.0.0.1",
                "count": 1000,
                "limited": 1000 - BURST,
                "interval": INTERVAL,
                "first_path": "/api/v1/agents/gw-1/commands",
            },
        )
        self.assertEqual(auditchain.verify_chain(rows), len(rows))

    async def test_valid_token_is_served_while_its_address_is_limited(self):
        """A source past its failure budget still gets a valid token served (several
        operators share one NAT or proxy address); after the wait it gets 401 again."""
        for _ in range(BURST):
            await self.post()
        self.assertEqual((await self.post())[0].code, 429)
        response, _ = await json_call(
            self.http, "GET", "/api/v1/agents", headers={b"authorization": [b"Bearer vw_ops"]}
        )
        self.assertEqual(response.code, 200)
        self.clock.advance(2 / RATE)
        self.assertEqual((await self.post())[0].code, 401)

    async def test_wrong_and_revoked_tokens_count_and_are_named(self):
        """Unknown and revoked tokens count as failed authentications too; the aggregate
        names the revoked token (never a secret) and the last path."""
        await self.post("vw_wrong")
        await self.post("vw_gone")
        await json_call(self.http, "GET", "/api/v1/commands")
        self.clock.advance(INTERVAL)
        [record] = [r for r in await self.audit_rows() if r.action == "api.refused"]
        detail = json.loads(record.detail)
        self.assertEqual((detail["count"], detail["actors"]), (3, ["gone"]))
        self.assertEqual(detail["last_path"], "/api/v1/commands")
        self.assertNotIn("vw_", record.detail)

    async def test_one_record_per_source_and_interval(self):
        """Refusals are aggregated per source and per interval: two sources (named by a
        trusted proxy's X-Forwarded-For) and two intervals give four records."""
        self.api = self.make_api(trusted=("127.0.0.1",))
        for _ in range(2):
            for _ in range(3):
                await self.post(forwarded="192.0.2.1")
                await self.post(forwarded="192.0.2.2")
            self.clock.advance(INTERVAL)
        refused = [r for r in await self.audit_rows() if r.action == "api.refused"]
        self.assertEqual(
            [(r.target, json.loads(r.detail)["count"]) for r in refused],
            [("192.0.2.1", 3), ("192.0.2.2", 3)] * 2,
        )

    async def test_forwarded_for_only_from_trusted_proxies(self):
        """X-Forwarded-For is ignored unless the TCP peer is a trusted proxy; from one, the
        rightmost address that is not a trusted proxy is the source (a client cannot
        choose its own by prepending addresses)."""
        for _ in range(BURST):
            await self.post(forwarded=f"198.51.100.{_}")
        self.assertEqual((await self.post(forwarded="198.51.100.99"))[0].code, 429)
        self.api = self.make_api(trusted=("127.0.0.1", "10.0.0.0/8"))
        for _ in range(BURST):
            await self.post(forwarded=f"198.51.100.{_}, 203.0.113.7, 10.1.1.1")
        response, _ = await self.post(forwarded="198.51.100.99, 203.0.113.7")
        self.assertEqual(response.code, 429)
        self.assertEqual((await self.post(forwarded="203.0.113.8"))[0].code, 401)
        self.clock.advance(INTERVAL)
        refused = [r for r in await self.audit_rows() if r.action == "api.refused"]
        self.assertEqual([r.target for r in refused], ["127.0.0.1", "203.0.113.7", "203.0.113.8"])

    async def test_sources_table_is_bounded(self):
        """Failures from 1,000 addresses keep at most max_sources + 1 entries: while every
        tracked source is active, newcomers share one overflow bucket (rate-limited as a
        whole) instead of evicting them; once idle, sources make room again."""
        self.api = self.make_api(max_sources=8, trusted=("127.0.0.1",))
        codes = []
        for i in range(1000):
            response, _ = await self.post(forwarded=f"10.{i // 250}.{i % 250}.1")
            codes.append(response.code)
        failures = self.api.auth_failures
        self.assertEqual(len(failures), 9)
        self.assertEqual(codes.count(401), 8 + BURST)
        self.clock.advance(INTERVAL)
        refused = [r for r in await self.audit_rows() if r.action == "api.refused"]
        self.assertEqual(len(refused), 9)
        self.assertEqual(refused[-1].target, OVERFLOW)
        self.assertEqual(json.loads(refused[-1].detail)["count"], 1000 - 8)
        # Once idle, a newcomer takes the place of the least recently seen source, and
        # the next interval's end forgets every idle source.
        self.clock.advance(INTERVAL)
        await self.post(forwarded="192.0.2.50")
        self.assertEqual(len(failures), 9)
        self.clock.advance(INTERVAL)
        refused = [r for r in await self.audit_rows() if r.action == "api.refused"]
        self.assertEqual(refused[-1].target, "192.0.2.50")
        self.assertEqual(len(failures), 1)

    def test_source_keys(self):
        """IPv4 addresses count alone, IPv4-mapped IPv6 as IPv4, other IPv6 per /64."""
        self.assertEqual(source_key("192.0.2.1"), "192.0.2.1")
        self.assertEqual(source_key("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(source_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(source_key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64")
