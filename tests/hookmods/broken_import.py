"""Fails on import, for tests/test_hooks_builtin.py."""

raise RuntimeError("broken on purpose")
