"""Codecs: :class:`~relay.core.messages.Envelope` ⇄ list of frames (bytes-like buffers).

Built-ins: ``msgpack`` (default; large arrays as separate frames) and ``json``
(one UTF-8 text frame; debuggable, any language).  Look one up by name with
:func:`relay.core.plugins.get_codec`.
"""

from relay.codecs.base import Buffer, Codec

__all__ = ["Buffer", "Codec"]
