"""Host health snapshot read from /proc and statvfs (no subprocesses).

The ``parse_*`` functions are pure (text in, dict out) so they can be tested
with fixture text; :func:`system_health` does the reading.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from viworks.files import read_text

__all__ = [
    "PSEUDO_FS_TYPES",
    "disk_usage",
    "parse_loadavg",
    "parse_meminfo",
    "parse_mounts",
    "parse_net_dev",
    "parse_stat",
    "parse_uptime",
    "system_health",
]

# Filesystems that hold no user data; their usage figures are noise.
PSEUDO_FS_TYPES = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
        "devpts", "devtmpfs", "efivarfs", "fuse.gvfsd-fuse", "fuse.lxcfs", "fusectl",
        "hugetlbfs", "mqueue", "nsfs", "overlay", "proc", "pstore", "ramfs",
        "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs",
        "tracefs",
    }
)  # fmt: skip

_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole > 0 else 0.0


def parse_loadavg(text: str) -> dict[str, float]:
    """``/proc/loadavg`` -> ``{"1m", "5m", "15m"}``."""
    one, five, fifteen = (float(x) for x in text.split()[:3])
    return {"1m": one, "5m": five, "15m": fifteen}


def parse_meminfo(text: str) -> dict[str, Any]:
    """``/proc/meminfo`` -> total/available bytes and used percentage."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[key.strip()] = int(fields[0])
    total = kib.get("MemTotal", 0) * 1024
    if "MemAvailable" in kib:
        available = kib["MemAvailable"] * 1024
    else:  # kernels before 3.14
        available = sum(kib.get(k, 0) for k in ("MemFree", "Buffers", "Cached")) * 1024
    return {
        "total_bytes": total,
        "available_bytes": available,
        "used_percent": _percent(total - available, total),
    }


def parse_stat(text: str) -> dict[str, Any]:
    """``/proc/stat`` -> CPU count and aggregate jiffies since boot."""
    count = 0
    jiffies: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            values = [int(v) for v in fields[1 : 1 + len(_CPU_FIELDS)]]
            jiffies = dict(zip(_CPU_FIELDS, values, strict=False))
        elif re.fullmatch(r"cpu\d+", fields[0]):
            count += 1
    total = sum(jiffies.values())
    idle = jiffies.get("idle", 0) + jiffies.get("iowait", 0)
    return {
        "count": count,
        "jiffies": jiffies,
        "busy_percent_since_boot": _percent(total - idle, total),
    }


def parse_uptime(text: str) -> float:
    """``/proc/uptime`` -> seconds since boot."""
    return float(text.split()[0])


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[str]:
    """``/proc/mounts`` -> mount points of real filesystems, in order.

    Pseudo filesystems are skipped, except that an overlay (or any type)
    mounted on ``/`` is kept: inside a container it is the root disk.
    Repeated mount points are listed once.
    """
    seen: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount, fstype = _unescape_mount(fields[1]), fields[2]
        if fstype in PSEUDO_FS_TYPES and mount != "/":
            continue
        if mount not in seen:
            seen.append(mount)
    return seen


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/dev`` -> ``{iface: {"rx_bytes", "tx_bytes"}}``."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9:
            continue
        out[name.strip()] = {"rx_bytes": int(fields[0]), "tx_bytes": int(fields[8])}
    return out


def disk_usage(
    mount: str, statvfs: Callable[[str], os.statvfs_result] = os.statvfs
) -> dict[str, Any]:
    """Usage of the filesystem at ``mount``, computed like ``df``.

    ``free_bytes`` is what unprivileged users can still write; the percentage
    excludes root-reserved blocks, as ``df`` does.
    """
    st = statvfs(mount)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return {
        "mount": mount,
        "total_bytes": total,
        "free_bytes": free,
        "used_percent": _percent(used, used + free),
    }


def system_health(
    proc: str = "/proc",
    mounts: Iterable[str] | None = None,
    *,
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
) -> dict[str, Any]:
    """Snapshot of load, memory, CPU, uptime, disks and network counters.

    ``mounts`` lists the mount points to report; by default the real
    filesystems of ``<proc>/mounts``. A section that cannot be read is
    ``None`` (and an unreadable mount is left out) rather than failing the
    whole snapshot.
    """

    def section(name: str, parse: Callable[[str], Any]) -> Any:
        try:
            return parse(read_text(os.path.join(proc, name)))
        except (OSError, ValueError, IndexError):
            return None

    if mounts is None:
        mounts = section("mounts", parse_mounts) or []
    disks = []
    for mount in mounts:
        try:
            disks.append(disk_usage(mount, statvfs))
        except OSError:
            continue  # e.g. a stale network mount or no permission
    return {
        "load": section("loadavg", parse_loadavg),
        "memory": section("meminfo", parse_meminfo),
        "cpu": section("stat", parse_stat),
        "uptime_seconds": section("uptime", parse_uptime),
        "disk": disks,
        "network": section("net/dev", parse_net_dev),
    }
