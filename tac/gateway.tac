# twistd application file for the ViWorkS gateway, an alternative to the twistd plugin:
#
#   VIWORKS_CONFIG=/etc/viworks/agent.toml twistd --nodaemon --pidfile= -y tac/gateway.tac
#
# (from a checkout, add PYTHONPATH=. so that viworks is importable).
# Everything else (listeners, logging level, storage) comes from the TOML configuration.
import os
import sys

from twisted.application import service

path = os.environ.get("VIWORKS_CONFIG", "").strip()
if not path:
    sys.exit(
        "tac/gateway.tac: set VIWORKS_CONFIG to the configuration file,"
        " e.g. VIWORKS_CONFIG=/etc/viworks/agent.toml"
    )

from viworks.gateway.tap import makeService  # noqa: E402 (after the check)

options = {"config": path}
application = service.Application("viworks-gateway")
makeService(options).setServiceParent(application)
