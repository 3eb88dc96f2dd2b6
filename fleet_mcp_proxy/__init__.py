"""fleet-mcp-proxy: one MCP endpoint in front of per-episode environment instances."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleet-mcp-proxy")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
