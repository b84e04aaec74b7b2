"""trio-gateway: a self-hosted AI gateway on Trio."""

__version__ = "0.1.0"
