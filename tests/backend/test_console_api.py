"""The web console's backend: its files at /ui/, login sessions (cookie + CSRF), and the
routes its pages need (audit, tokens, fleet, paged agents, certificate revocation).

StubTreq over a real SQLite store, with a fake clock.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import re
import tomllib
from html.parser import HTMLParser

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from tests.backend.helpers import FakeSession, add_agent, json_call, settled, sqlite_store, wire
from viworks.backend.api import BackendAPI
from viworks.backend.registry import SessionRegistry
from viworks.backend.tokens import hash_token
from viworks.console.files import ConsoleFiles, load

TOKENS = {"viewer": "vw_viewer", "operator": "vw_operator", "admin": "vw_admin"}


class ConsoleAPITestCase(unittest.TestCase):
    """A backend API with a viewer, an operator and an admin token and agent gw-1."""

    session_ttl = 3600.0

    async def _setUp(self) -> None:
        self.store = await sqlite_store(self)
        for role, token in TOKENS.items():
            await self.store.create_token(role, hash_token(token), 1.0, role=role)
        await add_agent(self.store)
        self.clock = Clock()
        self.clock.advance(2000)
        self.registry = SessionRegistry()
        self.backend = wire(self, self.store, self.clock, registry=self.registry)
        self.ledger = self.backend.ledger
        self.api = self.make_api()
        self.resource = self.api.resource()

    def setUp(self) -> Deferred:
        return Deferred.fromCoroutine(self._setUp())

    def make_api(self, **api_keys) -> BackendAPI:
        """An API over the test's backend (``api_keys``: more ``[api]`` keys)."""
        return self.backend.api(
            session_ttl=self.session_ttl,
            rate_limit_per_token=1000.0,
            rate_limit_burst=1000,
            **api_keys,
        )

    async def call(self, method, path, body=None, token="admin", cookie=None, headers=None):
        headers = dict(headers or {})
        if token is not None:
            headers[b"authorization"] = [f"Bearer {TOKENS[token]}".encode()]
        if cookie is not None:
            headers[b"cookie"] = [b"viworks_session=" + cookie.encode()]
        if body is not None:
            headers.setdefault(b"content-type", [b"application/json"])
        # A fresh client per request: treq's cookie jar would add cookies of its own.
        response, body = await json_call(StubTreq(self.resource), method, path, body, headers)
        return response, body

    async def raw(self, path, headers=None, resource=None):
        http = StubTreq(resource or self.resource)
        d = http.request("GET", "http://api" + path, headers=headers or {}, allow_redirects=False)
        d.addCallback(lambda r: r.content().addCallback(lambda c: (r, c)))
        return await settled(http, d)

    async def login(self, role="operator"):
        """Log in as ``role``: the session id (from the cookie) and the login answer."""
        response, body = await self.call(
            "POST", "/api/v1/session", {"token": TOKENS[role]}, token=None
        )
        self.assertEqual(response.code, 201, body)
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        match = re.match(rb"viworks_session=([^;]+);", cookie)
        return match.group(1).decode(), body, cookie


class ConsoleFilesTests(ConsoleAPITestCase):
    async def test_index_has_strict_csp(self):
        """GET /ui/ answers 200 HTML with a CSP of default-src 'self' and nothing inline."""
        response, body = await self.raw("/ui/")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )
        [csp] = response.headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"default-src 'self'", csp)
        self.assertNotIn(b"unsafe", csp)
        self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertIn(b'<script type="module" src=', body)

    def test_gzip_and_etag(self):
        """Files are gzipped when the client accepts it, and revalidated by ETag (304)."""
        files = ConsoleFiles()
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip, deflate"])
        body = files.render(request, "js/main.js")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(body), files.files["js/main.js"].body)
        [etag] = request.responseHeaders.getRawHeaders(b"etag")
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"if-none-match", [etag])
        self.assertEqual(files.render(request, "js/main.js"), b"")
        self.assertEqual(request.responseCode, 304)
        request = DummyRequest([b""])
        self.assertIn(b"<!doctype html>", files.render(request, ""))
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"content-encoding"))

    async def test_missing_files_and_redirect(self):
        """Unknown files and paths out of static/ are 404s; /ui redirects to /ui/."""
        for path in ("/ui/nope.js", "/ui/../setup.py", "/ui/vendor/../../files.py"):
            response, _ = await self.raw(path)
            self.assertEqual(response.code, 404, path)
        response, _ = await self.raw("/ui")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui/"])

    async def test_console_off(self):
        """[api] console = false: /ui/ is a JSON 404; the API still answers."""
        response, body = await self.raw("/ui/", resource=self.make_api(console=False).resource())
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "NOT_FOUND")

    def test_no_inline_script_or_style(self):
        """No shipped HTML has an inline script, a style element or a style attribute
        (the CSP would block them), and every module is imported by relative path."""
        files = load()
        self.assertIn("index.html", files)
        self.assertIn("vendor/licenses/preact.LICENSE", files)
        for name, found in files.items():
            if name.endswith(".html"):
                checker = _InlineChecker()
                checker.feed(found.body.decode())
                self.assertEqual(checker.inline, [], name)
            if name.endswith((".js", ".mjs")):
                for specifier in re.findall(rb"""\bfrom\s*["']([^"']+)["']""", found.body):
                    self.assertTrue(specifier.startswith((b"./", b"../")), (name, specifier))

    def test_every_file_is_packaged(self):
        """pyproject.toml's package data ships every file of the console (pip install .
        works without the source tree)."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["viworks.console"]
        static = os.path.join(root, "viworks", "console")
        for name in load():
            self.assertTrue(any(fnmatch.fnmatch("static/" + name, p) for p in patterns), name)
        self.assertTrue(os.path.isdir(os.path.join(static, "static", "vendor")))


class _InlineChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if "style" in names or tag == "style" or any(a.startswith("on") for a in names):
            self.inline.append(tag)
        self._in_script = tag == "script" and "src" not in names

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append("script")

    def handle_endtag(self, tag):
        self._in_script = False


class SessionTests(ConsoleAPITestCase):
    async def test_login_sets_strict_cookie(self):
        """The token becomes an HttpOnly SameSite=Strict cookie holding a random id;
        the store keeps a hash of it, never the id or the token."""
        session_id, body, cookie = await self.login("operator")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        self.assertIn(b"Path=/", cookie)
        self.assertIn(b"Max-Age=3600", cookie)
        self.assertNotIn(b"Secure", cookie)  # plain HTTP here
        self.assertNotIn(TOKENS["operator"], session_id)
        self.assertEqual(
            (body["name"], body["role"], body["via"]), ("operator", "operator", "cookie")
        )
        self.assertRegex(body["csrf_token"], "^[0-9a-f]{64}$")
        self.assertNotIn(TOKENS["operator"], json.dumps(body))
        rows = await self.store._run(self.store._select_txn, "SELECT * FROM console_sessions", ())
        self.assertEqual(len(rows), 1)
        self.assertNotIn(session_id, json.dumps(rows))
        response, _ = await self.call(
            "POST",
            "/api/v1/session",
            {"token": TOKENS["viewer"]},
            token=None,
            headers={b"x-forwarded-proto": [b"https"]},
        )
        self.assertIn(b"Secure", response.headers.getRawHeaders(b"set-cookie")[0])

    async def test_cookie_authenticates_reads_and_csrf_guards_writes(self):
        """With the cookie, GETs work; a POST needs the session's X-CSRF-Token."""
        session_id, login, _ = await self.login("operator")
        response, body = await self.call("GET", "/api/v1/agents", token=None, cookie=session_id)
        self.assertEqual((response.code, body["agents"][0]["agent_id"]), (200, "gw-1"))
        response, me = await self.call("GET", "/api/v1/session", token=None, cookie=session_id)
        self.assertEqual(me["csrf_token"], login["csrf_token"])
        path = "/api/v1/agents/gw-1/commands"
        for headers in ({}, {b"x-csrf-token": [b"0" * 64]}):
            response, body = await self.call(
                "POST", path, {"verb": "ping"}, token=None, cookie=session_id, headers=headers
            )
            self.assertEqual((response.code, body["error"]["code"]), (403, "CSRF_REQUIRED"))
        response, body = await self.call(
            "POST",
            path,
            {"verb": "ping"},
            token=None,
            cookie=session_id,
            headers={b"x-csrf-token": [login["csrf_token"].encode()]},
        )
        self.assertEqual((response.code, body["status"]), (201, "queued"))
        response, body = await self.call("GET", "/api/v1/session")
        self.assertEqual((body["via"], body["csrf_token"]), ("bearer", None))

    async def test_login_refusals(self):
        """A wrong, revoked or missing token gets no session (401/400). Bad requests are
        audited one by one; wrong and revoked tokens as failed authentications, in one
        api.refused record for their source (naming the revoked token, not a secret)."""
        await self.store.revoke_token("viewer", 1500.0)
        for body, code in (
            ({"token": "vw_wrong"}, 401),
            ({"token": TOKENS["viewer"]}, 401),
            ({}, 400),
            ({"token": TOKENS["admin"], "x": 1}, 400),
        ):
            response, answer = await self.call("POST", "/api/v1/session", body, token=None)
            self.assertEqual(response.code, code, answer)
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        # A form of another site cannot log the browser in (it cannot send JSON).
        response, answer = await json_call(
            StubTreq(self.resource),
            "POST",
            "/api/v1/session",
            raw=b'{"token": "' + TOKENS["admin"].encode() + b'"}',
            headers={b"content-type": [b"text/plain"]},
        )
        self.assertEqual((response.code, answer["error"]["code"]), (415, "UNSUPPORTED_MEDIA_TYPE"))
        await self.api.audit.flush()
        records = await self.store.audit_records()
        self.assertEqual(
            [(r.action, r.target, r.outcome) for r in records],
            [("api.post", "/api/v1/session", "refused")] * 3,
        )
        self.clock.advance(self.api.auth_failures.interval)
        await self.api.audit.flush()
        records = await self.store.audit_records()
        [refused] = [r for r in records if r.action == "api.refused"]
        detail = json.loads(refused.detail)
        self.assertEqual((detail["count"], detail["actors"]), (2, ["viewer"]))
        self.assertNotIn("vw_", repr(records))

    async def test_failed_cookies_and_logins_are_limited_per_source(self):
        """An unknown or ended session cookie and a wrong token at the login count as
        failed authentications of their source, as a bad bearer token does: past the
        source's burst they get 429 with Retry-After, while a valid token still logs in."""
        api = self.make_api(auth_failure_rate=0.5, auth_failure_burst=3)
        failures = api.auth_failures
        self.resource = api.resource()
        session_id, _, _ = await self.login("operator")
        self.clock.advance(self.session_ttl + 1)  # the session has ended
        codes = []
        for cookie, body in (("unknown", None), (session_id, None), (None, {"token": "vw_x"})):
            path = "/api/v1/agents" if body is None else "/api/v1/session"
            method = "GET" if body is None else "POST"
            response, _ = await self.call(method, path, body, token=None, cookie=cookie)
            codes.append(response.code)
        response, answer = await self.call("GET", "/api/v1/agents", token=None, cookie="unknown")
        codes.append(response.code)
        self.assertEqual(codes, [401, 401, 401, 429])
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"2"])
        response, answer = await self.call("POST", "/api/v1/session", {"token": "vw_x"}, token=None)
        self.assertEqual((response.code, answer["error"]["code"]), (429, "RATE_LIMITED"))
        self.assertEqual(len(failures), 1)
        await self.login("operator")

    async def test_logout_expiry_and_revocation_end_sessions(self):
        """DELETE ends the session (cookie cleared); sessions also end at their TTL and
        when their token is revoked."""
        session_id, login, _ = await self.login("operator")
        csrf = {b"x-csrf-token": [login["csrf_token"].encode()]}
        response, body = await self.call(
            "DELETE", "/api/v1/session", token=None, cookie=session_id, headers=csrf
        )
        self.assertEqual((response.code, body), (200, {"ended": True}))
        self.assertIn(b"Max-Age=0", response.headers.getRawHeaders(b"set-cookie")[0])
        response, body = await self.call("GET", "/api/v1/session", token=None, cookie=session_id)
        self.assertEqual(response.code, 401)

        session_id, _, _ = await self.login("operator")
        self.clock.advance(self.session_ttl + 1)
        response, _ = await self.call("GET", "/api/v1/agents", token=None, cookie=session_id)
        self.assertEqual(response.code, 401)

        session_id, _, _ = await self.login("viewer")
        response, _ = await self.call("DELETE", "/api/v1/tokens/viewer")
        self.assertEqual(response.code, 200)
        self.clock.advance(3)  # the session cache
        response, _ = await self.call("GET", "/api/v1/agents", token=None, cookie=session_id)
        self.assertEqual(response.code, 401)

    async def test_session_survives_a_restart_and_is_capped_by_token_expiry(self):
        """Sessions live in the store: another API object (a restarted backend, a replica)
        accepts the cookie. A token expiring sooner than the TTL shortens the session."""
        session_id, _, _ = await self.login("operator")
        self.resource = self.make_api().resource()
        response, body = await self.call("GET", "/api/v1/session", token=None, cookie=session_id)
        self.assertEqual((response.code, body["name"]), (200, "operator"))
        await self.store.create_token(
            "short", hash_token("vw_short"), 1.0, role="viewer", expires_at=2100.0
        )
        TOKENS["short"] = "vw_short"
        self.addCleanup(TOKENS.pop, "short")
        _, body, cookie = await self.login("short")
        self.assertIn(b"Max-Age=100", cookie)
        self.assertEqual(body["expires_at"], "1970-01-01T00:35:00.000Z")

    async def test_viewer_session_cannot_run(self):
        """A viewer's session may read but not run a verb, CSRF token or not."""
        session_id, login, _ = await self.login("viewer")
        response, body = await self.call(
            "POST",
            "/api/v1/agents/gw-1/commands",
            {"verb": "ping"},
            token=None,
            cookie=session_id,
            headers={b"x-csrf-token": [login["csrf_token"].encode()]},
        )
        self.assertEqual((response.code, body["error"]["code"]), (403, "FORBIDDEN"))


class TokenRouteTests(ConsoleAPITestCase):
    async def test_admin_only(self):
        """Listing, creating and revoking tokens needs an admin token."""
        for role in ("viewer", "operator"):
            for method, path, body in (
                ("GET", "/api/v1/tokens", None),
                ("POST", "/api/v1/tokens", {"name": "x"}),
                ("DELETE", "/api/v1/tokens/viewer", None),
            ):
                response, answer = await self.call(method, path, body, token=role)
                self.assertEqual((response.code, answer["error"]["code"]), (403, "FORBIDDEN"))

    async def test_create_list_revoke(self):
        """The secret is returned once and works; lists never show secrets or hashes;
        revocation is immediate for the API, 409 the second time, 404 for unknown names."""
        response, created = await self.call(
            "POST",
            "/api/v1/tokens",
            {
                "name": "ci",
                "role": "operator",
                "verbs": ["ping"],
                "sites": ["test"],
                "expires_in": 600,
            },
        )
        self.assertEqual(response.code, 201, created)
        secret = created.pop("token")
        self.assertTrue(secret.startswith("vw_"))
        self.assertEqual(
            created,
            {
                "name": "ci",
                "role": "operator",
                "verbs": ["ping"],
                "sites": ["test"],
                "state": "active",
                "created_at": "1970-01-01T00:33:20.000Z",
                "expires_at": "1970-01-01T00:43:20.000Z",
                "revoked_at": None,
            },
        )
        TOKENS["ci"] = secret
        self.addCleanup(TOKENS.pop, "ci")
        response, _ = await self.call("GET", "/api/v1/agents", token="ci")
        self.assertEqual(response.code, 200)
        response, listed = await self.call("GET", "/api/v1/tokens")
        self.assertEqual(
            [t["name"] for t in listed["tokens"]], ["admin", "ci", "operator", "viewer"]
        )
        self.assertNotIn(secret, json.dumps(listed))
        self.assertNotIn(hash_token(secret), json.dumps(listed))
        response, answer = await self.call("POST", "/api/v1/tokens", {"name": "ci"})
        self.assertEqual((response.code, answer["error"]["code"]), (409, "TOKEN_EXISTS"))
        response, revoked = await self.call("DELETE", "/api/v1/tokens/ci")
        self.assertEqual((response.code, revoked["state"]), (200, "revoked"))
        response, answer = await self.call("DELETE", "/api/v1/tokens/ci")
        self.assertEqual((response.code, answer["error"]["code"]), (409, "ALREADY_REVOKED"))
        response, answer = await self.call("DELETE", "/api/v1/tokens/nobody")
        self.assertEqual((response.code, answer["error"]["code"]), (404, "TOKEN_NOT_FOUND"))
        await self.api.audit.flush()
        records = await self.store.audit_records()
        self.assertIn(
            ("token.create", "token:ci", "admin"),
            [(r.action, r.target, r.actor) for r in records],
        )
        self.assertIn(
            ("token.revoke", "token:ci", "ok"),
            [(r.action, r.target, r.outcome) for r in records],
        )
        self.assertNotIn(secret, repr(records))

    async def test_bad_token_requests(self):
        """Bad names, roles, limits and expiries are 400s naming the field."""
        for body, field in (
            ({}, "name"),
            ({"name": " x"}, "name"),
            ({"name": "x/y"}, "name"),
            ({"name": "x", "role": "root"}, "role"),
            ({"name": "x", "verbs": "ping"}, "verbs"),
            ({"name": "x", "sites": [""]}, "sites"),
            ({"name": "x", "expires_in": 0}, "expires_in"),
            ({"name": "x", "expires_in": True}, "expires_in"),
            ({"name": "x", "secret": "mine"}, "secret"),
        ):
            response, answer = await self.call("POST", "/api/v1/tokens", body)
            self.assertEqual((response.code, answer["error"]["field"]), (400, field), body)


class AuditRouteTests(ConsoleAPITestCase):
    async def _records(self) -> None:
        append = self.store.append_audit
        await append(
            100.0, "alice", "api.post", "/api/v1/agents/gw-1/commands", "ok", {"verb": "ping"}
        )
        await append(
            200.0, "gw-1", "command.finished", "command:c1", "succeeded", {"agent_id": "gw-1"}
        )
        await append(300.0, "bob", "api.post", "/api/v1/jobs", "refused", {"error": "FORBIDDEN"})
        await append(400.0, "gw-2", "connection.refused", "agent:gw-2", "refused", None)
        await append(500.0, "alice", "token.create", "token:x_1", "ok", None)

    async def test_filters_and_paging(self):
        """Records come newest first, filtered by actor, action (prefix), agent, outcome
        and time, and page with next_before; a viewer may read them."""
        await self._records()

        async def seqs(query: str) -> list[int]:
            response, body = await self.call("GET", "/api/v1/audit" + query, token="viewer")
            self.assertEqual(response.code, 200, body)
            return [r["seq"] for r in body["records"]]

        self.assertEqual(await seqs(""), [5, 4, 3, 2, 1])
        self.assertEqual(await seqs("?actor=alice"), [5, 1])
        self.assertEqual(await seqs("?action=api.*"), [3, 1])
        self.assertEqual(await seqs("?action=api"), [])
        self.assertEqual(await seqs("?agent=gw-1"), [2, 1])
        self.assertEqual(await seqs("?agent=gw-2"), [4])
        self.assertEqual(await seqs("?agent=gw_1"), [])  # LIKE wildcards are literal
        self.assertEqual(await seqs("?outcome=refused"), [4, 3])
        self.assertEqual(await seqs("?since=200&until=400"), [3, 2])
        response, page = await self.call("GET", "/api/v1/audit?limit=2")
        self.assertEqual(([r["seq"] for r in page["records"]], page["next_before"]), ([5, 4], 4))
        response, page = await self.call("GET", "/api/v1/audit?limit=2&before=4")
        self.assertEqual(([r["seq"] for r in page["records"]], page["next_before"]), ([3, 2], 2))
        response, page = await self.call("GET", "/api/v1/audit?limit=2&before=2")
        self.assertEqual(([r["seq"] for r in page["records"]], page["next_before"]), ([1], None))
        self.assertEqual(page["records"][0]["detail"], {"verb": "ping"})
        self.assertEqual(page["records"][0]["at"], "1970-01-01T00:01:40.000Z")
        response, body = await self.call("GET", "/api/v1/audit?since=soon")
        self.assertEqual((response.code, body["error"]["field"]), (400, "since"))

    async def test_export(self):
        """Export answers the filtered records as JSON lines, oldest first, as an attachment."""
        await self._records()
        response, body = await self.raw(
            "/api/v1/audit/export?actor=alice",
            {b"authorization": [f"Bearer {TOKENS['viewer']}".encode()]},
        )
        self.assertEqual(response.code, 200)
        self.assertIn(b"attachment", response.headers.getRawHeaders(b"content-disposition")[0])
        lines = [json.loads(line) for line in body.splitlines()]
        self.assertEqual([r["seq"] for r in lines], [1, 5])
        self.assertEqual(lines[0]["detail_json"], '{"verb":"ping"}')

    async def test_verify_badge(self):
        """The chain is verified to its last record, then incrementally; an edited record
        shows as broken (at once if it is the last one verified, else with full=1)."""
        await self._records()
        response, status = await self.call("GET", "/api/v1/audit/verify", token="viewer")
        self.assertEqual((status["verified"], status["verified_to"]), (True, 5))
        await self.store.append_audit(600.0, "alice", "api.delete", "/x", "ok", None)
        response, status = await self.call("GET", "/api/v1/audit/verify")
        self.assertEqual((status["verified"], status["verified_to"]), (True, 6))
        await self.store._run(
            self.store._update_count_txn,
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
            (),
        )
        response, status = await self.call("GET", "/api/v1/audit/verify")
        self.assertTrue(status["verified"])  # incremental: record 2 was verified before
        response, status = await self.call("GET", "/api/v1/audit/verify?full=1")
        self.assertEqual(
            (status["verified"], status["verified_to"], status["broken_at"]), (False, 1, 2)
        )
        self.assertIn("record 2 was edited", status["message"])


class FleetAndAgentsTests(ConsoleAPITestCase):
    async def _fleet(self) -> None:
        for n in range(1, 6):
            await self.store.upsert_agent_online(
                f"gw-{n}",
                version="0.2.0" if n % 2 else "0.1.0",
                site="east" if n <= 3 else "west",
                hostname=f"h{n}",
                protocol=1,
                verbs={"ping": {"params": {}}},
                peer=None,
                session_id="s",
                labels={"role": "edge" if n != 5 else "core"},
                now=1000.0,
                cert_serial=f"{n:x}",
                cert_not_after=2000.0 + n * 86400 * 20,
            )
        for agent_id in ("gw-1", "gw-4"):
            self.registry.register(FakeSession(agent_id))

    async def test_unpaged_listing_is_unchanged(self):
        """Without limit/offset the listing is exactly {"agents": [...]} as before."""
        await self._fleet()
        response, body = await self.call("GET", "/api/v1/agents")
        self.assertEqual(list(body), ["agents"])
        self.assertEqual(len(body["agents"]), 5)
        response, body = await self.call("GET", "/api/v1/agents?status=online")
        self.assertEqual([a["agent_id"] for a in body["agents"]], ["gw-1", "gw-4"])

    async def test_paging(self):
        """limit/offset give a page with total and online counts, after selector and
        status filters; bad values are 400s."""
        await self._fleet()
        response, body = await self.call("GET", "/api/v1/agents?limit=2&offset=1")
        self.assertEqual([a["agent_id"] for a in body["agents"]], ["gw-2", "gw-3"])
        self.assertEqual(
            (body["total"], body["online"], body["offset"], body["limit"]), (5, 2, 1, 2)
        )
        self.assertEqual(body["agents"][0]["verbs"], ["ping"])
        response, body = await self.call("GET", "/api/v1/agents?limit=10&selector=role=edge")
        self.assertEqual((body["total"], body["online"]), (4, 2))
        response, body = await self.call("GET", "/api/v1/agents?offset=0&status=offline")
        self.assertEqual([a["agent_id"] for a in body["agents"]], ["gw-2", "gw-3", "gw-5"])
        for query, field in (
            ("limit=0", "limit"),
            ("offset=-1", "offset"),
            ("status=up", "status"),
        ):
            response, body = await self.call("GET", "/api/v1/agents?" + query)
            self.assertEqual((response.code, body["error"]["field"]), (400, field))

    async def test_fleet_summary(self):
        """The fleet summary counts online/offline by site and version, lists certificates
        ending within cert_days, and the latest failed commands."""
        await self._fleet()
        command = await self.ledger.submit("gw-2", "ping", {}, None, None)
        self.clock.advance(86400 * 8)  # past the default TTL: expired
        await self.store.expire_due(self.clock.seconds())
        response, fleet = await self.call("GET", "/api/v1/fleet?cert_days=50", token="viewer")
        self.assertEqual(response.code, 200, fleet)
        self.assertEqual((fleet["agents"], fleet["online"]), (5, 2))
        self.assertEqual(
            fleet["sites"],
            [
                {"site": "east", "online": 1, "offline": 2},
                {"site": "west", "online": 1, "offline": 1},
            ],
        )
        self.assertEqual(
            fleet["versions"],
            [
                {"version": "0.1.0", "online": 1, "offline": 1},
                {"version": "0.2.0", "online": 1, "offline": 2},
            ],
        )
        # now = 2000 + 8 days: gw-1 (20 days) and gw-2 (40 days) end within 50 days.
        self.assertEqual([c["agent_id"] for c in fleet["certificates"]], ["gw-1", "gw-2"])
        [failed] = fleet["failed_commands"]
        self.assertEqual(
            (failed["command_id"], failed["status"]), (command[0].command_id, "expired")
        )
        self.assertNotIn("stdout", failed)
        response, agent = await self.call("GET", "/api/v1/agents/gw-3")
        self.assertEqual(agent["certificate"]["serial"], "3")
        self.assertEqual(agent["sessions"], 1)

    async def test_certificate_revocation(self):
        """An admin revokes every certificate the agent id connected with (audited), as
        `viworks pki revoke AGENT_ID` does, and the answer lists them; others may not; an
        agent without a known certificate is a 409."""
        await self._fleet()
        # gw-2 also connected with a second certificate (stolen, say) before its HELLO's.
        await self.store.record_certificate("gw-2", "22", 900.0)
        await self.store.record_certificate("gw-2", "2", 1000.0)
        path = "/api/v1/agents/gw-2/certificate/revoke"
        response, body = await self.call("POST", path, {}, token="operator")
        self.assertEqual(response.code, 403)
        response, body = await self.call("POST", path, {"reason": "stolen"})
        self.assertEqual(
            (response.code, body["agent_id"], body["serial"], body["already_revoked"]),
            (200, "gw-2", "2", False),
        )
        self.assertEqual(
            [(c["serial"], c["already_revoked"]) for c in body["serials"]],
            [("22", False), ("2", False)],
        )
        self.assertEqual(body["serials"][0]["first_seen"], "1970-01-01T00:15:00.000Z")
        self.assertTrue(await self.store.is_certificate_revoked("2"))
        self.assertTrue(await self.store.is_certificate_revoked("22"))
        [record] = [
            r
            for r in await self.store.audit_search(action="certificate.revoke")
            if r.target == "agent:gw-2"
        ]
        self.assertEqual(
            (record.actor, record.outcome, json.loads(record.detail)["serials"]),
            ("admin", "ok", ["22", "2"]),
        )
        response, body = await self.call("POST", path, {})
        self.assertTrue(body["already_revoked"])
        self.assertEqual([c["already_revoked"] for c in body["serials"]], [True, True])
        await add_agent(self.store, "gw-9")
        response, body = await self.call("POST", "/api/v1/agents/gw-9/certificate/revoke", {})
        self.assertEqual((response.code, body["error"]["code"]), (409, "NO_CERTIFICATE"))
        response, body = await self.call("POST", "/api/v1/agents/nope/certificate/revoke", {})
        self.assertEqual(response.code, 404)
