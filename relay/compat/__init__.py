"""Compatibility with other environment protocols (peers that do not speak relay/1)."""
