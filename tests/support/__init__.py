"""Test-only helpers (imported as `support`)."""
