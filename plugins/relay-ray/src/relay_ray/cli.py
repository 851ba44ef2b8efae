"""``relay ray``: serve an environment as a pool of Ray actors and print its URLs.

Registered as a ``relay`` subcommand by :mod:`relay_ray.hooks`; Ray is imported
only when a subcommand runs.  The printed URLs (one line per actor, on
stdout) are for agents written against the plain ``relay.make_vec``::

    relay ray serve CartPole-v1 --actors 4 --address auto
    python -c "import relay; envs = relay.make_vec([...the URLs...], num_envs=4)"
"""

from __future__ import annotations

import time
from typing import Any

import click

_PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # relay_ray.PLACEMENTS


def _connect(address: str | None, namespace: str | None) -> None:
    import ray

    ray.init(address=address, namespace=namespace, log_to_driver=False)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(f"{type(exc).__name__}: {exc}")


@click.group(name="ray")
def ray_group() -> None:
    """Environment servers as Ray actors on a cluster (relay-ray)."""


@ray_group.command()
@click.argument("env_id")
@click.option("--actors", type=click.IntRange(min=1), required=True, help="Number of actors.")
@click.option("--num-envs-per-actor", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--address", default=None,
              help="Ray cluster to join ('auto', HOST:PORT; default: RAY_ADDRESS, else a "
              "cluster started on this machine, else a new local one).")
@click.option("--num-cpus", type=float, default=1, show_default=True, help="CPUs per actor.")
@click.option("--num-gpus", type=float, default=0, show_default=True, help="GPUs per actor.")
@click.option("--resource", "resources", multiple=True, metavar="NAME=AMOUNT",
              help="A custom Ray resource per actor (repeatable).")
@click.option("--placement", type=click.Choice(_PLACEMENTS), default=None,
              help="Place the actors with a placement group of this strategy.")
@click.option("--transport", default="tcp", show_default=True,
              help="'auto' (shm:// for actors on this node), 'shm', or a network scheme.")
@click.option("--name", default=None, help="Name the pool (relay ray urls/stop NAME).")
@click.option("--namespace", default=None, help="Ray namespace of a named pool.")
@click.option("--detached", is_flag=True,
              help="Leave the pool running after printing its URLs (needs --name).")
@click.option("--max-restarts", type=int, default=0, show_default=True)
@click.option("--token", default=None, envvar="RELAY_TOKEN", help="Shared secret clients send.")
def serve(env_id: str, actors: int, num_envs_per_actor: int, address: str | None,
          num_cpus: float, num_gpus: float, resources: tuple[str, ...], placement: str | None,
          transport: str, name: str | None, namespace: str | None, detached: bool,
          max_restarts: int, token: str | None) -> None:
    """Serve ENV_ID on --actors Ray actors; print one URL per actor, serve until interrupted."""
    import relay
    from relay_ray import ActorPool

    custom: dict[str, Any] = {}
    for item in resources:
        key, sep, amount = item.partition("=")
        try:
            custom[key] = float(amount) if sep else 1.0
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=AMOUNT",
                                     param_hint="--resource") from None
    _connect(address, namespace)
    try:
        pool = ActorPool(env_id, actors, num_envs_per_actor, num_cpus=num_cpus,
                         num_gpus=num_gpus, resources=custom, placement=placement, name=name,
                         namespace=namespace, lifetime="detached" if detached else None,
                         max_restarts=max_restarts, transport=transport, token=token)
    except relay.RelayError as exc:
        raise _fail(exc) from exc
    for url in pool.urls:
        click.echo(url)
    if detached:
        click.echo(f"relay ray: pool {name!r} keeps running; `relay ray stop {name}` ends it",
                   err=True)
        return
    click.echo(f"relay ray: serving {env_id} on {actors} actors; Ctrl-C stops", err=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        pool.close()


@ray_group.command()
@click.argument("name")
@click.option("--address", default=None, help="Ray cluster to join (as for serve).")
@click.option("--namespace", default=None)
def urls(name: str, address: str | None, namespace: str | None) -> None:
    """Print the URLs of the named pool NAME, one per actor."""
    import relay
    from relay_ray import lookup

    _connect(address, namespace)
    try:
        for url in lookup(name, namespace).urls:
            click.echo(url)
    except relay.RelayError as exc:
        raise _fail(exc) from exc


@ray_group.command()
@click.argument("name")
@click.option("--address", default=None, help="Ray cluster to join (as for serve).")
@click.option("--namespace", default=None)
def stop(name: str, address: str | None, namespace: str | None) -> None:
    """Close the named pool NAME (its servers, actors and placement group)."""
    import relay
    from relay_ray import lookup

    _connect(address, namespace)
    try:
        lookup(name, namespace).close()
    except relay.RelayError as exc:
        raise _fail(exc) from exc
    click.echo(f"relay ray: pool {name!r} closed", err=True)
