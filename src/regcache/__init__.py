"""regcache: a pull-through caching OCI registry."""

__version__ = "0.1.0"
