"""Hooks: the registry, the built-in hooks and the native-plugin adapter (docs/hooks.md)."""
