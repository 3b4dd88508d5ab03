"""Write the small sample files shipped in ``inr_engine/data/samples/`` (deterministic).

From the shared data (``--data-root``, default ``../shared/data`` relative to the repository
root) this writes:

* two AdrenalMNIST3D 64^3 validation shapes (indices 0 and 1) as NIfTI, identity affine
  (1 mm, RAS), uint8, each with a sparse version that keeps every w-th slice inside the
  object along one axis (the evaluation protocol, :func:`inr_engine.shape.slices.sparsify`);
* the left parotid of the first head-and-neck validation scan (oncologist's mask), cropped
  to the organ plus 12 mm, as NRRD with its real geometry (anisotropic 2.5 mm slices, LPS on
  disk), and a sparse version keeping every 4th axial slice;
* two MSD Task04 Hippocampus subjects of the held-out split (``seeded_split(..., 40, 0)``),
  image and label map, copied unchanged (NIfTI, 1 mm, RAS);
* ``samples.json`` describing each file, its source and the sparse -> full pairing.

Run from the repository root:  python scripts/make_samples.py
Sources and licences: ``inr_engine/data/samples/LICENSE.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's engine (even when it is not installed) and benchmarks package

from benchmarks.datasets import ADRENAL_NPZ, HIPPOCAMPUS, HN_OAR, hn_shapes, hn_split  # noqa: E402
from inr_engine.datasets import labelled_image_names, seeded_split  # noqa: E402
from inr_engine.io import Volume, write_volume  # noqa: E402
from inr_engine.shape.slices import sparsify  # noqa: E402
from inr_engine.shape.training import plane_axis  # noqa: E402

SOURCES = {
    "adrenalmnist3d": {
        "dataset": "AdrenalMNIST3D (MedMNIST v2), 64^3 masks, validation split",
        "licence": "CC BY 4.0",
        "citation": "Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and "
        "3D biomedical image classification. Sci. Data 10:41 (2023). doi:10.1038/s41597-022-01721-8",
    },
    "deepmind_hn_oar": {
        "dataset": "DeepMind head-and-neck CT organ-at-risk segmentations (masks only; CT scans from TCIA)",
        "licence": "CC BY 4.0",
        "citation": "Nikolov S, Blackwell S, Zverovitch A, et al. Clinically applicable segmentation of head and "
        "neck anatomy for radiotherapy: deep learning algorithm development and validation study. "
        "J Med Internet Res 23(7):e26151 (2021). doi:10.2196/26151",
    },
    "msd_hippocampus": {
        "dataset": "Medical Segmentation Decathlon, Task04 Hippocampus (T1 MRI crops; 0 background, 1 anterior, "
        "2 posterior)",
        "licence": "CC BY-SA 4.0",
        "citation": "Simpson AL, Antonelli M, Bakas S, et al. A large annotated medical image dataset for the "
        "development and evaluation of segmentation algorithms. arXiv:1902.09063 (2019); Antonelli M, Reinke A, "
        "Bakas S, et al. The Medical Segmentation Decathlon. Nat. Commun. 13:4128 (2022).",
    },
}
HIPPOCAMPUS_SAMPLES = 2  # the first held-out subjects; the first is the demo's
ADRENAL_SAMPLES = [(0, 8, 0), (1, 4, 2)]  # (validation index, keep every w-th slice, along axis)
HN_ORGAN, HN_EVERY = "Parotid-Lt", 4


def spacing(affine: np.ndarray) -> list[float]:
    return [round(float(s), 4) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]


def entry(file: Path, source: str, subject: str, mask: np.ndarray, affine: np.ndarray, **extra) -> dict:
    return {
        "file": file.name,
        "source": source,
        "subject": subject,
        "shape": list(mask.shape),
        "spacing_mm": spacing(affine),
        "foreground_voxels": int(mask.sum()),
        **extra,
    }


def strip_nrrd_timestamp(path: Path) -> None:
    """Drop pynrrd's "# on <date>(GMT)." header comment so that reruns give identical bytes."""
    data = path.read_bytes()
    end = data.index(b"\n\n") + 2  # a NRRD header ends at the first blank line
    header = re.sub(rb"# on [^\n]*\(GMT\)\.\n", b"", data[:end], count=1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(header + data[end:])
    os.replace(tmp, path)


def adrenal_samples(data_root: Path, out: Path) -> list[dict]:
    images = np.load(data_root / ADRENAL_NPZ)["val_images"]
    entries = []
    for index, every, axis in ADRENAL_SAMPLES:
        full = (images[index] > 0).astype(np.uint8)
        sparse, kept = sparsify(full, axis, every)
        like = Volume(full, np.eye(4), nib.Nifti1Header(), "nifti")  # fresh header, identity affine
        subject = f"val_images[{index}]"
        full_path = out / f"adrenal_val{index:03d}_full.nii.gz"
        sparse_path = out / f"adrenal_val{index:03d}_sparse_w{every}_axis{axis}.nii.gz"
        write_volume(full_path, full, like)
        write_volume(sparse_path, sparse.astype(np.uint8), like)
        entries.append(entry(full_path, "adrenalmnist3d", subject, full, like.affine, kind="full"))
        entries.append(
            entry(
                sparse_path,
                "adrenalmnist3d",
                subject,
                sparse,
                like.affine,
                kind="sparse",
                axis=axis,
                every=every,
                kept_slices=kept,
                ground_truth=full_path.name,
                prior="adrenal",
                demo=index == ADRENAL_SAMPLES[0][0],
            )
        )
    return entries


def hn_samples(data_root: Path, out: Path) -> list[dict]:
    root = data_root / HN_OAR
    _, val_scans = hn_split(root)
    scan = val_scans[0]
    (shape,) = hn_shapes(root, [scan], raters=("oncologist",), organs={HN_ORGAN})
    full = shape.mask.astype(np.uint8)
    axis = plane_axis(shape.affine, "axial")
    sparse, kept = sparsify(full, axis, HN_EVERY)
    like = Volume(full, shape.affine, {}, "nrrd")  # empty header: written in LPS space
    stem = f"hn_{scan}_{HN_ORGAN.lower().replace('-', '_')}"
    full_path = out / f"{stem}_full.nrrd"
    sparse_path = out / f"{stem}_sparse_axial_every{HN_EVERY}.nrrd"
    write_volume(full_path, full, like)
    write_volume(sparse_path, sparse.astype(np.uint8), like)
    for path in (full_path, sparse_path):
        strip_nrrd_timestamp(path)
    subject = f"scan {scan}, rater oncologist, {HN_ORGAN} (cropped to the organ + 12 mm)"
    return [
        entry(full_path, "deepmind_hn_oar", subject, full, shape.affine, kind="full"),
        entry(
            sparse_path,
            "deepmind_hn_oar",
            subject,
            sparse,
            shape.affine,
            kind="sparse",
            axis=axis,
            every=HN_EVERY,
            kept_slices=kept,
            ground_truth=full_path.name,
            prior="head-neck-organs",
        ),
    ]


def hippocampus_samples(data_root: Path, out: Path) -> list[dict]:
    root = data_root / HIPPOCAMPUS
    _, held_out = seeded_split(labelled_image_names(root), 40, 0)
    entries = []
    for n, name in enumerate(held_out[:HIPPOCAMPUS_SAMPLES]):
        stem = name.removesuffix(".nii.gz")
        image_path, label_path = out / f"{stem}_image.nii.gz", out / f"{stem}_labels.nii.gz"
        shutil.copyfile(root / "images" / name, image_path)
        shutil.copyfile(root / "labels" / name, label_path)
        img = nib.load(image_path)
        labels = np.asanyarray(nib.load(label_path).dataobj)
        entries.append(entry(image_path, "msd_hippocampus", stem, labels > 0, img.affine, kind="image",
                             labels=label_path.name, prior="hippocampus-metaseg", demo=n == 0))
        entries.append(entry(label_path, "msd_hippocampus", stem, labels > 0, img.affine, kind="labels"))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="shared data folder (default: ../shared/data relative to the repository root)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "inr_engine" / "data" / "samples")
    args = parser.parse_args()
    if not args.data_root.is_dir():
        parser.error(f"{args.data_root}: no such folder; pass --data-root pointing at the shared data")
    args.out.mkdir(parents=True, exist_ok=True)
    samples = (adrenal_samples(args.data_root, args.out) + hn_samples(args.data_root, args.out)
               + hippocampus_samples(args.data_root, args.out))
    index = {
        "description": "Sample label maps and images for the demo and tests. A sparse sample keeps every "
        "`every`-th slice along index axis `axis` (slices `kept_slices`, 0-based) inside the object; "
        "`ground_truth` is the full mask it was made from. Written by scripts/make_samples.py; "
        "sources and licences in LICENSE.md.",
        "sources": SOURCES,
        "samples": samples,
    }
    text = json.dumps(index, indent=2)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    (args.out / "samples.json").write_text(text + "\n")
    total = 0
    for item in samples:
        path = args.out / item["file"]
        path.chmod(0o644)  # write_volume's temporary file is created owner-only
        size = path.stat().st_size
        total += size
        print(f"{item['file']:45s} {size:7d} bytes")
    print(f"total {total} bytes in {args.out}")


if __name__ == "__main__":
    main()
