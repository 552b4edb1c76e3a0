"""Test helpers other engineers can reuse: a scripted OpenAI-compatible server and agent scripts
(`python -m taskforge.testing` serves one standalone)."""
