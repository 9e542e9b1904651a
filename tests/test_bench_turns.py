"""The bench's turns: a system's processes have ended before another system's turn, and have
all started before the first."""

import time

from bench.run import Launch, launch_spec, protocol_suites, run_together


def _launch(suite: str) -> Launch:
    base = {"system": "cotrain", "transport": "zmq", "protocol": protocol_suites()[suite], "suite": suite}
    spec, world = launch_spec(base, ["W1"], None)
    spec.update(repeats={"W1": 1}, sizes={"W1": 1000})
    return Launch(f"cotrain-zmq-{suite}", spec, world)


def test_the_last_turn_returns_once_every_process_has_ended():
    launch = _launch("dealer")
    world = launch.world
    try:
        assert launch.phases == 2  # W1's setup and its one repeat
        assert launch.take_turn(120.0)
        assert any(process.poll() is None for process in launch.processes)  # still up between turns
        assert launch.take_turn(120.0)
        # the parties and the dealer have closed their sessions and exited, cleanly
        assert [process.poll() for process in launch.processes] == [0] * world
        cell = launch.finish()
        assert sorted(cell) == [0, 1, 2] and "wall" in cell[0]["results"]["W1"]["samples"][0]
    finally:
        launch.kill()


def test_the_first_turn_waits_until_every_systems_processes_have_started():
    first, second = _launch("tfp"), _launch("dealer")
    try:
        run_together([first, second], 120.0, time.monotonic() + 300.0)
        first_go = (first.folder / "go-1").stat().st_mtime
        readies = sorted(second.folder.glob("ready-*"))
        assert [path.name for path in readies] == [f"ready-{rank}" for rank in range(second.world)]  # the dealer too
        assert max(path.stat().st_mtime for path in readies) <= first_go
        assert first.finish()[0]["results"]["W1"]["samples"] and second.finish()[0]["results"]["W1"]["samples"]
    finally:
        first.kill()
        second.kill()
