"""The cluster harness: several backend replicas behind nginx, on one fresh database.

``Cluster(testcase, replicas=3)`` describes; ``await cluster.start()`` makes:

- a fresh PostgreSQL database (``tests.cluster.postgres``), dropped at cleanup;
- with ``bus=True``, a private redis-server (``tests.cluster.redis``) and a
  ``[cluster]`` section in every replica's config (``bus``, ``replica_id`` = the
  replica's name, plus ``cluster_options``). Without it the replicas run as today's
  single processes sharing the database;
- N replicas ``b1``..``bN``: ``twistd viworks-backend`` processes (``tests.processes.
  Twistd``) with generated configs (own ports, the shared test PKI, 1 s heartbeats,
  nginx trusted for X-Forwarded-For), each healthy before ``start`` returns;
- nginx running the shipped etc/nginx/viworks-cluster.conf (``tests.cluster.nginx``):
  agents on ``front_port`` (TLS pass-through, least_conn), the API through it over
  HTTPS round-robin (``cluster.api``);
- an operator token (``cluster.api`` through nginx; ``replica.api`` direct).

Agents are the product's own ``BackendLink`` (``tests.fleet.Fleet``) through nginx, with
two verbs: ``ping`` (in process) and ``mark`` (a real process appending its ``tag`` to
``cluster.marks``, then sleeping ``sleep`` seconds: ``cluster.marked()`` counts what
really ran). Replicas are killed (-9), frozen (SIGSTOP), thawed (SIGCONT), stopped
(SIGTERM) and started again with the ``Cluster`` methods. Everything is stopped at the
test's cleanup, in reverse order.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
from collections import Counter
from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.cluster import postgres
from tests.cluster.nginx import Nginx, private_config
from tests.cluster.redis import RedisServer, start_redis
from tests.fleet import Fleet, ping_catalog
from tests.processes import Api, Twistd, create_token, viworks
from tests.stack import Stack, _table, free_port, poll, shared_pki, write
from viworks.gateway.runner import ProcessRunner
from viworks.gateway.verbs.catalog import VerbCatalog
from viworks.gateway.verbs.declared import declared_verb

HEARTBEAT = 1.0
WAIT = 60.0


class Replica:
    """One backend replica: its ports, config, process and direct API."""

    def __init__(self, testcase: Any, directory: str, name: str) -> None:
        self.name = name
        self.http_port = free_port()
        self.ws_port = free_port()
        self.config = os.path.join(directory, f"backend-{name}.toml")
        self.process = Twistd(
            testcase, "viworks-backend", self.config, os.path.join(directory, f"{name}.log")
        )
        # Thawed before its process is stopped (cleanups run last-in first-out).
        testcase.addCleanup(self.signal, signal.SIGCONT)
        self.api = Api(f"http://127.0.0.1:{self.http_port}")

    def __repr__(self) -> str:
        return f"<Replica {self.name} http={self.http_port} ws={self.ws_port}>"

    def signal(self, signum: int) -> None:
        if self.process.running:
            assert self.process.process is not None
            self.process.process.send_signal(signum)

    def health(self) -> Deferred[tuple[int | None, Any]]:
        """``(status, body)`` of its /api/v1/health (``(None, None)``: no answer)."""
        return self.api.call("GET", "/api/v1/health")


class Cluster:
    """N replicas, nginx and (``bus=True``) Redis for one test; see the module doc.

    ``backend``: more ``[backend]`` keys for every replica; ``cluster_options``: more
    ``[cluster]`` keys (with ``bus=True``); ``extra``: text appended to every config.
    """

    def __init__(
        self,
        testcase: Any,
        replicas: int = 3,
        *,
        bus: bool = False,
        backend: Mapping[str, Any] | None = None,
        cluster_options: Mapping[str, Any] | None = None,
        extra: str = "",
    ) -> None:
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.pki = shared_pki()["ours"]
        self.bus = bus
        self.backend = dict(backend or {})
        self.cluster_options = dict(cluster_options or {})
        self.extra = extra
        self.front_port = free_port()  # nginx: agents and the API (443 in the shipped file)
        self.api_port = free_port()  # nginx's HTTPS API server (127.0.0.1:8445)
        self.replicas = [Replica(testcase, self.dir, f"b{i + 1}") for i in range(replicas)]
        self.marks = os.path.join(self.dir, "marks")
        self.redis: RedisServer | None = None
        self.database: postgres.Database | None = None
        self.nginx: Nginx | None = None
        self.token = ""
        self.api = Api(f"https://127.0.0.1:{self.front_port}")

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> Cluster:
        reason = await deferToThread(postgres.unavailable)
        if reason:
            raise SkipTest(reason)
        self.database = await postgres.fresh_database(self.testcase)
        if self.bus:
            self.redis = await start_redis(self.testcase)
        for replica in self.replicas:
            write(replica.config, self.config_text(replica))
        # One process creates the schema (and the token) before the replicas race to.
        self.token = await deferToThread(create_token, self.replicas[0].config, "cluster")
        for replica in self.replicas:
            replica.api.token = self.token
        await gatherResults(
            [Deferred.fromCoroutine(self.start_replica(replica)) for replica in self.replicas]
        )
        await self.start_nginx()
        context = ssl.create_default_context(cafile=os.path.join(self.pki, "ca.crt"))
        self.api = Api(f"https://127.0.0.1:{self.front_port}", self.token, context)
        return self

    def config_text(self, replica: Replica) -> str:
        """The replica's backend.toml: its ports, the shared database and PKI, and with a
        bus its ``[cluster]`` section."""
        assert self.database is not None
        values = {
            "http_bind": f"127.0.0.1:{replica.http_port}",
            "ws_bind": f"127.0.0.1:{replica.ws_port}",
            "database": self.database.url,
            "heartbeat_interval": HEARTBEAT,
            "trusted_proxies": ["127.0.0.1"],  # nginx's X-Forwarded-For
            **self.backend,
        }
        text = (
            f"[backend]\n{_table(values)}"
            f'[tls]\ncert = "{self.pki}/server.crt"\nkey = "{self.pki}/server.key"\n'
            f'client_ca = "{self.pki}/ca.crt"\n'
        )
        if self.redis is not None:
            cluster = {"bus": self.redis.url(), "replica_id": replica.name, **self.cluster_options}
            text += f"[cluster]\n{_table(cluster)}"
        return text + self.extra

    async def start_replica(self, replica: Replica) -> None:
        """Start (or start again) a replica and wait until it answers /health (bounded)."""
        replica.process.start()
        await poll(replica.health, lambda answer: answer[0] == 200, WAIT, 0.1)

    async def start_nginx(self) -> None:
        directory = os.path.join(self.dir, "nginx")
        upstreams = [
            (r.name, f"127.0.0.1:{r.ws_port}", f"127.0.0.1:{r.http_port}") for r in self.replicas
        ]
        config = private_config(directory, self.pki, self.front_port, self.api_port, upstreams)
        self.nginx = Nginx(self.testcase, directory, config)
        await deferToThread(self.nginx.start, self.front_port)

    # -- failures --------------------------------------------------------------------------

    async def kill(self, replica: Replica) -> None:
        """kill -9: no shutdown code runs; its agents' connections just drop."""
        await deferToThread(replica.process.kill)

    async def terminate(self, replica: Replica) -> None:
        """SIGTERM, waiting (bounded) for a clean exit."""
        await deferToThread(replica.process.stop)

    def freeze(self, replica: Replica) -> None:
        """SIGSTOP: its sockets stay open, nothing answers (a long GC pause, a hung VM)."""
        replica.signal(signal.SIGSTOP)

    def thaw(self, replica: Replica) -> None:
        """SIGCONT after ``freeze``."""
        replica.signal(signal.SIGCONT)

    # -- agents ----------------------------------------------------------------------------

    def agents(self, count: int, prefix: str = "agent", **link_options: Any) -> Fleet:
        """``count`` agents pointed at nginx (not started; stopped at cleanup), with the
        ``ping`` and ``mark`` verbs, 1 s heartbeats and fast reconnects by default."""
        options = {
            "heartbeat_interval": HEARTBEAT,
            "reconnect_initial": 0.1,
            "reconnect_max": 1.0,
            **link_options,
        }
        fleet = Fleet(
            reactor, os.path.join(self.dir, prefix), self.pki, self.front_port, count,
            prefix=prefix, catalog=self.catalog(), **options,
        )  # fmt: skip
        self.testcase.addCleanup(fleet.stop)
        return fleet

    def catalog(self) -> VerbCatalog:
        """``ping``, and ``mark`` declared as an operator would (loaded from a real
        agent.toml by the product's config loader)."""
        mark = Stack(self.testcase).agent_config(marks=self.marks).verbs["mark"]
        ping = ping_catalog(reactor).get("ping")
        assert ping is not None
        verbs = {"ping": ping, "mark": declared_verb("mark", mark)}
        return VerbCatalog(ProcessRunner(reactor), verbs)

    async def online(self) -> dict[str, int | None]:
        """Agents with a live session on each replica (``None``: it does not answer)."""
        answers = await gatherResults([replica.health() for replica in self.replicas])
        return {
            replica.name: body["agents_online"] if status == 200 else None
            for replica, (status, body) in zip(self.replicas, answers, strict=True)
        }

    async def connect_one_by_one(self, fleet: Fleet) -> dict[str, Replica]:
        """Start the agents one at a time, each once the last is connected, and learn
        which replica each landed on (its ``agents_online`` went up)."""
        placement = {}
        for agent_id, link in zip(fleet.ids, fleet.links, strict=True):
            before = await self.online()
            link.startService()
            after = await poll(self.online, lambda now, before=before: now != before, WAIT, 0.05)
            (name,) = [n for n in after if (after[n] or 0) > (before[n] or 0)]
            placement[agent_id] = self.replica(name)
        return placement

    def replica(self, name: str) -> Replica:
        return next(replica for replica in self.replicas if replica.name == name)

    # -- what happened ---------------------------------------------------------------------

    def marked(self) -> Counter:
        """How often each ``mark`` tag really ran, on every agent together."""
        if not os.path.exists(self.marks):
            return Counter()
        with open(self.marks) as f:
            return Counter(f.read().split())

    async def audit_verify(self) -> subprocess.CompletedProcess:
        """``viworks audit verify`` against the shared database (0: the chain holds)."""
        return await deferToThread(viworks, "audit", "verify", "--config", self.replicas[0].config)
