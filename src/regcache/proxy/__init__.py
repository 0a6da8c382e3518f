"""The pull-through cache: routing names to upstreams, single-flight downloads, tag revalidation."""
