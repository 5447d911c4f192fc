"""Backends turn lease events into data-plane state; one module each, looked up by name."""
