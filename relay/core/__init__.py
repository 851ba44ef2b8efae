"""relay's sans-I/O core: messages, spaces, session, URL, config, plugins, errors.

Nothing in this package opens a socket, starts a thread or reads a clock.
"""
