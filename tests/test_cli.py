"""The relay command, run as a user would: separate processes."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main

RELAY = [sys.executable, "-m", "relay"]
BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")  # relay_bench, installed or not


def run(*args, timeout=60, cwd=None, env=()):
    path = os.pathsep.join(filter(None, [BENCHMARKS, os.environ.get("PYTHONPATH")]))
    return subprocess.run([*RELAY, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=cwd, env={**os.environ, "PYTHONPATH": path, **dict(env)})


def test_demo_serves_in_a_background_process_and_drives_it():
    result = run("demo", "--episodes", "2")
    assert result.returncode == 0, result.stderr
    assert "serving CartPole-v1 on zmq+ipc://" in result.stdout
    assert len(re.findall(r"episode \d: return \d+", result.stderr + result.stdout)) == 2
    assert re.search(r"[\d,]+ steps/s", result.stdout)


def test_serve_and_run_across_processes():
    server = subprocess.Popen([*RELAY, "serve", "CartPole-v1", "--url", "zmq+tcp://127.0.0.1:0",
                               "--token", "s3cret"], stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        url = line.rsplit(" on ", 1)[1].strip()
        assert re.match(r"zmq\+tcp://127\.0\.0\.1:\d+$", url) and not url.endswith(":0")
        result = run("run", f"{url}?token=s3cret", "--episodes", "3", "--seed", "5")
        assert result.returncode == 0, result.stderr
        assert "steps/s" in result.stdout
        assert "s3cret" not in result.stdout + result.stderr
    finally:
        server.terminate()
        server.wait(10)


def test_run_against_nobody_is_a_clear_error(free_port):
    result = run("run", f"zmq+tcp://127.0.0.1:{free_port}?connect_timeout=1&token=s3cret")
    assert result.returncode != 0
    assert "ConnectError" in result.stderr and "Traceback" not in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


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


def test_bench_batched_rows_give_env_steps_per_second(tmp_path):
    result = run("bench", "--only", "batched CartPole x64 over shm", "--payloads", "S",
                 "--steps", "30", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    (csv_file,) = tmp_path.glob("bench-*.csv")
    with csv_file.open() as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    local, served = (rows[f"batched CartPole x64 {kind}"]
                     for kind in ("local make_vec", "over shm://"))
    assert served["baseline"] == "batched CartPole x64 local make_vec"
    for row in (local, served):  # 64 env steps per timed call
        assert float(row["env_steps_per_s"]) == pytest.approx(64e6 / float(row["median_us"]))
    assert float(rows["in-process"]["env_steps_per_s"]) == pytest.approx(
        1e6 / float(rows["in-process"]["median_us"]))


def test_bench_without_the_harness_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "relay_bench", None)  # as if not installed
    result = CliRunner().invoke(main, ["bench", "--steps", "10"])
    assert result.exit_code == 1
    assert "pip install -e benchmarks" in result.output and "benchmarks/run.py" in result.output


def test_bench_writes_to_the_user_cache_by_default(tmp_path):
    result = run("bench", "--only", "in-process", "--payloads", "S", "--steps", "30",
                 timeout=120, cwd=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "relay" / "bench").glob("bench-*.csv"))) == 1
    assert not (tmp_path / "benchmarks").exists()
