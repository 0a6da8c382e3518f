"""Test tooling: locally generated OCI images and real registry peers on loopback."""
