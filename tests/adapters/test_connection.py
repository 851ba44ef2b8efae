"""ClientConnection's submit/receive: several requests in flight on one connection,
over a real transport (zmq+tcp) and the in-process one."""

import time

import gymnasium as gym
import numpy as np
import pytest

import relay
from relay.connection import ClientConnection
from relay.core.config import resolve_settings
from relay.core.errors import CodecError, InvalidAction
from relay.core.messages import Made, Make, Observation, Reset, Step, Transition
from relay.core.url import make_url


@pytest.fixture(params=["memory://0", "zmq+tcp://127.0.0.1:0"])
def connection(request):
    server = relay.serve("CartPole-v1", request.param)
    url = make_url(server.address)
    conn = ClientConnection.open(url, resolve_settings(url))
    yield conn
    conn.close()
    server.close()


def make_and_reset(conn, seed=0):
    made = conn.call(Make())
    assert isinstance(made, Made)
    obs = conn.call(Reset(instance=made.instance, seed=seed))
    assert isinstance(obs, Observation)
    return made.instance, obs.obs


def test_answers_received_in_any_order_go_to_their_own_request(connection):
    a, obs_a = make_and_reset(connection, seed=1)
    b, obs_b = make_and_reset(connection, seed=2)
    assert not np.array_equal(obs_a, obs_b)
    reset_a = connection.submit(Reset(instance=a, seed=1))
    reset_b = connection.submit(Reset(instance=b, seed=2))
    # b's answer arrives second but is asked for first: a's is kept for later
    assert np.array_equal(connection.receive(reset_b).obs, obs_b)
    assert np.array_equal(connection.receive(reset_a).obs, obs_a)


def test_steps_in_flight_match_a_local_env(connection):
    instance, obs = make_and_reset(connection, seed=3)
    local = gym.make("CartPole-v1")
    assert np.array_equal(local.reset(seed=3)[0], obs)
    actions = [0, 1, 1, 0, 1]
    sent = [connection.submit(Step(instance=instance, action=a)) for a in actions]
    for pending, action in zip(sent, actions, strict=True):
        answer = connection.receive(pending)
        assert isinstance(answer, Transition)
        assert np.array_equal(answer.obs, local.step(action)[0])


def test_an_error_answer_raises_at_its_own_receive(connection):
    instance, _ = make_and_reset(connection)
    bad = connection.submit(Step(instance=instance, action=7))
    good = connection.submit(Step(instance=instance, action=1))
    assert isinstance(connection.receive(good), Transition)
    with pytest.raises(InvalidAction):
        connection.receive(bad)


def test_an_action_that_cannot_be_encoded_leaves_the_connection_usable(connection):
    instance, _ = make_and_reset(connection)
    with pytest.raises(CodecError):
        connection.submit(Step(instance=instance, action=object()))
    assert isinstance(connection.call(Step(instance=instance, action=0)), Transition)


def test_box_actions_are_taken_as_a_local_env_takes_them():
    server = relay.serve("MountainCarContinuous-v0", "memory://0")
    remote = relay.make(server.address)
    local = gym.make("MountainCarContinuous-v0")
    try:
        remote.reset(seed=5)
        local.reset(seed=5)
        # float64, out of bounds (the env clips), a plain list: all fine locally
        for action in (np.array([0.5]), np.array([3.0], np.float32), [-0.25], np.array([1], int)):
            got, want = remote.step(action), local.step(action)
            assert np.array_equal(got[0], want[0]) and got[1] == want[1]
        for action in (np.array([[0.5]]), np.array(["a"]), [[1.0], [1.0, 2.0]], 0.5):
            with pytest.raises(InvalidAction, match="is not in Box"):
                remote.step(action)
    finally:
        remote.close()
        local.close()
        server.close()


def test_an_answer_that_came_in_time_is_taken_even_when_read_late(connection):
    instance, _ = make_and_reset(connection)
    first = connection.submit(Step(instance=instance, action=1), timeout=0.5)
    second = connection.submit(Step(instance=instance, action=0), timeout=0.5)
    time.sleep(0.7)  # both answers are here; both deadlines have passed
    assert isinstance(connection.receive(second), Transition)
    assert isinstance(connection.receive(first), Transition)
    assert connection.session.dropped == 0


def test_remote_envs_sharing_a_connection():
    server = relay.serve("CartPole-v1", "memory://0")
    owner = relay.make(server.address)
    guest = relay.make(server.address, connection=owner.connection)
    try:
        assert guest.connection is owner.connection and guest.instance != owner.instance
        assert not np.array_equal(owner.reset(seed=1)[0], guest.reset(seed=2)[0])
        guest.close()  # its instance goes, the shared connection stays open
        assert not owner.connection.closed
        assert isinstance(owner.step(0)[0], np.ndarray)
    finally:
        owner.close()
        server.close()
    assert owner.connection.closed


class CounterEnv(gym.Env):
    """Observation: a 64x64 uint8 image (out of band: 4 KiB) filled with the step count."""

    observation_space = gym.spaces.Box(0, 255, (64, 64), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return np.zeros((64, 64), np.uint8), {}

    def step(self, action):
        self.count += 1
        return np.full((64, 64), self.count, np.uint8), 0.0, False, False, {}


def counter_factory(env_id, **kwargs):
    return CounterEnv()


def test_zero_copy_answers_kept_for_later_are_not_overwritten():
    server = relay.serve(counter_factory, "shm://0")
    url = make_url(server.address).with_options(zero_copy="1")
    conn = ClientConnection.open(url, resolve_settings(url))
    try:
        instance, _ = make_and_reset(conn)
        first = conn.submit(Step(instance=instance, action=0))
        second = conn.submit(Step(instance=instance, action=0))
        assert conn.receive(second).obs[0, 0] == 2  # the first answer is kept aside
        assert conn.call(Step(instance=instance, action=0)).obs[0, 0] == 3  # more recvs
        assert (conn.receive(first).obs == 1).all()
    finally:
        conn.close()
        server.close()


class EndsAtTwoEnv(CounterEnv):
    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, reward, self.count == 2, truncated, info


def test_zero_copy_vector_env_keeps_final_observations_through_same_step_resets():
    # SAME_STEP resets the ended sub-envs before returning: those answers must not
    # land on the (zero-copy) step answers whose observations are still in use
    server = relay.serve(lambda env_id, **kwargs: EndsAtTwoEnv(), "shm://0")
    envs = relay.make_vec(server.address, num_envs=3, zero_copy=True,
                          autoreset_mode="SameStep")
    try:
        envs.reset(seed=0)
        envs.step(np.zeros(3, np.int64))
        obs, _, terminated, _, infos = envs.step(np.zeros(3, np.int64))
        assert terminated.all() and (obs == 0).all()
        assert all((final == 2).all() for final in infos["final_obs"])
    finally:
        envs.close()
        server.close()
