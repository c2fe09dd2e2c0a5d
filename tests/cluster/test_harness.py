"""The cluster harness works: two replicas on one fresh PostgreSQL database behind the
shipped nginx cluster config, agents through nginx, a command through the API.

Today's replicas run without ``[cluster]`` (single-process mode on a shared database),
so the command goes to the replica holding its agent; issue 15's cluster tests start
``Cluster(..., bus=True)`` and submit anywhere."""

from __future__ import annotations

import os
import tomllib

from twisted.trial import unittest

from tests.cluster.harness import Cluster
from tests.cluster.postgres import Database
from tests.cluster.redis import RedisServer
from tests.stack import eventually, poll
from tests.test_nginx import NO_STREAM, SKIP, STREAM_MODULE
from viworks import lifecycle


class ClusterHarnessTests(unittest.TestCase):
    timeout = 240
    skip = SKIP

    def setUp(self):
        if not os.path.exists(STREAM_MODULE):
            self.fail(NO_STREAM)

    async def test_two_replicas_behind_nginx(self):
        """nginx's least_conn spreads four agents over both replicas; the API through
        nginx (HTTPS, round-robin) lists them from the shared database, and each replica
        sees online the agents the harness placed on it; a mark
        command submitted to the holding replica runs once and reads back the same from
        any replica; kill -9 of the other replica moves its agents (reconnecting through
        nginx) to the survivor, and the API through nginx keeps answering."""
        cluster = await Cluster(self, replicas=2).start()
        fleet = cluster.agents(4)
        placement = await cluster.connect_one_by_one(fleet)
        self.assertEqual({replica.name for replica in placement.values()}, {"b1", "b2"})
        self.assertEqual(await cluster.online(), {"b1": 2, "b2": 2})

        status, body = await cluster.api.call("GET", "/api/v1/agents")
        self.assertEqual(status, 200, body)
        self.assertEqual(sorted(a["agent_id"] for a in body["agents"]), fleet.ids)
        # Today "online" is each replica's own view (its sessions): issue 15 makes it global.
        for replica in cluster.replicas:
            status, body = await replica.api.call("GET", "/api/v1/agents?status=online")
            held = sorted(a for a, r in placement.items() if r is replica)
            self.assertEqual(sorted(a["agent_id"] for a in body["agents"]), held)

        agent_id, holder = next(iter(placement.items()))
        status, command = await holder.api.call(
            "POST",
            f"/api/v1/agents/{agent_id}/commands?wait=20",
            {"verb": "mark", "args": {"tag": "smoke-1", "sleep": 0}},
        )
        self.assertEqual((status, command["status"]), (200, lifecycle.SUCCEEDED), command)
        path = f"/api/v1/commands/{command['command_id']}"
        for replica in cluster.replicas:
            status, read = await replica.api.call("GET", path)
            self.assertEqual((status, read["status"]), (200, lifecycle.SUCCEEDED))
        self.assertEqual(cluster.marked(), {"smoke-1": 1})

        other = next(replica for replica in cluster.replicas if replica is not holder)
        await cluster.kill(other)
        await poll(cluster.online, lambda online: online == {holder.name: 4, other.name: None}, 30)
        await eventually(lambda: fleet.connected == 4)
        for _ in range(4):  # round-robin: every other request first tries the dead replica
            status, health = await cluster.api.call("GET", "/api/v1/health")
            self.assertEqual((status, health["status"]), (200, "healthy"))


class ClusterConfigTests(unittest.TestCase):
    def test_cluster_section_is_one_parameter(self):
        """With ``bus=True`` every replica's generated config gains a ``[cluster]``
        section naming the private Redis and the replica, plus ``cluster_options``; the
        rest is the same valid TOML (nothing is started here)."""
        cluster = Cluster(self, replicas=3, bus=True, cluster_options={"lease_seconds": 10})
        url = "postgresql://postgres@127.0.0.1:5432/viworks_test_x"
        cluster.database = Database("viworks_test_x", url)
        cluster.redis = RedisServer(self, os.path.join(cluster.dir, "redis"))
        replica = cluster.replicas[1]
        config = tomllib.loads(cluster.config_text(replica))
        self.assertEqual(
            config["cluster"],
            {"bus": cluster.redis.url(), "replica_id": "b2", "lease_seconds": 10},
        )
        self.assertEqual(config["backend"]["database"], cluster.database.url)
        self.assertEqual(config["backend"]["ws_bind"], f"127.0.0.1:{replica.ws_port}")
        cluster.redis = None
        self.assertNotIn("cluster", tomllib.loads(cluster.config_text(replica)))
