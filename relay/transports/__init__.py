"""Transports move frames between two endpoints; see :mod:`relay.transports.base`."""

from relay.transports.base import Channel, Listener, Transport

__all__ = ["Channel", "Listener", "Transport"]
