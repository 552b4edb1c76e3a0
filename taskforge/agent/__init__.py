"""Agents: what acts in a sandbox between environment start and verification."""
