"""Runnable programs built on callkit's public API (see samples/README.md)."""
