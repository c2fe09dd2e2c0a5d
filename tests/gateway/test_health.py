"""Tests for viworks.gateway.health: parsers on fixture text, one real read."""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from viworks.gateway import health

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         1000000 kB
MemAvailable:    4000000 kB
Buffers:          500000 kB
Cached:          2000000 kB
HugePages_Total:       0
"""

STAT = """\
cpu  100 10 50 800 40 0 0 0 0 0
cpu0 50 5 25 400 20 0 0 0 0 0
cpu1 50 5 25 400 20 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""

MOUNTS = """\
proc /proc proc rw,nosuid 0 0
sysfs /sys sysfs rw 0 0
overlay / overlay rw,lowerdir=/a 0 0
/dev/sda1 /boot ext4 rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
/dev/sdb1 /srv/my\\040data xfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/sda1 /boot ext4 rw,relatime 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
"""

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 123456789  1000    0    0    0     0          0         0 987654321   2000    0    0    0     0       0          0
"""  # noqa: E501


class ParserTests(unittest.TestCase):
    def test_loadavg(self) -> None:
        """loadavg gives the 1, 5 and 15 minute averages."""
        self.assertEqual(
            health.parse_loadavg("0.50 1.25 2.00 1/234 5678\n"),
            {"1m": 0.5, "5m": 1.25, "15m": 2.0},
        )

    def test_meminfo(self) -> None:
        """meminfo gives bytes (from kB) and the used share of MemAvailable."""
        self.assertEqual(
            health.parse_meminfo(MEMINFO),
            {"total_bytes": 16_384_000_000, "available_bytes": 4_096_000_000, "used_percent": 75.0},
        )

    def test_meminfo_without_memavailable(self) -> None:
        """Old kernels without MemAvailable fall back to free+buffers+cached."""
        text = MEMINFO.replace("MemAvailable:    4000000 kB\n", "")
        self.assertEqual(health.parse_meminfo(text)["available_bytes"], 3_500_000 * 1024)

    def test_stat(self) -> None:
        """stat gives the CPU count and busy share of jiffies since boot."""
        cpu = health.parse_stat(STAT)
        self.assertEqual(cpu["count"], 2)
        self.assertEqual(cpu["jiffies"]["user"], 100)
        self.assertEqual(cpu["jiffies"]["idle"], 800)
        # busy = 1000 total - (800 idle + 40 iowait) = 160 -> 16 %
        self.assertEqual(cpu["busy_percent_since_boot"], 16.0)

    def test_uptime(self) -> None:
        """uptime gives seconds since boot."""
        self.assertEqual(health.parse_uptime("12345.67 54321.00\n"), 12345.67)

    def test_mounts(self) -> None:
        """Pseudo filesystems are skipped (except an overlay root), escapes
        are decoded and duplicates listed once."""
        self.assertEqual(health.parse_mounts(MOUNTS), ["/", "/boot", "/srv/my data"])

    def test_net_dev(self) -> None:
        """net/dev gives per-interface received and transmitted bytes."""
        self.assertEqual(
            health.parse_net_dev(NET_DEV),
            {
                "lo": {"rx_bytes": 1000, "tx_bytes": 1000},
                "eth0": {"rx_bytes": 123456789, "tx_bytes": 987654321},
            },
        )

    def test_disk_usage(self) -> None:
        """Disk usage is computed like df: reserved blocks excluded."""
        st = os.statvfs_result((4096, 4096, 1000, 300, 200, 0, 0, 0, 0, 255))
        self.assertEqual(
            health.disk_usage("/x", lambda _path: st),
            {
                "mount": "/x",
                "total_bytes": 4_096_000,
                "free_bytes": 819_200,
                # used = 700 blocks, used + available = 900 blocks
                "used_percent": 77.78,
            },
        )


class SystemHealthTests(unittest.TestCase):
    def test_fixture_proc(self) -> None:
        """system_health reads a proc tree; unreadable sections become None."""
        proc = tempfile.mkdtemp()
        files = {
            "loadavg": "1.0 2.0 3.0 1/1 1\n",
            "meminfo": MEMINFO,
            "stat": STAT,
            "mounts": MOUNTS,
        }
        for name, text in files.items():
            with open(os.path.join(proc, name), "w") as f:
                f.write(text)
        st = os.statvfs_result((4096, 4096, 1000, 300, 200, 0, 0, 0, 0, 255))
        seen: list[str] = []

        def statvfs(path: str) -> os.statvfs_result:
            seen.append(path)
            if path == "/boot":
                raise PermissionError(path)
            return st

        snap = health.system_health(proc, statvfs=statvfs)
        self.assertEqual(snap["load"], {"1m": 1.0, "5m": 2.0, "15m": 3.0})
        self.assertEqual(snap["cpu"]["count"], 2)
        self.assertIsNone(snap["uptime_seconds"])
        self.assertIsNone(snap["network"])
        self.assertEqual(seen, ["/", "/boot", "/srv/my data"])
        self.assertEqual([d["mount"] for d in snap["disk"]], ["/", "/srv/my data"])

    def test_real_proc(self) -> None:
        """Against the real /proc every section is filled in sensibly."""
        snap = health.system_health()
        self.assertEqual(set(snap), {"load", "memory", "cpu", "uptime_seconds", "disk", "network"})
        self.assertGreaterEqual(snap["load"]["1m"], 0)
        self.assertGreater(snap["memory"]["total_bytes"], 0)
        self.assertTrue(0 <= snap["memory"]["used_percent"] <= 100)
        self.assertGreaterEqual(snap["cpu"]["count"], 1)
        self.assertGreater(snap["uptime_seconds"], 0)
        self.assertIn("lo", snap["network"])
        self.assertIsInstance(snap["disk"], list)
        for disk in snap["disk"]:
            self.assertTrue(0 <= disk["used_percent"] <= 100)
            self.assertGreaterEqual(disk["total_bytes"], disk["free_bytes"])

    def test_explicit_mounts(self) -> None:
        """An explicit mount list is used instead of /proc/mounts."""
        snap = health.system_health(mounts=["/"])
        self.assertEqual([d["mount"] for d in snap["disk"]], ["/"])
