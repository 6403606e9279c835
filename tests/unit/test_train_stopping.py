"""`appliance train` stops cleanly on SIGINT or SIGTERM: a checkpoint of the step under way, an
exit status that names the signal, and the same command resumes there.

Real signals to this very process: the run installs its handlers around training and restores
the ones it found, so pytest's own are back afterwards.
"""

from __future__ import annotations

import logging
import os
import signal

import pytest

from appliance.ml import checkpoints
from appliance.ml.stopping import stop_on_signals
from tests.unit.test_train import ARGS, data, run_train  # noqa: F401 (data: a fixture)


def test_the_first_signal_asks_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT" and stop.exit_status == 130
        assert signal.getsignal(signal.SIGINT) is before  # the next one acts as it would have
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGTERM) is not None


class _SignalWhenTrainingStarts(logging.Handler):
    """Sends SIGTERM to this process as the run logs that training starts (within its handlers)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("training ResNet50"):
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_the_step_under_way_and_the_same_command_resumes(
    data,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "resnet50.keras"
    # No periodic checkpoint within the run: the one at step 1 can only be the stop's.
    argv = ["--data", str(data), "--out", str(out), *ARGS, "--checkpoint-minutes", "60"]
    folder = checkpoints.checkpoint_dir(out)
    logger = logging.getLogger("appliance.ml.train")
    trigger, old_level = _SignalWhenTrainingStarts(), logger.level
    found = signal.getsignal(signal.SIGTERM)
    logger.addHandler(trigger)
    logger.setLevel(logging.INFO)
    try:
        rc = run_train(*argv)
    finally:
        logger.removeHandler(trigger)
        logger.setLevel(old_level)
    assert rc == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert (
        f"stopped by SIGTERM after epoch 0/3 and 1/2 steps of the next; checkpoint in {folder}: "
        "the same command resumes there" in err
    )
    state = checkpoints.read_state(folder)
    assert (state["epoch"], state["step"], state["history"]) == (0, 1, [])
    assert state["checkpoint"] == "epoch-0000-step-0001.keras" and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is found  # restored

    assert run_train(*argv) == 0  # the resume checks the checkpoint's optimizer steps too
    state = checkpoints.read_state(folder)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3] and state["finished"] is True
    assert out.exists()
