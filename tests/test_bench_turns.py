"""The bench's turns: a system's processes have ended before another system's turn."""

from bench.run import Launch, launch_spec, protocol_suites


def test_the_last_turn_returns_once_every_process_has_ended():
    base = {"system": "cotrain", "transport": "zmq", "protocol": protocol_suites()["dealer"], "suite": "dealer"}
    spec, world = launch_spec(base, ["W1"], None)
    spec.update(repeats={"W1": 1}, sizes={"W1": 1000})
    launch = Launch("cotrain-zmq-dealer", spec, world)
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
