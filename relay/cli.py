"""The ``relay`` command: serve, run, demo, plugins, bench."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any, NoReturn, cast

import click

from relay.core.errors import RelayError, RemoteError
from relay.core.url import make_url, mask_secrets


def _fail(exc: RelayError) -> NoReturn:
    if isinstance(exc, RemoteError):  # the server's traceback is for logs, not the terminal
        detail = f"{exc.remote_type}: {exc.remote_message}" if exc.remote_type \
            else exc.remote_message
        raise click.ClickException(f"{type(exc).__name__}: {detail}")
    raise click.ClickException(f"{type(exc).__name__}: {exc}")


class _Commands(click.Group):
    """relay's own subcommands and those plugins register (``relay_register_commands``:
    a plugin's module is imported only when its command runs)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from relay.core.plugins import commands

        return sorted({*super().list_commands(ctx), *commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        from relay.core.plugins import get_command

        try:
            return cast(click.Command | None, get_command(cmd_name))
        except RelayError as exc:
            _fail(exc)


@click.group(cls=_Commands)
@click.version_option(package_name="relay-rl")
def main() -> None:
    """relay: Gymnasium and dm_env environments across processes, machines and languages."""


def served_env(spec: str | None, env_kwargs: dict[str, Any]) -> Any:
    """What ``relay serve SPEC`` serves, checked now rather than at the first ``Make``.

    * ``module:name`` where ``module`` imports and has a callable ``name``: a
      factory, called per ``Make`` as ``name(**{**env_kwargs, **make_kwargs})``
      (no env id); it may return a Gymnasium env, a ``dm_env.Environment`` or a
      ``gymnasium.vector.VectorEnv``;
    * otherwise a Gymnasium id; ``module:EnvId`` imports ``module`` first (the
      package that registers the id, as ``gymnasium.make`` does), e.g.
      ``ale_py:ALE/Pong-v5``; ``env_kwargs`` go to ``gymnasium.make``;
    * None: any registered id a client names.

    Raises:
        ConfigError: the module does not import, or the id is not registered.
    """
    import importlib

    import gymnasium as gym

    from relay.core.errors import ConfigError
    from relay.server import gymnasium_factory

    if spec is None:
        if env_kwargs:
            raise ConfigError("--env-kwargs needs an env id or factory to apply to")
        return None
    module_name, colon, name = spec.partition(":")
    if colon:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{spec!r}: cannot import {module_name!r}: {exc}") from exc
        target = getattr(module, name, None)
        if callable(target):
            def factory(env_id: str | None, **kwargs: Any) -> Any:
                if env_id not in (None, spec):
                    raise ConfigError(f"this server serves {spec!r} only, not {env_id!r}")
                return target(**{**env_kwargs, **kwargs})

            return factory
    try:
        gym.spec(name if colon else spec)
    except gym.error.Error as exc:
        raise ConfigError(f"{spec!r} is not a registered Gymnasium env id"
                          f"{' nor a callable of ' + repr(module_name) if colon else ''}: "
                          f"{exc}") from exc
    if not env_kwargs:
        return spec
    make = gymnasium_factory(spec)
    return lambda env_id, **kwargs: make(env_id, **{**env_kwargs, **kwargs})


def _write_ready_file(path: str, address: str) -> None:
    """Write ``address`` and a newline to ``path`` atomically (a reader never
    sees half a line)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".relay-ready-")
    with os.fdopen(fd, "w") as file:
        file.write(address + "\n")
    os.replace(tmp, path)


@main.command()
@click.argument("env_id", required=False, metavar="[ENV_ID | MODULE:ENV_ID | MODULE:FACTORY]")
@click.option("--url", default="zmq+tcp://127.0.0.1:5555", show_default=True,
              help="Where to listen (port 0 picks a free port; the real URL is printed).")
@click.option("--env-kwargs", default=None, metavar="JSON",
              help="Keyword arguments (a JSON object) for the factory or gymnasium.make; "
                   "a client's Make kwargs override them.")
@click.option("--ready-file", default=None, type=click.Path(dir_okay=False),
              help="Once listening, write the address and a newline to this file.")
@click.option("--codec", default=None, help="Codec or peer wire format (msgpack, json, ...).")
@click.option("--token", default=None, envvar="RELAY_TOKEN",
              help="Shared secret clients must send.")
@click.option("--num-envs", type=click.IntRange(min=1), default=None,
              help="Host one vector instance of N envs per client (stepped by one message).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Serve from K processes behind the one URL (shm:// and tcp://).")
@click.option("--allow-call", "allow_calls", multiple=True, metavar="NAME",
              help="An env method or attribute clients may call or read (repeatable; "
                   "get_action_meanings, np_random and np_random_seed always may).")
@click.option("--allow-set", "allow_set", multiple=True, metavar="NAME",
              help="An env attribute clients may write (repeatable; np_random always may).")
@click.option("--allow-wrapper", "allow_wrappers", multiple=True, metavar="MODULE:CLASS",
              help="A wrapper clients may have applied on the server (repeatable; "
                   "gymnasium.wrappers always may, but RecordVideo and HumanRendering).")
@click.option("--grace", "shutdown_grace", type=click.FloatRange(min=0), default=None,
              help="Seconds clients get to finish when the server stops (default 5).")
def serve(env_id: str | None, url: str, env_kwargs: str | None, ready_file: str | None,
          codec: str | None, token: str | None,
          num_envs: int | None, workers: int | None, allow_calls: tuple[str, ...],
          allow_set: tuple[str, ...], allow_wrappers: tuple[str, ...],
          shutdown_grace: float | None) -> None:
    """Serve ENV_ID until SIGTERM or Ctrl-C: a Gymnasium id (MODULE:ENV_ID imports
    MODULE first, e.g. ale_py:ALE/Pong-v5), a callable MODULE:FACTORY (a callable
    attribute wins over an id), or, if omitted, any registered id.

    Prints the address on stdout (one line) once listening.  Stopping is
    graceful: clients are told the server closes, their envs are closed, socket
    files removed, and the exit status is 0.
    """
    import json

    import relay

    try:
        kwargs = json.loads(env_kwargs) if env_kwargs else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--env-kwargs") from None
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--env-kwargs")
    try:
        env = served_env(env_id, kwargs)
        server = relay.serve(env, url, codec=codec, token=token, num_envs=num_envs,
                             workers=workers, allow_calls=allow_calls,
                             allow_set=allow_set, allow_wrappers=allow_wrappers,
                             shutdown_grace=shutdown_grace)
    except RelayError as exc:
        _fail(exc)
    address = make_url(server.address)
    click.echo(f"relay: serving {env_id or 'any env'} on {address.render()}", err=True)
    public = str(address.with_options(token=None, password=None))  # secrets stay off stdout
    if ready_file is not None:  # first: who sees the stdout line finds the file too
        _write_ready_file(ready_file, public)
    click.echo(public)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        server.serve_forever()  # until SIGTERM or Ctrl-C: then a graceful shutdown
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        pass
    click.echo("relay: stopped", err=True)


def _run(url: str, env_id: str | None, episodes: int, seed: int | None,
         codec: str | None, env_kwargs: dict[str, Any]) -> None:
    import relay

    try:
        env = relay.make(url, env_id, codec=codec, **env_kwargs)
    except RelayError as exc:
        _fail(exc)
    _drive(env, url, episodes, seed)


def _drive(env: Any, url: str, episodes: int, seed: int | None) -> None:
    """Step ``env`` with random actions for ``episodes`` episodes, then close it."""
    from tqdm import tqdm

    steps = 0
    start = time.perf_counter()
    try:
        env.action_space.seed(seed)
        with tqdm(total=episodes, unit="episode", file=sys.stderr) as bar:
            for episode in range(episodes):
                obs, info = env.reset(seed=None if seed is None else seed + episode)
                episode_return, done = 0.0, False
                while not done:
                    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
                    episode_return += float(reward)
                    steps += 1
                    done = terminated or truncated
                bar.update()
                bar.write(f"episode {episode + 1}: return {episode_return:g}")
    except RelayError as exc:
        _fail(exc)
    finally:
        env.close()
    elapsed = time.perf_counter() - start
    click.echo(f"{steps} steps in {elapsed:.2f} s: {steps / elapsed:,.0f} steps/s "
               f"({1e6 * elapsed / max(steps, 1):.0f} µs per step incl. reset) over "
               f"{mask_secrets(url)}")


@main.command()
@click.argument("url")
@click.option("--env", "env_id", default=None, help="Env id to create on the server.")
@click.option("--episodes", default=3, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--codec", default=None)
def run(url: str, env_id: str | None, episodes: int, seed: int, codec: str | None) -> None:
    """Drive the env at URL with a random agent; print returns and steps/s."""
    _run(url, env_id, episodes, seed, codec, {})


@main.command()
@click.option("--env", "env_id", default="CartPole-v1", show_default=True)
@click.option("--url", default=None, help="Default: zmq+ipc in a temporary directory.")
@click.option("--episodes", default=5, show_default=True, type=int)
def demo(env_id: str, url: str | None, episodes: int) -> None:
    """Serve ENV in a background process (relay.launch) and drive it from this one."""
    import relay

    with tempfile.TemporaryDirectory(prefix="relay-demo-") as tmp:
        try:
            env = relay.launch(env_id, url=url or f"zmq+ipc://{tmp}/relay.sock")
        except RelayError as exc:
            _fail(exc)
        (process,) = env.server_processes
        address = env.url.render()
        click.echo(f"server process {process.pid}: serving {env_id} on {address}")
        _drive(env, address, episodes, 0)


@main.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Median round trip per env.step over every transport vs raw libraries
    (relay bench --help: the options)."""
    try:
        from relay_bench import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name != "relay_bench":
            raise
        raise click.ClickException(
            "relay bench needs the benchmark harness, which is not installed: in a checkout "
            "of relay, `pip install -e benchmarks` (or run `python benchmarks/run.py`)") from None
    sys.exit(bench_main(list(args)))


@main.command()
def plugins() -> None:
    """List transport schemes and codecs, and which distribution provides each."""
    from relay.core import plugins as registry

    click.echo("transports:")
    for name, entry in sorted(registry.transports().items()):
        click.echo(f"  {name + '://':<14} {entry.target:<48} {entry.provider}")
    click.echo("codecs:")
    for name, entry in sorted(registry.codecs().items()):
        click.echo(f"  {name:<14} {entry.target:<48} {entry.provider}")
    click.echo("commands:")
    for name, entry in sorted(registry.commands().items()):
        click.echo(f"  {'relay ' + name:<14} {entry.target:<48} {entry.provider}")
    errors = registry.plugin_errors()
    if errors:
        click.echo("plugins that failed to load:")
        for name, error in sorted(errors.items()):
            click.echo(f"  {name}: {error}")


@main.command()
def cleanup() -> None:
    """Remove shm:// leftovers of dead processes: /dev/shm/relay_* segments and
    semaphores, and rendezvous sockets nobody listens on."""
    from relay.transports.shm import sweep_orphans, sweep_sockets

    removed = sweep_orphans()
    for name in removed:
        click.echo(f"removed /dev/shm/{name}")
    sockets = sweep_sockets()
    for path in sockets:
        click.echo(f"removed {path}")
    click.echo(f"relay cleanup: {len(removed)} orphaned segment(s), "
               f"{len(sockets)} stale socket(s) removed")
