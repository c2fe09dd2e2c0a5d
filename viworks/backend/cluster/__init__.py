"""What lets several backend replicas work as one (issue 15).

PostgreSQL stays the only source of truth; the bus (``bus.Bus``: Redis today,
``redisbus.RedisBus``) only speeds things up: routing and control messages between
replicas, and one event stream with global ids for Server-Sent Events. Nothing may
depend on a bus message arriving: every message is an accelerator of something a
PostgreSQL poll would also find.
"""
