import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from train.config import load_config  # noqa: E402
from train.prepare import prepare  # noqa: E402

# A model small enough that a training test takes a second or two.
SMALL_TRAINING = ["--d_model=32", "--n_layer=2", "--n_head=2", "--d_ff=64", "--seq_len=32",
                  "--batch_size=4", "--num_stories=300", "--eval_iters=2", "--log_interval=1",
                  "--warmup_steps=3", "--lr=3e-3", "--min_lr=3e-4"]


@pytest.fixture(scope="session")
def stories_dir(tmp_path_factory):
    """The built-in stories (300 of them), prepared once for the whole session."""
    data_dir = str(tmp_path_factory.mktemp("data") / "stories-byte")
    prepare(load_config(None, SMALL_TRAINING + [f"--data_dir={data_dir}"]), workers=2, quiet=True)
    return data_dir


@pytest.fixture
def small_args(stories_dir, tmp_path):
    """Command-line words for a small training run on the prepared stories, in its own folder."""
    return SMALL_TRAINING + [f"--data_dir={stories_dir}", f"--out_dir={tmp_path / 'run'}"]
