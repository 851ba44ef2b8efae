"""A remote env behaves like the local one: the same behaviour run side by side
on a local env or Gymnasium's SyncVectorEnv and on relay's, over shm and zmq,
agreeing in values and in exception types."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import WrapperSpec
from gymnasium.utils.env_match import check_environments_match
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

import relay
from relay.testing import FaultyEnv, check_env_as_local


@pytest.fixture
def serve(serve_shm_zmq):
    return serve_shm_zmq


def factory(cls, *args):
    return lambda env_id=None, **kwargs: cls(*args)


def raised(call):
    """The exception ``call()`` raises."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


# -- 1. exception types --------------------------------------------------------------------

class Picky(FaultyEnv):
    """Raises what ``options["raise"]`` names on reset."""

    def reset(self, *, seed=None, options=None):
        errors = {"value": ValueError("bad option"), "key": KeyError("missing"),
                  "os": FileNotFoundError(2, "no such file"),
                  "gym": gym.error.ResetNeeded("reset first"),
                  "own": type("OwnError", (Exception,), {})("an env's own type")}
        if options and "raise" in options:
            raise errors[options["raise"]]
        return super().reset(seed=seed)


@pytest.mark.parametrize(("option", "standard"), [
    ("value", ValueError), ("key", KeyError), ("os", FileNotFoundError),
    ("gym", gym.error.ResetNeeded)])
def test_an_envs_exception_is_catchable_as_its_own_standard_type(serve, option, standard):
    local = Picky()
    server = serve(factory(Picky))
    with relay.make(server.address) as remote:
        for env in (local, remote):
            with pytest.raises(standard):
                env.reset(options={"raise": option})
        error = raised(lambda: remote.reset(options={"raise": option}))
        assert isinstance(error, relay.RemoteEnvError)
        assert type(error) is type(raised(lambda: remote.reset(options={"raise": option})))
        remote.reset()  # the server keeps serving


def test_an_envs_own_exception_type_is_never_imported(serve):
    server = serve(factory(Picky))
    with relay.make(server.address) as remote:
        error = raised(lambda: remote.reset(options={"raise": "own"}))
        assert type(error) is relay.RemoteEnvError and "OwnError" in error.remote_type


def test_an_action_outside_the_space_is_gymnasiums_invalid_action(serve):
    server = serve("CartPole-v1")
    with relay.make(server.address) as remote:
        remote.reset(seed=0)
        with pytest.raises(gym.error.InvalidAction):
            remote.step(7)
        with pytest.raises(ValueError):
            remote.step(7)


def test_step_before_reset_is_gymnasiums_reset_needed(serve):
    server = serve("CartPole-v1")
    local = gym.make("CartPole-v1")  # OrderEnforcing
    with relay.make(server.address) as remote:
        for env in (local, remote):
            with pytest.raises(gym.error.ResetNeeded):
                env.step(0)


def test_vector_sub_envs_with_different_spaces_raise_runtime_error(serve):
    cartpole, car = serve("CartPole-v1"), serve("MountainCar-v0")
    with pytest.raises(RuntimeError):
        SyncVectorEnv([lambda: gym.make("CartPole-v1"), lambda: gym.make("MountainCar-v0")])
    with pytest.raises(RuntimeError):
        relay.make_vec([cartpole.address, car.address], num_envs=2)
    batched = [serve("CartPole-v1", num_envs=1), serve("MountainCar-v0", num_envs=1)]
    with pytest.raises(RuntimeError):  # servers hosting vector instances
        relay.make_vec([server.address for server in batched])


def test_reset_after_close_raises_closed_environment_error(serve):
    server = serve("CartPole-v1")
    local = AsyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    remote = relay.make_vec(server.address, num_envs=2)
    batched = relay.make_vec(serve("CartPole-v1", num_envs=2).address)
    single = relay.make(server.address)
    for env in (local, remote, batched, single):
        env.close()
        with pytest.raises(gym.error.ClosedEnvironmentError):
            env.reset()


# -- 2. seeding state ----------------------------------------------------------------------

def test_vector_seeding_state_agrees(serve):
    server = serve("CartPole-v1")
    local = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    remote = relay.make_vec(server.address, num_envs=2)
    try:
        assert len(set(remote.np_random_seed)) == len(set(local.np_random_seed)) == 2
        for envs in (local, remote):
            envs.reset(seed=42)
        assert remote.np_random_seed == local.np_random_seed == (42, 43)
        assert [g.bit_generator.state for g in remote.np_random] == \
            [g.bit_generator.state for g in local.np_random]
    finally:
        local.close()
        remote.close()


def test_check_env_checks_the_served_envs_seeding(serve):
    server = serve("CartPole-v1")
    with relay.make(server.address) as remote:
        check_env_as_local(remote, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
        remote.reset(seed=123)
        local = gym.make("CartPole-v1").unwrapped
        local.reset(seed=123)
        assert remote.unwrapped._np_random.bit_generator.state == \
            local._np_random.bit_generator.state


# -- 3. specs that re-make -----------------------------------------------------------------

def test_spec_carries_the_served_limits_and_remakes(serve):
    server = serve("CartPole-v1")
    local = gym.make("CartPole-v1")
    with relay.make(server.address, "CartPole-v1") as remote:
        for field in ("max_episode_steps", "reward_threshold", "nondeterministic"):
            assert getattr(remote.spec, field) == getattr(local.spec, field)
        for again in (gym.make(remote.spec), gym.make(remote.spec.id)):
            try:
                assert isinstance(again.unwrapped, relay.RemoteEnv)
                assert again.unwrapped.instance != remote.instance or \
                    again.unwrapped.connection is not remote.connection
                check_environments_match(remote, again, num_steps=60, seed=3)
            finally:
                again.close()


def test_the_token_stays_out_of_the_spec(serve, monkeypatch):
    server = serve("CartPole-v1", token="s3cret")
    for remote in (relay.make(f"{server.address}?token=s3cret"),
                   relay.make(server.address, token="s3cret")):
        with remote:
            assert "s3cret" not in repr(remote.spec)
            with pytest.raises(relay.RelayError, match="token"):
                gym.make(remote.spec)
            monkeypatch.setenv("RELAY_TOKEN", "s3cret")
            gym.make(remote.spec).close()
            monkeypatch.delenv("RELAY_TOKEN")


def test_spec_survives_gymnasium_make(serve):
    server = serve("CartPole-v1")
    env = gym.make("relay/Remote-v0", url=str(server.address), env_id="CartPole-v1")
    try:
        assert env.spec.max_episode_steps == 500 and env.spec.reward_threshold == 475.0
        again = gym.make(env.spec.id)
        again.close()
    finally:
        env.close()


def test_time_aware_observation_on_a_remote_env(serve):
    server = serve("CartPole-v1")
    local = gym.wrappers.TimeAwareObservation(gym.make("CartPole-v1"))
    with relay.make(server.address) as remote:
        wrapped = gym.wrappers.TimeAwareObservation(remote)
        assert wrapped.observation_space == local.observation_space
        check_environments_match(local, wrapped, num_steps=40, seed=5)


# -- 4. server-side wrappers ---------------------------------------------------------------

def test_server_side_wrappers_equal_the_same_wrappers_locally(serve):
    server = serve("CartPole-v1")
    local = gym.make("CartPole-v1")
    local = gym.wrappers.FrameStackObservation(gym.wrappers.TimeAwareObservation(local), 3)
    wrappers = [gym.wrappers.TimeAwareObservation,
                WrapperSpec("FrameStackObservation",
                            "gymnasium.wrappers:FrameStackObservation", {"stack_size": 3})]
    with relay.make(server.address, wrappers=wrappers) as remote:
        assert remote.observation_space == local.observation_space
        check_environments_match(local, remote, num_steps=40, seed=9)
        with gym.make(remote.spec) as again:  # the wrappers travel in the spec
            assert again.observation_space == local.observation_space


def test_a_local_envs_additional_wrappers_run_on_the_server(serve):
    server = serve("CartPole-v1")
    local = gym.wrappers.ClipReward(gym.make("CartPole-v1"), 0.0, 0.5)
    with relay.make(server.address, wrappers=local.spec.additional_wrappers) as remote:
        remote.reset(seed=0)
        assert remote.step(0)[1] == 0.5


def test_wrappers_the_server_does_not_allow_are_refused(serve, tmp_path):
    server = serve("CartPole-v1")
    refused = WrapperSpec("RecordVideo", "gymnasium.wrappers:RecordVideo",
                          {"video_folder": str(tmp_path)})
    with pytest.raises(relay.NotAllowed, match="allow_wrappers.*--allow-wrapper"):
        relay.make(server.address, wrappers=[refused])
    with pytest.raises(relay.NotAllowed, match="os:system"):
        relay.make(server.address, wrappers=[{"entry_point": "os:system"}])
    assert not list(tmp_path.iterdir())
    allowing = serve("CartPole-v1", allow_wrappers=["relay.testing:ScaleReward"])
    with relay.make(allowing.address, wrappers=[{"entry_point": "relay.testing:ScaleReward",
                                                  "kwargs": {"scale": 3.0}}]) as remote:
        remote.reset(seed=0)
        assert remote.step(0)[1] == 3.0


@pytest.mark.slow
def test_atari_preprocessing_runs_where_the_env_is(serve):
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    server = serve("ALE/Pong-v5")
    kwargs = {"frameskip": 1}
    spec = WrapperSpec("AtariPreprocessing", "gymnasium.wrappers:AtariPreprocessing",
                       {"noop_max": 0, "frame_skip": 4, "screen_size": 84})
    local = gym.wrappers.AtariPreprocessing(gym.make("ALE/Pong-v5", **kwargs), noop_max=0)
    with relay.make(server.address, wrappers=[spec], **kwargs) as remote:
        with pytest.raises(ValueError, match="frame-skipping"):  # it reads unwrapped._frameskip
            gym.wrappers.AtariPreprocessing(remote, noop_max=0)
        assert remote.observation_space == local.observation_space  # (84, 84) uint8
        check_environments_match(local, remote, num_steps=50, seed=2)


# -- 5. observation modes ------------------------------------------------------------------

class Bounded(FaultyEnv):
    def __init__(self, high):
        self.observation_space = gym.spaces.Box(0, high, (1,), np.float32)


def test_observation_mode_different(serve):
    low, high = serve(factory(Bounded, 10)), serve(factory(Bounded, 1000))
    local = SyncVectorEnv([lambda: Bounded(10), lambda: Bounded(1000)],
                          observation_mode="different")
    remote = relay.make_vec([low.address, high.address], num_envs=2,
                            observation_mode="different")
    try:
        assert remote.observation_space == local.observation_space
        assert remote.single_observation_space == local.single_observation_space
        for envs in (local, remote):
            envs.reset(seed=0)
        np.testing.assert_array_equal(remote.step(np.array([0, 0]))[0],
                                      local.step(np.array([0, 0]))[0])
        with pytest.raises(RuntimeError):
            relay.make_vec([low.address, high.address], num_envs=2)
    finally:
        local.close()
        remote.close()


def test_invalid_observation_modes_raise_as_in_gymnasium(serve):
    server = serve("CartPole-v1")
    for mode, error in (("mixed", ValueError), ((1, 2), TypeError)):
        with pytest.raises(error):
            SyncVectorEnv([lambda: gym.make("CartPole-v1")], observation_mode=mode)
        with pytest.raises(error):
            relay.make_vec(server.address, num_envs=1, observation_mode=mode)


# -- 6. malformed env returns --------------------------------------------------------------

class Malformed(FaultyEnv):
    """step returns a 4-tuple (action 0) or a string (other actions)."""

    def step(self, action):
        if action == 0:
            return np.zeros(1, np.float32), 1.0, False, {}
        return "not a tuple"


@pytest.mark.parametrize(("action", "described"), [(0, "a tuple of 4"), (2, "a str")])
def test_a_malformed_step_return_names_the_envs_mistake(serve, action, described):
    server = serve(factory(Malformed))
    local = Malformed()
    local.reset()
    with pytest.raises(ValueError):  # what unpacking it locally raises
        obs, reward, terminated, truncated, info = local.step(action)
    with relay.make(server.address) as remote:
        remote.reset()
        with pytest.raises(ValueError, match=rf"step\(\) returned {described}.*"
                                             r"\(obs, reward, terminated, truncated, info\)"):
            remote.step(action)


def test_a_process_that_never_imported_relay_makes_it_through_gymnasium(serve):
    import subprocess
    import sys

    server = serve("CartPole-v1")
    code = ("import sys, gymnasium as gym\n"
            "assert 'relay' not in sys.modules\n"
            f"env = gym.make('relay:relay/Remote-v0', url={str(server.address)!r},"
            " env_id='CartPole-v1')\n"
            "obs, info = env.reset(seed=0)\n"
            "print(env.spec.max_episode_steps, obs.shape)\n"
            "env.close()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["500", "(4,)"]
