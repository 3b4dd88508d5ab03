"""MORSE-style boundary refinement: point geometry, uncertainty sampling, the loss ramp, a
rendering head that must beat a blurred coarse prediction on a synthetic boundary, and the
refinement of MetaSeg's labels (the bundled prior's refiner, ``train refine``, ``--refine``)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inr_engine.cli import main
from inr_engine.data import SAMPLES_DIR
from inr_engine.io import read_volume
from inr_engine.priors import load_prior
from inr_engine.segmentation import morse, refinement
from inr_engine.segmentation.segment import load_segmenter, segment_image
from inr_engine.segmentation.training import foreground_dice


def _grid_voxels(shape) -> torch.Tensor:
    return torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)


def test_voxel_centres_sample_exactly_their_own_values():
    torch.manual_seed(0)
    shape = (7, 9, 5)
    volume = torch.randn(2, 3, *shape)
    points = morse.voxels_to_points(_grid_voxels(shape), shape)[None].expand(2, -1, -1)
    sampled = morse.sample_grid(volume, points)
    torch.testing.assert_close(sampled, volume.reshape(2, 3, -1).transpose(1, 2), atol=1e-5, rtol=0)
    nearest = morse.sample_grid(volume, points + 0.3 / torch.tensor(shape), mode="nearest")
    torch.testing.assert_close(nearest, sampled, atol=1e-5, rtol=0)


def test_uncertainty_is_minus_the_top_two_margin():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 0.4, -2.0]])
    torch.testing.assert_close(morse.uncertainty(logits), torch.tensor([-2.0, -0.1]))


def test_point_selection_keeps_the_uncertain_share_and_the_rest_uniform():
    """Coarse logits are uncertain only in the slab x in [-0.1, 0.1] (a tenth of the volume)."""

    def coarse_at(points):
        x = points[..., :1]
        confident = torch.where(x.abs() < 0.1, torch.zeros_like(x), 5 * torch.ones_like(x))
        return torch.cat([confident, torch.zeros_like(x)], -1)

    generator = torch.Generator().manual_seed(0)
    points = morse.select_points(coarse_at, batch=2, count=1000, generator=generator)
    assert points.shape == (2, 1000, 3) and points.abs().max() <= 1
    in_slab = (points[..., 0].abs() < 0.1).float().mean(1)
    # 75 % chosen from the ~300 candidates in the slab (all of them), the rest uniform (10 % in it)
    assert torch.all(in_slab > 0.25) and torch.all(in_slab < 0.45)
    assert torch.all((points[:, -250:, 0].abs() < 0.1).float().mean(1) < 0.2)


def test_point_loss_is_off_for_the_first_half_then_ramps_linearly():
    assert morse.point_loss_weight(0.0) == morse.point_loss_weight(0.5) == 0.0
    assert morse.point_loss_weight(0.75) == pytest.approx(0.25)
    assert morse.point_loss_weight(1.0) == pytest.approx(0.5) == morse.point_loss_weight(1.2)


def test_stochastic_experts_drop_in_training_only():
    torch.manual_seed(0)
    experts = morse.StochasticExperts([4, 6, 8], width=16, max_dropped=2)
    features = [torch.randn(32, c) for c in (4, 6, 8)]
    experts.eval()
    torch.testing.assert_close(experts(features), experts(features))
    experts.train()
    outputs = {tuple(experts(features)[0, :4].tolist()) for _ in range(20)}
    assert len(outputs) > 1
    with pytest.raises(ValueError, match="at least one expert"):
        morse.StochasticExperts([4, 6], max_dropped=2)


def test_refine_logits_re_renders_only_the_most_uncertain_voxels():
    coarse = torch.zeros(2, 4, 4, 4)
    coarse[0] = 5.0
    coarse[:, 1, 2, 3] = torch.tensor([0.1, 0.0])  # the two least certain voxels
    coarse[:, 3, 0, 0] = torch.tensor([0.0, 0.2])
    refined, voxels = morse.refine_logits(coarse, lambda v: torch.tensor([[-1.0, 1.0]]).expand(len(v), -1), 2)
    assert sorted(map(tuple, voxels.tolist())) == [(1, 2, 3), (3, 0, 0)]
    assert refined.argmax(0).sum() == 2 and refined[1, 1, 2, 3] == 1.0 and refined[0, 0, 0, 0] == 5.0


def test_rendering_head_sharpens_a_blurred_boundary():
    """A sphere whose coarse logits come from a 4x coarser grid: trained on uncertain points, the
    head must recover the boundary better than the coarse prediction."""
    torch.manual_seed(0)
    shape = (32, 32, 32)
    voxels = _grid_voxels(shape)
    points = morse.voxels_to_points(voxels, shape)
    truth = (points.norm(dim=-1) < 0.6).long().reshape(1, 1, *shape)
    onehot = F.one_hot(truth[:, 0], 2).permute(0, 4, 1, 2, 3).float()
    coarse = F.interpolate(F.avg_pool3d(onehot, 4), size=shape, mode="trilinear") * 8 - 4  # logits, blurred
    renderer = morse.BoundaryRenderer([2], classes=2, width=16, fourier_features=32, head_width=32)
    opt = torch.optim.Adam(renderer.parameters(), lr=3e-3)
    for _ in range(150):
        pts = morse.select_points(lambda p: morse.sample_grid(coarse, p), 1, 1024)
        logits = morse.sample_grid(coarse, pts)
        target = morse.sample_grid(truth.float(), pts, mode="nearest")[..., 0].long()
        loss = F.cross_entropy(renderer(pts, [logits], logits).reshape(-1, 2), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    renderer.eval()

    def render(v):
        pts = morse.voxels_to_points(v, shape)[None]
        logits = morse.sample_grid(coarse, pts)
        return renderer(pts, [logits], logits)[0]

    with torch.no_grad():
        refined, _ = morse.refine_logits(coarse[0], render, 4096)
    errors = {name: int((lg.argmax(0) != truth[0, 0]).sum()) for name, lg in (("coarse", coarse[0]),
                                                                               ("refined", refined))}
    assert errors["refined"] < 0.7 * errors["coarse"], errors


# --------------------------------------------------------------------------- refining MetaSeg's labels
SAMPLES = SAMPLES_DIR


def test_bundled_metaseg_refines_a_held_out_subject():
    image = read_volume(SAMPLES / "hippocampus_004_image.nii.gz")
    truth = read_volume(SAMPLES / "hippocampus_004_labels.nii.gz").array.astype(np.int64)
    segmenter = load_segmenter("metaseg", "hippocampus-metaseg")
    plain = segment_image(image.array, image.affine, segmenter)
    refined = segment_image(image.array, image.affine, segmenter, refine=True)
    assert "refine" in refined.report["phases"]
    changed = int((plain.labels != refined.labels).sum())
    assert 0 < changed <= refinement.REFINED_VOXELS
    assert min(foreground_dice(refined.labels, truth, 3)) > 0.8  # 0.86 / 0.85 before refinement


@pytest.mark.parametrize("method", ["metaseg", "nisf"])
def test_train_refine_adds_a_refiner_that_segment_uses(tmp_path, capsys, method):
    data = tmp_path / "data"
    for sub, suffix in (("images", "image"), ("labels", "labels")):
        (data / sub).mkdir(parents=True)
        shutil.copy(SAMPLES / f"hippocampus_007_{suffix}.nii.gz", data / sub / "h007.nii.gz")
    out = tmp_path / "refined.safetensors"
    assert main(["train", "refine", "--prior", f"hippocampus-{method}", "--data", str(data), "--out", str(out),
                 "--iterations", "20"]) == 0
    prior = load_prior(out)
    assert prior.metadata["refinement"]["subjects"] == 1
    assert any(k.startswith(refinement.PREFIX) for k in prior.tensors)
    labels = tmp_path / "labels.nii.gz"
    segment = ["segment", str(SAMPLES / "hippocampus_004_image.nii.gz"), "--output", str(labels), "--method", method,
               "--prior", str(out), "--refine", "--steps", "2", "--quiet"]
    assert main(segment) == 0 and labels.is_file()
    if method == "nisf":  # trained on the fast procedure's features: refused for the paper procedure
        labels.unlink()
        assert main([*segment, "--procedure", "paper"]) == 2
        assert "fast procedure" in capsys.readouterr().err and not labels.exists()


def test_refine_needs_a_prior_with_a_refiner(tmp_path, capsys):
    labels = tmp_path / "labels.nii.gz"
    code = main(["segment", str(SAMPLES / "hippocampus_004_image.nii.gz"), "--output", str(labels), "--method",
                 "nisf", "--refine", "--quiet"])
    assert code == 2 and "train refine" in capsys.readouterr().err and not labels.exists()
