"""The relay command, run as a user would: separate processes."""

import csv
import re
import subprocess
import sys

import pytest

RELAY = [sys.executable, "-m", "relay"]


def run(*args, timeout=60):
    return subprocess.run([*RELAY, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_demo_serves_in_a_background_process_and_drives_it():
    result = run("demo", "--episodes", "2")
    assert result.returncode == 0, result.stderr
    assert "serving CartPole-v1 on zmq+ipc://" in result.stdout
    assert len(re.findall(r"episode \d: return \d+", result.stderr + result.stdout)) == 2
    assert re.search(r"[\d,]+ steps/s", result.stdout)


def test_serve_and_run_across_processes():
    server = subprocess.Popen([*RELAY, "serve", "CartPole-v1", "--url", "zmq+tcp://127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        url = line.rsplit(" on ", 1)[1].strip()
        assert re.match(r"zmq\+tcp://127\.0\.0\.1:\d+$", url) and not url.endswith(":0")
        result = run("run", url, "--episodes", "3", "--seed", "5")
        assert result.returncode == 0, result.stderr
        assert "steps/s" in result.stdout
    finally:
        server.terminate()
        server.wait(10)


def test_run_against_nobody_is_a_clear_error(free_port):
    result = run("run", f"zmq+tcp://127.0.0.1:{free_port}?connect_timeout=1")
    assert result.returncode != 0
    assert "ConnectError" in result.stderr and "Traceback" not in result.stderr


def test_unknown_scheme_suggests(free_port):
    result = run("run", "zqm+tcp://127.0.0.1:1")
    assert result.returncode != 0 and "did you mean 'zmq+tcp'" in result.stderr


@pytest.mark.parametrize("scheme", ["memory", "zmq+tcp", "zmq+ipc"])
def test_plugins_lists_schemes_and_providers(scheme):
    result = run("plugins")
    assert result.returncode == 0
    assert re.search(rf"{re.escape(scheme)}://\s+\S+\s+relay-rl", result.stdout)
    assert re.search(r"msgpack\s+\S+\s+relay-rl", result.stdout)


def test_serve_reports_bad_url():
    result = run("serve", "CartPole-v1", "--url", "zmq+tcp://127.0.0.1:notaport")
    assert result.returncode != 0 and "InvalidURL" in result.stderr



def test_remote_error_is_one_clear_line():
    server = subprocess.Popen([*RELAY, "serve", "--url", "zmq+tcp://127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True)
    try:
        url = server.stderr.readline().rsplit(" on ", 1)[1].strip()
        result = run("run", url, "--episodes", "1")  # no --env: this server needs one
        assert result.returncode != 0
        assert "RemoteError" in result.stderr and "needs an env_id" in result.stderr
        assert "Traceback" not in result.stderr
        result = run("run", url, "--env", "MountainCarContinuous-v0", "--episodes", "1")
        assert result.returncode == 0, result.stderr
    finally:
        server.terminate()
        server.wait(10)


def test_bench_prints_and_writes_the_rows_asked_for(tmp_path):
    result = run("bench", "--only", "in-process,layers,relay tcp", "--payloads", "S",
                 "--steps", "30", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    (csv_file,) = tmp_path.glob("bench-*.csv")
    with csv_file.open() as f:
        rows = {row["case"] for row in csv.DictReader(f)}
    # the relay rows plus the baseline they are read against
    assert {"in-process", "relay layers, no transport", "relay tcp://",
            "raw pyzmq tcp"} <= rows
    assert "relay layers, no transport" in result.stdout
