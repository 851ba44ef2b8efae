"""relay-ray: relay environment servers as Ray actors, one ``VectorEnv`` for the learner.

    import relay_ray

    with relay_ray.ActorPool("CartPole-v1", num_actors=4, placement="SPREAD") as pool:
        envs = pool.make_vec()          # a gymnasium.vector.VectorEnv of 4 sub-envs
        obs, infos = envs.reset(seed=0)

Ray places, restarts and tears down the actors; relay's transports move the
steps (``shm://`` on the learner's node, ``tcp://`` elsewhere).  The ``relay
ray`` command (:mod:`relay_ray.cli`) is registered through the ``relay``
entry point (:mod:`relay_ray.hooks`).
"""

from relay_ray.pool import PLACEMENTS, ActorPool, PoolNotFound, lookup

__version__ = "0.1.0"

__all__ = ["PLACEMENTS", "ActorPool", "PoolNotFound", "lookup"]
