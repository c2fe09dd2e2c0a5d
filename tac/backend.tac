# twistd application file for the ViWorkS backend, an alternative to the twistd plugin:
#
#   VIWORKS_CONFIG=/etc/viworks/backend.toml twistd --nodaemon --pidfile= -y tac/backend.tac
#
# (from a checkout, add PYTHONPATH=. so that viworks is importable).
# Everything else (listeners, logging level, storage) comes from the TOML configuration.
import os
import sys

from twisted.application import service

path = os.environ.get("VIWORKS_CONFIG", "").strip()
if not path:
    sys.exit(
        "tac/backend.tac: set VIWORKS_CONFIG to the configuration file,"
        " e.g. VIWORKS_CONFIG=/etc/viworks/backend.toml"
    )

from viworks.backend.tap import makeService  # noqa: E402 (after the check)

options = {"config": path}
application = service.Application("viworks-backend")
makeService(options).setServiceParent(application)
