"""Tools the proxy answers itself."""
