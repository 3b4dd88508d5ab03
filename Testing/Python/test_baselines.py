"""The shape-completion benchmark's baselines (``benchmarks.baselines``): 3D Slicer's Fill between slices
(slicer-core) and the coordinate networks' training stream."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

# Run in a child, so that a crash at its exit (vtkITK's, see ../shared/data/README.md and
# benchmarks/baselines/fill_between_slices.py) cannot decide the interpolation test; the exit has a test of its own.
FBS_SCRIPT = textwrap.dedent("""
    import numpy as np
    from benchmarks.baselines.fill_between_slices import fill_between_slices
    from inr_engine.shape.slices import sparsify
    from inr_engine.metrics import dice
    g = np.mgrid[:48, :40, :36]
    mask = ((g[0] - 24) / 16.0) ** 2 + ((g[1] - 20) / 12.0) ** 2 + ((g[2] - 18) / 10.0) ** 2 < 1
    scores = []
    for axis in range(3):
        sparse, _ = sparsify(mask, axis, 4)
        scores.append(dice(fill_between_slices(sparse, axis), mask))
    untouched = dice(fill_between_slices(sparsify(mask, 0, 4)[0], 1), sparsify(mask, 0, 4)[0])
    print(" ".join(f"{s:.4f}" for s in scores + [untouched]), flush=True)
""")


@pytest.fixture(scope="module")
def fill_between_slices_run():
    pytest.importorskip("slicer")
    return subprocess.run([sys.executable, "-c", FBS_SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=REPOSITORY)


def test_fill_between_slices_interpolates_along_the_given_axis(fill_between_slices_run):
    values = [float(v) for v in fill_between_slices_run.stdout.split()]
    assert len(values) == 4, fill_between_slices_run.stderr
    assert min(values[:3]) > 0.9  # an ellipsoid every 4th slice is filled back along each axis
    assert values[3] > 0.99  # slices along axis 0, interpolated "along axis 1": nothing to fill


def test_a_process_that_ran_fill_between_slices_exits_cleanly(fill_between_slices_run):
    # with slicer-core's default (TBB) threader it crashed at exit in a fifth to half of the runs
    assert fill_between_slices_run.returncode == 0, fill_between_slices_run.stderr[-2000:]


def test_coordinate_baselines_draw_training_batches_from_the_engines_task_stream():
    from benchmarks.baselines.coordinate_inr import target_batches
    from inr_engine.datasets import Shape
    from inr_engine.shape.model import ShapeConfig
    from inr_engine.streams import TaskStream

    g = np.mgrid[:32, :32, :32]
    mask = ((g - 16) ** 2).sum(0) < 100
    cfg = ShapeConfig(target_points=64)
    with TaskStream(target_batches([Shape(mask, np.eye(4), "ball")], cfg, 2), seed=0) as stream:
        index, coords, labels = stream()
    assert index.tolist() == [0, 0]
    assert coords.shape == (2, 64, 3) and labels.shape == (2, 64)
    assert 0 < float(labels.mean()) < 1  # inside and outside points
