"""The public face of relay: Gymnasium (and dm_env) clients built on the session."""
