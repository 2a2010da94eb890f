"""Tests of the Palisade Python SDK against a live palisade-server (and, as root, a live agent)."""
