"""The Slicer modules' per-step live update on a 128^3 grid, on real MRML (``slicer-core``).

What a fitting step costs the main thread beyond the fit itself: writing the step's labels into
the output segments and refreshing their 3D closed surfaces (``LiveSegmentation.write``), and
for shape completion also replacing the model's mesh (``LiveModel.write``). Two workloads:

* **segmentation**: the shipped hippocampus labels (anterior, posterior) resampled onto 128^3,
  two segments; each update writes a different dilation of them, so every write really changes
  the segments and their surfaces; and the final surfaces a finished run gets once, with
  Slicer's default conversion (``LiveSegmentation.commit``);
* **completion, end to end**: the shipped adrenal sample upsampled to 128^3 and kept every 8th
  slice, completed by ``ReconstructionLogic`` with the bundled prior; every live update of the
  run is timed on the main thread, beside the worker's fitting-step time.

Medians (and 90th percentiles) over ``--updates`` updates after a warm-up, ``--threads`` threads.

Example::

    python -m benchmarks.live_update --threads 2
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import slicer
import torch
from scipy import ndimage

from benchmarks import harness
from inr_engine.data import SAMPLES_DIR
from inr_engine.io import read_volume
from inr_slicer.outputs import LiveModel, LiveSegmentation, SegmentSpec, default_color
from inr_slicer.worker import RunState

GRID = (128, 128, 128)


def new_scene():
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)  # registers the closed-surface converter
    return scene, logic


def resample_labels(labels: np.ndarray, shape=GRID) -> np.ndarray:
    zoom = [n / m for n, m in zip(shape, labels.shape)]
    return ndimage.zoom(labels, zoom, order=0)[: shape[0], : shape[1], : shape[2]]


def summary(values: list[float]) -> dict:
    ms = np.asarray(values) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "n": len(ms)}


def segmentation_updates(updates: int) -> dict:
    """Main-thread cost of writing two segments on 128^3 and refreshing their surfaces, and of the
    final surfaces a finished run gets (Slicer's default conversion, once per run)."""
    labels = resample_labels(read_volume(SAMPLES_DIR / "hippocampus_004_labels.nii.gz").array.astype(np.uint8))
    affine = np.diag([0.8, 0.8, 0.8, 1.0])
    frames = []
    for radius in range(updates + 2):
        frame = labels.copy()
        for c in (1, 2):
            grown = ndimage.binary_dilation(labels == c, iterations=radius % 4) if radius % 4 else labels == c
            frame[grown & (frame == 0)] = c
        frames.append(frame)
    scene, _logic = new_scene()
    specs = [SegmentSpec(n, n, default_color(i), i + 1) for i, n in enumerate(("anterior", "posterior"))]
    times, finals = [], []
    for run in range(3):
        live = LiveSegmentation(scene, affine, GRID, specs, node_name=f"live {run}")
        live.write(frames[0])  # creates the node and its surfaces: the first write is not per-step work
        for frame in frames[1:] if run == 0 else frames[1:3]:
            t0 = time.perf_counter()
            live.write(frame)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        live.commit()
        finals.append(time.perf_counter() - t0)
    surface = live.node.GetSegmentation().GetSegment("anterior").GetRepresentation("Closed surface")
    return {"workload": "2 segments, hippocampus labels resampled to 128^3", "update": summary(times[1:]),
            "final_surfaces": summary(finals), "voxels_per_segment": [int((labels == c).sum()) for c in (1, 2)],
            "surface_points": surface.GetNumberOfPoints()}


def completion_run(steps: int) -> dict:
    """A real completion run on 128^3; every live update it makes is timed on the main thread."""
    from inr_engine.shape.slices import sparsify
    from inr_slicer.nodes import array_to_matrix
    from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest

    full = read_volume(SAMPLES_DIR / "adrenal_val000_full.nii.gz")
    mask = resample_labels((full.array > 0).astype(np.uint8)) > 0
    sparse = sparsify(mask, 0, 8)[0].astype(np.uint8)
    affine = full.affine.copy()
    affine[:3, :3] *= 0.5  # the same anatomy at twice the resolution
    scene, _logic = new_scene()
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "sparse")
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    image.SetDimensions(*sparse.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(sparse.transpose(2, 1, 0)).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(array_to_matrix(affine))

    timings = {"segment": [], "model": []}
    seg_write, model_write = LiveSegmentation.write, LiveModel.write

    def timed(kind, write):
        def wrapper(self, value):
            t0 = time.perf_counter()
            write(self, value)
            timings[kind].append(time.perf_counter() - t0)
        return wrapper

    LiveSegmentation.write, LiveModel.write = timed("segment", seg_write), timed("model", model_write)
    try:
        run = ReconstructionLogic(scene).start(ReconstructionRequest(node, steps=steps, model_step=0.5))
        state = run.wait(600, interval=0.001)
    finally:
        LiveSegmentation.write, LiveModel.write = seg_write, model_write
    assert state is RunState.FINISHED, run.error
    fit_s = run.result[2]["labels"]["1"]["fit_steps"]
    step_s = np.diff([0.0] + [s["seconds"] for s in fit_s])
    per_update = [a + b for a, b in zip(timings["segment"], timings["model"])]
    return {"workload": f"adrenal upsampled to 128^3, every 8th slice, {steps} steps, model at 0.5 voxel",
            "updates": len(per_update), "update": summary(per_update), "segment_write": summary(timings["segment"]),
            "model_write": summary(timings["model"]), "fit_step": summary(list(step_s))}


def table(results: dict) -> str:
    rows = ["| workload | live updates | main-thread update, median (p90) | fitting step, median |",
            "|---|---|---|---|"]
    seg = results["segmentation"]
    rows.append(f"| {seg['workload']} | {seg['update']['n']} | {seg['update']['median_ms']:.1f} ms "
                f"({seg['update']['p90_ms']:.1f}) | - |")
    rows.append(f"| the same, final surfaces with Slicer's default conversion (once per run) | "
                f"{seg['final_surfaces']['n']} runs | {seg['final_surfaces']['median_ms']:.1f} ms "
                f"({seg['final_surfaces']['p90_ms']:.1f}) | - |")
    comp = results["completion"]
    rows.append(f"| {comp['workload']} | {comp['updates']} | {comp['update']['median_ms']:.1f} ms "
                f"({comp['update']['p90_ms']:.1f}) | {comp['fit_step']['median_ms']:.1f} ms |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = harness.parser(__doc__, "live_update", threads=2)  # runs on the shipped samples, not on --data-root
    p.add_argument("--updates", type=int, default=30, help="segmentation updates timed (after one warm-up)")
    p.add_argument("--steps", type=int, default=60, help="fitting steps of the end-to-end completion run")
    args = harness.parse(p, argv)
    harness.log("segmentation: timing segment writes and surface refreshes")
    results = {"segmentation": segmentation_updates(args.updates)}
    harness.log("completion: an end-to-end run")
    results["completion"] = completion_run(args.steps)
    results["machine"] = {"threads": args.threads, "cpu": platform.processor() or platform.machine(),
                          "python": sys.version.split()[0], "torch": torch.__version__}
    harness.write_results(args.out, "live_update", results, table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
