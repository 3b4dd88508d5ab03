"""The benchmark's baselines: 3D Slicer's Fill between slices (slicer-core) and a coordinate SIREN."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("slicer")

# vtkITK may crash at interpreter exit (see ../shared/data/README.md): run it in a child that
# prints its result and leaves with os._exit, so the crash cannot decide this test.
FBS_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from inr_engine.baselines.fill_between_slices import fill_between_slices
    from inr_engine.methods.slices import sparsify
    from inr_engine.metrics import dice
    g = np.mgrid[:48, :40, :36]
    mask = ((g[0] - 24) / 16.0) ** 2 + ((g[1] - 20) / 12.0) ** 2 + ((g[2] - 18) / 10.0) ** 2 < 1
    scores = []
    for axis in range(3):
        sparse, _ = sparsify(mask, axis, 4)
        scores.append(dice(fill_between_slices(sparse, axis), mask))
    untouched = dice(fill_between_slices(sparsify(mask, 0, 4)[0], 1), sparsify(mask, 0, 4)[0])
    print(" ".join(f"{s:.4f}" for s in scores + [untouched]))
    sys.stdout.flush()
    os._exit(0)
""")


def test_fill_between_slices_interpolates_along_the_given_axis():
    out = subprocess.run([sys.executable, "-c", FBS_SCRIPT], capture_output=True, text=True, timeout=120)
    values = [float(v) for v in out.stdout.split()]
    assert len(values) == 4, out.stderr
    assert min(values[:3]) > 0.9  # an ellipsoid every 4th slice is filled back along each axis
    assert values[3] > 0.99  # slices along axis 0, interpolated "along axis 1": nothing to fill
