"""twistd with a larger listen backlog: ``python -m bench.twistd_backlog BACKLOG twistd-args...``

A bench-only experiment. ``viworks.net.listen_service`` uses Twisted's default listen
backlog of 50; a connect storm overflows it (the kernel drops SYNs/ACKs and clients retry
after 1, 3, 7... s). This wrapper raises the backlog of every TCP server endpoint before
twistd builds the service, to show what passing ``backlog=`` in ``listen_service`` gives.
"""

import os
import socket
import sys

from twisted.internet import endpoints

BACKLOG = int(sys.argv.pop(1))
_init = endpoints.TCP4ServerEndpoint.__init__


def _with_backlog(self, reactor, port, backlog=50, interface=""):
    _init(self, reactor, port, max(backlog, BACKLOG), interface)


endpoints.TCP4ServerEndpoint.__init__ = _with_backlog

if os.environ.get("BENCH_NODELAY"):
    # Experiment: TCP_NODELAY on every accepted socket (the agents' WebSockets included).
    from twisted.internet import tcp

    _server_init = tcp.Server.__init__

    def _nodelay(self, *args, **kwargs):
        _server_init(self, *args, **kwargs)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    tcp.Server.__init__ = _nodelay

from twisted.scripts.twistd import run  # noqa: E402

run()
