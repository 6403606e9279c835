"""`appliance train` stops cleanly on SIGINT or SIGTERM: a checkpoint of the step under way, an
exit status that names the signal, and the same command resumes there. The run it resumes also
shows the curve it plots after every epoch, and `appliance model history` plots it again.

Real signals to this very process: the run installs its handlers around training and restores
the ones it found, so pytest's own are back afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal

import pytest

from appliance.ml import checkpoints, history_plot, model_cli
from appliance.ml.stopping import stop_on_signals
from tests.unit.test_train import ARGS, data, run_train  # noqa: F401 (data: a fixture)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test: a shell starts a background job with SIGINT
    ignored, and Python then leaves it ignored (`make test &` would find SIG_IGN)."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield signal.default_int_handler
    signal.signal(signal.SIGINT, found)


def test_the_first_signal_asks_the_second_stops_at_once(python_sigint):
    before_term = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT" and stop.exit_status == 130
        assert signal.getsignal(signal.SIGINT) is python_sigint  # the next acts as it would have
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is python_sigint
    assert signal.getsignal(signal.SIGTERM) is before_term


class _SignalWhenTrainingStarts(logging.Handler):
    """Sends SIGTERM to this process as the run logs that training starts (within its handlers)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("training ResNet50"):
            os.kill(os.getpid(), signal.SIGTERM)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def model_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    model_cli.add_arguments(parser)
    return model_cli.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory) -> dict:  # noqa: F811
    """A run sent SIGTERM as training starts: what it returned, printed and left."""
    out = tmp_path_factory.mktemp("stopped") / "resnet50.keras"
    # No periodic checkpoint within the run: the one at step 1 can only be the stop's.
    argv = ["--data", str(data), "--out", str(out), *ARGS, "--checkpoint-minutes", "60"]
    folder = checkpoints.checkpoint_dir(out)
    logger = logging.getLogger("appliance.ml.train")
    trigger, old_level = _SignalWhenTrainingStarts(), logger.level
    found = signal.getsignal(signal.SIGTERM)
    logger.addHandler(trigger)
    logger.setLevel(logging.INFO)
    err = out.with_name("stderr.txt")
    try:
        # capsys is function-scoped; the run is the module's.
        with err.open("w") as stream, contextlib.redirect_stderr(stream):
            rc = run_train(*argv)
    finally:
        logger.removeHandler(trigger)
        logger.setLevel(old_level)
    return {
        "out": out, "argv": argv, "folder": folder, "rc": rc, "err": err.read_text(),
        "state": checkpoints.read_state(folder), "found": found,
        "restored": signal.getsignal(signal.SIGTERM),
    }  # fmt: skip


def test_sigterm_checkpoints_the_step_under_way_and_the_same_command_resumes(stopped):
    folder, out = stopped["folder"], stopped["out"]
    assert stopped["rc"] == 128 + signal.SIGTERM
    assert (
        f"stopped by SIGTERM after epoch 0/3 and 1/2 steps of the next; checkpoint in {folder}: "
        "the same command resumes there" in stopped["err"]
    )
    state = stopped["state"]
    assert (state["epoch"], state["step"], state["history"]) == (0, 1, [])
    assert state["checkpoint"] == "epoch-0000-step-0001.keras"
    assert stopped["restored"] is stopped["found"]  # the handler it found is back

    assert run_train(*stopped["argv"]) == 0  # the resume checks the optimizer's step count too
    state = checkpoints.read_state(folder)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3] and state["finished"] is True
    assert out.exists()


def test_the_run_plots_its_curve_and_model_history_plots_it_again(stopped, tmp_path, capsys):
    if not stopped["out"].exists():
        assert run_train(*stopped["argv"]) == 0
    assert (stopped["folder"] / history_plot.PLOT_NAME).read_bytes()[:8] == PNG_MAGIC
    records = history_plot.read_history(stopped["out"])  # the artifact's own copy
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(0.0 <= r["probe_accuracy"] <= 1.0 and r["lr"] >= 0.0 for r in records)
    png = tmp_path / "curve.png"
    assert model_command("history", str(stopped["folder"]), "--out", str(png)) == 0
    assert f"saved {png} (3 epochs)" in capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_model_history_says_what_it_needs(tmp_path, capsys):
    (tmp_path / "run.ckpt").mkdir()
    (tmp_path / "run.ckpt" / checkpoints.STATE_FILE).write_text('{"epoch": 0, "history": []}')
    assert model_command("history", str(tmp_path / "run.ckpt")) == 2
    assert "no training history (an untrained model, or a run whose first epoch" in (
        capsys.readouterr().err
    )
    assert model_command("history", str(tmp_path / "nothing.keras")) == 2
    assert "expected a checkpoint folder (X.ckpt/ with state.json)" in capsys.readouterr().err
