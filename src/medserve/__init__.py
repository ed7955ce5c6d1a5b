"""medserve: a self-hosted clinical model-as-a-service platform."""

__version__ = "0.1.0"
