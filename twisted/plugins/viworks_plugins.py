"""twistd plugins: ``twistd viworks-backend`` and ``twistd viworks-gateway``.

Kept tiny and lazy: nothing here imports the reactor or the package's code.
"""

from twisted.application.service import ServiceMaker

viworks_backend = ServiceMaker(
    "ViWorkS backend",
    "viworks.backend.tap",
    "The ViWorkS control plane: agent WebSocket listener and HTTP API.",
    "viworks-backend",
)
viworks_gateway = ServiceMaker(
    "ViWorkS gateway agent",
    "viworks.gateway.tap",
    "The ViWorkS gateway agent: outbound link to the backend, verb runner, local API.",
    "viworks-gateway",
)
