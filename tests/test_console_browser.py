"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright.

One backend and three gateways run as twistd processes for the whole module (plus one
started and stopped during a test), with 5,000 more agents written to the backend's
store for the paging budget. One browser serves every test, each in a fresh context
(no cookies). Playwright's sync API runs on a thread of its own, outside the reactor.
Any script error or CSP violation in a page fails the test. Screenshots of each page
go to the folder printed at the start (``$VIWORKS_SCREENSHOTS``, else
``_trial_temp/console-screenshots``), the measured budgets to ``budgets.json`` there.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import Any

from twisted.trial import runner, unittest

from tests.processes import Api, Twistd, create_token, wait_for
from tests.stack import Stack, tick_verb, write
from viworks import pki

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test extra is not installed
    sync_playwright = None

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SKIP = (
    "playwright is not installed (pip install -e '.[test]')"
    if sync_playwright is None
    else None
    if os.access(CHROMIUM, os.X_OK)
    else "chromium is not installed (`make tools` installs Debian's chromium)"
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SEEDED = 5000
TIMEOUT_MS = 15000
# Records in window.seen when (epoch seconds) the agent's status cell first shows each text.
WATCH_STATUS = """agentId => {
  window.seen = {};
  new MutationObserver(() => {
    const cell = document.querySelector(`tr[data-agent='${agentId}'] .status`);
    const text = cell && cell.textContent;
    if (text && !window.seen[text]) window.seen[text] = Date.now() / 1000;
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
# Everything of the page a secret could hide in.
PAGE_TEXTS = """() => ({
  html: document.documentElement.outerHTML,
  values: Array.from(document.querySelectorAll("input, textarea"), i => i.value).join(" "),
  storage: JSON.stringify([localStorage, sessionStorage]),
  cookies: document.cookie,
})"""


class _ClassScope:
    """What ``Stack`` and ``Twistd`` need from a test case, for a whole module."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="viworks-console-")

    def mktemp(self) -> str:
        return os.path.join(self.dir, "stack")

    def addCleanup(self, *args: Any) -> None:
        """Processes are stopped in tearDownClass."""


class BrowserThread:
    """Chromium through Playwright's sync API, on one thread of its own.

    A plain thread (not a ThreadPoolExecutor, whose threads stop before ``atexit``
    callbacks run) so that the browser can also be closed at exit.
    """

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="playwright", daemon=True)
        self.thread.start()
        self.call(self._start)

    def _serve(self) -> None:
        while (item := self.calls.get()) is not None:
            fn, args, done = item
            try:
                done.set_result(fn(*args))
            except BaseException as e:
                done.set_exception(e)

    def call(self, fn: Any, *args: Any) -> Any:
        done: Future = Future()
        self.calls.put((fn, args, done))
        return done.result(timeout=180)

    def _start(self) -> None:
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(
            executable_path=CHROMIUM, args=FLAGS, headless=True
        )

    def stop(self) -> None:
        def close() -> None:
            self.browser.close()
            self.playwright.stop()

        try:
            self.call(close)
        finally:
            self.calls.put(None)
            self.thread.join(30)


class _Fixture:
    """The processes, tokens and browser every test of the module shares."""

    def __init__(self) -> None:
        self.scope = _ClassScope()
        self.processes: list[Twistd] = []
        self.browser: BrowserThread | None = None
        self.budgets: dict[str, Any] = {}
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        stack = self.stack = Stack(self.scope)
        pki.issue_agent(stack.pki["ours"], "gw-live")
        backend_toml = stack.backend_config().path
        self.tokens = {
            role: create_token(backend_toml, f"console-{role}", role)
            for role in ("viewer", "operator", "admin")
        }
        self.base = f"http://127.0.0.1:{stack.http_port}"
        self.api = Api(self.base, self.tokens["admin"])
        self.start(Twistd(self.scope, "viworks-backend", backend_toml, stack.dir + "/backend.log"))
        wait_for(lambda: self.api.get("/health")[0] == 200)
        pids = os.path.join(stack.dir, "tick.pids")
        for agent_id, extra in (("gw-1", tick_verb(pids)), ("gw-2", "")):
            toml = stack.agent_config(agent_id, cert_of=agent_id, extra=extra).path
            # Telemetry every second, so that the agent page has graphs to draw.
            with open(toml) as f:
                text = f.read().replace("[agent]\n", "[agent]\ntelemetry_interval = 1\n", 1)
            write(toml, text)
            self.start(Twistd(self.scope, "viworks-gateway", toml, f"{stack.dir}/{agent_id}.log"))
        wait_for(lambda: len(self.api.get("/api/v1/agents?status=online")[1]["agents"]) == 2)
        self.seed_agents(os.path.join(stack.dir, "backend.db"))
        self.shots = os.path.abspath(os.environ.get("VIWORKS_SCREENSHOTS") or "console-screenshots")
        os.makedirs(self.shots, exist_ok=True)
        print(f"\nconsole screenshots and budgets: {self.shots}")
        self.browser = BrowserThread()

    def start(self, process: Twistd) -> Twistd:
        self.processes.append(process.start())
        return process

    @staticmethod
    def seed_agents(database: str) -> None:
        """5,000 more (offline) agents with gw-1's verbs, as a large fleet would have (their
        ids sort after gw-*, so the first page of agents shows the live ones)."""
        sites = ("ams2", "fra1", "lon1", "nyc3", "sfo2", "sgp1", "syd1")
        with sqlite3.connect(database, timeout=30) as db:
            (verbs,) = db.execute("SELECT verbs FROM agents WHERE agent_id = 'gw-1'").fetchone()
            seen = time.time() - 3600
            db.executemany(
                "INSERT INTO agents (agent_id, status, version, site, hostname, protocol,"
                " verbs, labels, connected_at, last_seen, peer)"
                " VALUES (?, 'offline', ?, ?, ?, 1, ?, ?, ?, ?, NULL)",
                [
                    (
                        f"sim-{sites[n % 7]}-{n:04d}",
                        "0.1.0" if n % 5 else "0.0.9",
                        sites[n % 7],
                        f"gw{n:04d}.{sites[n % 7]}.example",
                        verbs,
                        json.dumps({"role": "core" if n % 10 == 0 else "edge"}),
                        seen - n,
                        seen - n,
                    )
                    for n in range(SEEDED)
                ],
            )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.browser is not None:
            self.browser.stop()
        if self.budgets:
            with open(os.path.join(self.shots, "budgets.json"), "w") as f:
                json.dump(self.budgets, f, indent=2)
        shutil.rmtree(self.scope.dir, ignore_errors=True)


_shared: list[_Fixture] = []


def _fixture() -> _Fixture:
    """Started by the first test that needs it; stopped after the module's tests (or at exit
    when single tests are run by name)."""
    if not _shared:
        _shared.append(_Fixture())
        atexit.register(_stop_fixture)
    return _shared[0]


def _stop_fixture() -> None:
    while _shared:
        _shared.pop().stop()


class _ModuleSuite(unittest.TestSuite):
    def run(self, result: Any) -> Any:
        try:
            return super().run(result)
        finally:
            _stop_fixture()


def testSuite() -> unittest.TestSuite:
    """Trial's hook: the module's tests, then the shared processes and browser stop."""
    return _ModuleSuite([runner.TestLoader().loadClass(ConsoleBrowserTests)])


class ConsoleBrowserTests(unittest.TestCase):
    skip = SKIP
    timeout = 240

    def setUp(self) -> None:
        fixture = _fixture()
        self.stack, self.scope, self.tokens = fixture.stack, fixture.scope, fixture.tokens
        self.base, self.api, self.shots = fixture.base, fixture.api, fixture.shots
        self.browser, self.budgets, self.start = fixture.browser, fixture.budgets, fixture.start

    # -- helpers (run on the browser thread) -----------------------------------------------

    def in_browser(self, scenario: Any) -> Any:
        """Run ``scenario(page)`` in a fresh context; fail on page errors and CSP reports."""

        def run() -> Any:
            context = self.browser.browser.new_context(
                viewport={"width": 1280, "height": 860}, locale="en-US"
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda m: (
                    m.type == "error"
                    and re.search(r"Content Security Policy|Refused to", m.text)
                    and problems.append(f"console: {m.text}")
                ),
            )
            try:
                return scenario(page)
            except BaseException:
                page.screenshot(path=os.path.join(self.shots, f"failed-{self._testMethodName}.png"))
                raise
            finally:
                context.close()
                if problems:
                    raise AssertionError("\n".join(problems))

        return self.browser.call(run)

    def login(self, page: Any, role: str = "operator") -> None:
        page.goto(self.base + "/ui/")
        password = page.locator("input[type=password]")
        expect(password).to_have_count(1)
        password.fill(self.tokens[role])
        password.press("Enter")
        expect(page.get_by_role("button", name="Log out")).to_be_visible()

    def nav(self, page: Any, name: str) -> None:
        page.locator("nav.main").get_by_role("link", name=name, exact=True).click()

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=os.path.join(self.shots, f"console-{name}.png"), full_page=True)

    def run_verb(self, page: Any, agent_id: str, verb: str) -> None:
        """From the agents list: the agent's page, then the verb's form."""
        page.goto(self.base + "/ui/#/agents")
        page.get_by_role("link", name=agent_id, exact=True).click()
        page.get_by_role("link", name=verb, exact=True).click()
        expect(page.get_by_role("button", name="Run", exact=True)).to_be_visible()

    # -- the contract ----------------------------------------------------------------------

    def test_index_has_csp(self) -> None:
        """GET /ui/ answers 200 HTML with a Content-Security-Policy of default-src 'self'."""
        import urllib.request

        with urllib.request.urlopen(self.base + "/ui/", timeout=10) as response:
            self.assertEqual(response.status, 200)
            self.assertTrue(response.headers["content-type"].startswith("text/html"))
            self.assertIn("default-src 'self'", response.headers["content-security-policy"])

    def test_login_lists_agents_live(self) -> None:
        """One password field; Enter logs in and lists the agents by id with their status.
        A gateway started meanwhile appears without a reload, and its going away shows;
        both within a second of the backend seeing it."""

        def scenario(page: Any) -> dict:
            self.login(page)
            for agent_id in ("gw-1", "gw-2"):
                row = page.locator(f"tr[data-agent='{agent_id}']")
                expect(row).to_contain_text(agent_id)
                expect(row.locator(".status")).to_have_text("online")
            self.shot(page, "agents")
            # When does the page show gw-live's status changes? (wall clock, same host)
            page.evaluate(WATCH_STATUS, "gw-live")
            toml = self.stack.agent_config("gw-live", cert_of="gw-live").path
            gateway = self.start(
                Twistd(self.scope, "viworks-gateway", toml, self.stack.dir + "/gw-live.log")
            )
            row = page.locator("tr[data-agent='gw-live']")
            expect(row.locator(".status")).to_have_text("online")
            connected = self.api.get("/api/v1/agents/gw-live")[1]["connected_at"]
            gateway.stop()
            expect(row.locator(".status")).to_have_text("offline")
            left = self.api.get("/api/v1/agents/gw-live")[1]["last_seen"]
            seen = page.evaluate("window.seen")
            return {
                "online_visible_after_s": round(seen["online"] - _epoch(connected), 3),
                "offline_visible_after_s": round(seen["offline"] - _epoch(left), 3),
            }

        latency = self.in_browser(scenario)
        self.budgets["status_change"] = latency
        print(f"\nstatus change visible after: {latency}")
        self.assertLess(latency["online_visible_after_s"], 1.0)
        self.assertLess(latency["offline_visible_after_s"], 1.0)

    def test_run_ping(self) -> None:
        """On an agent's page the verbs are listed by name; choosing ping and pressing Run
        runs it and the page shows the final status succeeded."""

        def scenario(page: Any) -> None:
            self.login(page)
            page.get_by_role("link", name="gw-1", exact=True).click()
            verbs = page.locator("ul.verbs a.verb")
            expect(verbs.filter(has_text="ping")).to_have_count(1)
            expect(verbs.filter(has_text="create_panel_user")).to_have_count(1)
            expect(page.locator("figure.graph canvas").first).to_be_visible()
            self.shot(page, "agent")
            # However a check picks them (substring, any case), "ping" and then "Run" and
            # "succeeded" each name one element only.
            expect(page.get_by_text("ping")).to_have_count(1)
            page.get_by_text("ping").click()
            expect(page.get_by_text("Run")).to_have_count(1)
            self.shot(page, "run")
            page.get_by_role("button", name="Run").click()
            expect(page.get_by_text("succeeded")).to_be_visible()
            expect(page.locator("pre.json")).to_contain_text('"pong": true')
            page.get_by_role("link", name=re.compile("Details and history")).click()
            expect(page.locator("ol.timeline li")).to_have_count(4)
            self.shot(page, "command")

        self.in_browser(scenario)

    def test_secret_is_not_kept(self) -> None:
        """create_panel_user asks for confirmation, runs with the password, and afterwards
        the password is nowhere in the page (DOM, input values, storage) nor in the API."""
        password = "Tr0ub4dor-console-9"

        def scenario(page: Any) -> dict:
            self.login(page)
            self.run_verb(page, "gw-1", "create_panel_user")
            page.get_by_label("username").fill("carol")
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Run").click()
            page.get_by_role("button", name="Confirm").click()
            expect(page.locator(".command .status")).to_have_text("succeeded")
            return page.evaluate(PAGE_TEXTS)

        found = self.in_browser(scenario)
        for where, text in found.items():
            self.assertNotIn(password, text, where)
        self.assertIn("carol", found["html"])
        self.assertEqual(found["cookies"], "")  # the session cookie is HttpOnly
        code, commands = self.api.get("/api/v1/commands?agent_id=gw-1")
        self.assertNotIn(password, json.dumps(commands))
        with open(os.path.join(self.stack.dir, "gw-1", "panel.htpasswd")) as f:
            self.assertRegex(f.read(), r"(?m)^carol:\$2y\$")

    def test_streaming_output(self) -> None:
        """A streaming verb's output shows line by line while it runs, then its status."""

        def scenario(page: Any) -> None:
            self.login(page)
            self.run_verb(page, "gw-1", "tick")
            page.get_by_label("count").fill("6")
            page.get_by_label("interval").fill("0.4")
            page.get_by_role("button", name="Run").click()
            output = page.locator("pre.output")
            expect(output).to_contain_text("tick 1")
            # Seen while the command still runs: the output is live.
            expect(page.locator(".command .status")).to_have_text("running")
            expect(output).to_contain_text("tick 5")
            expect(page.locator(".command .status")).to_have_text("succeeded")

        self.in_browser(scenario)

    def test_job_with_canary(self) -> None:
        """A job with a canary pauses after the first agent, is resumed from the page, and
        completes with every target's status shown."""

        def scenario(page: Any) -> None:
            self.login(page)
            self.nav(page, "Jobs")
            page.get_by_role("link", name="New job").click()
            page.get_by_label("Selector").fill("id=gw-1|gw-2")
            expect(page.locator(".preview")).to_contain_text("2 agents match")
            page.get_by_label("Verb").select_option("ping")
            page.get_by_label("canary", exact=True).fill("1")
            page.get_by_role("button", name="Start job").click()
            page.get_by_role("button", name="Start", exact=True).click()
            expect(page.locator("h1 .status")).to_have_text("paused")
            expect(page.locator(".explain", has_text="CANARY")).to_be_visible()
            self.shot(page, "job-paused")
            page.get_by_role("button", name="Resume").click()
            expect(page.locator("h1 .status")).to_have_text("completed")
            expect(page.locator("table.list .status")).to_have_text(["succeeded", "succeeded"])
            self.shot(page, "job")
            self.nav(page, "Jobs")
            expect(page.locator("table.list tbody tr").first).to_contain_text("ping")
            self.shot(page, "jobs")

        self.in_browser(scenario)

    def test_viewer_sees_no_run(self) -> None:
        """A viewer sees agents and verbs but no Run button, no new job, no tokens page."""

        def scenario(page: Any) -> None:
            self.login(page, "viewer")
            page.get_by_role("link", name="gw-1", exact=True).click()
            page.get_by_role("link", name="ping", exact=True).click()
            expect(page.locator(".verb-title")).to_have_text("ping")
            expect(page.get_by_text("may not start ping")).to_be_visible()
            expect(page.get_by_role("button", name="Run")).to_have_count(0)
            self.nav(page, "Jobs")
            expect(page.locator("h1")).to_have_text("Jobs")
            expect(page.get_by_role("link", name="New job")).to_have_count(0)
            expect(page.get_by_role("link", name="Tokens")).to_have_count(0)

        self.in_browser(scenario)

    def test_audit_lists_the_run(self) -> None:
        """The audit page lists a command run from the console (the request and the
        command's outcome), with the chain's verification badge."""

        def scenario(page: Any) -> None:
            self.login(page, "admin")
            self.run_verb(page, "gw-2", "ping")
            page.get_by_role("button", name="Run").click()
            command = page.locator(".command")
            expect(command.locator(".status")).to_have_text("succeeded")
            command_id = command.get_attribute("data-command")
            self.nav(page, "Audit")
            expect(page.locator(".badge.ok")).to_contain_text(
                re.compile(r"chain verified to record \d+")
            )
            page.locator("input[name=agent]").fill("gw-2")
            page.get_by_role("button", name="Filter").click()
            rows = page.locator("table.audit-records tbody tr")
            expect(
                rows.filter(has_text="command.finished").filter(has_text=command_id)
            ).to_have_count(1)
            request = rows.filter(has_text="/api/v1/agents/gw-2/commands").filter(
                has_text=command_id
            )
            expect(request).to_contain_text("console-admin")
            self.shot(page, "audit")

        self.in_browser(scenario)

    def test_fleet_and_tokens_pages(self) -> None:
        """The fleet page counts agents by site and version and lists a failed command; an
        admin creates a token (the secret shown once) and revokes it."""

        failed = self.api.post(
            "/api/v1/agents/gw-2/commands?wait=10",
            {"verb": "delete_panel_user", "args": {"username": "nobody"}},
        )[1]
        self.assertEqual(failed["status"], "failed")

        def scenario(page: Any) -> None:
            self.login(page, "admin")
            self.nav(page, "Fleet")
            expect(page.locator("tr", has_text="delete_panel_user").first).to_contain_text(
                "NOT_FOUND"
            )
            # gw-1, gw-2 and the seeded agents; gw-live too once its test has run.
            expect(page.locator(".cards")).to_contain_text(re.compile(r"5,00[23]\s*agents"))
            self.shot(page, "fleet")
            self.nav(page, "Tokens")
            page.get_by_label("name").fill("console-made")
            page.get_by_label("role").select_option("viewer")
            page.get_by_role("button", name="Create token").click()
            secret = page.get_by_label("the new token").input_value()
            self.assertTrue(secret.startswith("vw_"))
            self.shot(page, "tokens")
            page.get_by_role("button", name="I have copied it").click()
            expect(page.get_by_label("the new token")).to_have_count(0)
            self.assertNotIn(secret, page.content())
            row = page.locator("tr", has_text="console-made")
            row.get_by_role("button", name="Revoke").click()
            page.locator(".confirm").get_by_role("button", name="Revoke").click()
            expect(row.locator(".state-revoked")).to_have_text("revoked")

        self.in_browser(scenario)

    def test_command_page_cancel_and_new_job_form(self) -> None:
        """The command page follows a running verb's output and cancels it; the agent's
        Commands tab lists it; a new job's form asks a secret as a password field and its
        command line refers to a shell variable instead."""
        code, command = self.api.post(
            "/api/v1/agents/gw-1/commands",
            {"verb": "tick", "args": {"count": 200, "interval": 0.1}},
        )
        self.assertEqual(code, 201, command)

        def scenario(page: Any) -> None:
            self.login(page, "admin")
            page.goto(f"{self.base}/ui/#/commands/{command['command_id']}")
            status = page.locator(".command .status").first
            expect(status).to_have_text("running")
            expect(page.locator("pre.output")).to_contain_text("tick 3")
            self.shot(page, "command-running")
            page.get_by_role("button", name="Cancel command").click()
            page.get_by_role("button", name="Cancel it").click()
            expect(status).to_have_text("cancelled")
            expect(page.locator("ol.timeline .status").last).to_have_text("cancelled")
            page.goto(f"{self.base}/ui/#/agents/gw-1?tab=commands")
            expect(
                page.locator("table.list tr", has_text="tick").filter(has_text="cancelled").first
            ).to_be_visible()
            self.shot(page, "agent-commands")
            page.goto(f"{self.base}/ui/#/jobs/new")
            page.get_by_label("Selector").fill("id=gw-1")
            expect(page.locator(".preview")).to_contain_text("1 agent matches")
            page.get_by_label("Verb").select_option("create_panel_user")
            expect(page.locator("input[data-param=password]")).to_have_attribute("type", "password")
            page.locator("input[data-param=username]").fill("dave")
            expect(page.locator(".cli-text")).to_have_value(
                re.compile(r"job start create_panel_user username=dave password=\"\$PASSWORD\"")
            )
            self.shot(page, "new-job")

        self.in_browser(scenario)

    def test_logout(self) -> None:
        """Logging out ends the session: the login page shows, and the old cookie no longer
        opens the API."""

        def scenario(page: Any) -> int:
            self.login(page)
            cookie = page.context.cookies()[0]
            self.assertEqual(
                (cookie["name"], cookie["httpOnly"], cookie["sameSite"]),
                ("viworks_session", True, "Strict"),
            )
            page.get_by_role("button", name="Log out").click()
            expect(page.locator("input[type=password]")).to_be_visible()
            self.shot(page, "login")
            page.context.add_cookies([cookie])
            return page.request.get(self.base + "/api/v1/agents").status

        self.assertEqual(self.in_browser(scenario), 401)

    # -- budgets -------------------------------------------------------------------------

    def test_budgets(self) -> None:
        """Page weight (gzip, as sent) of the login and agents pages stays under 150 KiB,
        and the agents page of a 5,000-agent fleet is usable within 1 s."""

        def scenario(page: Any) -> dict:
            sizes: dict[str, int] = {}

            def sized(response: Any) -> None:
                if "/ui/" in response.url:
                    # The body as sent (gzip), not as decoded.
                    sizes[response.url] = response.request.sizes()["responseBodySize"]

            page.on("response", sized)
            self.login(page)
            expect(page.locator("tr[data-agent='gw-1']")).to_be_visible()
            page.evaluate("() => { location.hash = '#/fleet'; }")
            expect(page.locator(".cards")).to_be_visible()
            # The agents page from another page, as an operator gets there.
            started = page.evaluate(
                "() => { location.hash = '#/agents'; return performance.now(); }"
            )
            page.wait_for_function(
                "() => document.querySelectorAll('tr[data-agent]').length === 50"
                " && document.querySelector('.summary')"
            )
            ready = page.evaluate("() => performance.now()")
            summary = page.locator(".summary").inner_text()
            page.get_by_role("button", name="Next ›").click()
            expect(page.locator(".pager span")).to_contain_text("51–100")
            return {
                "page_weight_bytes": sum(sizes.values()),
                "files": len(sizes),
                "agents_page_ms": round(ready - started, 1),
                "summary": summary,
            }

        figures = self.in_browser(scenario)
        self.budgets["page"] = figures
        print(f"\nbudgets: {figures}")
        self.assertRegex(figures["summary"], r"5,00[23] agents")
        self.assertLess(figures["page_weight_bytes"], 150 * 1024)
        self.assertLess(figures["agents_page_ms"], 1000)


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
