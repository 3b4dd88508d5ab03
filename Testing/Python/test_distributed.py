"""Meta-training under DDP: two CPU processes (gloo) launched by torchrun, different data per rank.

Each rank draws its own tasks; DistributedDataParallel averages the outer gradients, so both
ranks end with identical parameters, equal to single-process training on both ranks' tasks.
Results travel through safetensors and JSON files (no pickle).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed
from safetensors.torch import load_file

from inr_engine.data import SAMPLES_DIR
from inr_engine.meta import MetaLearner
from inr_engine.settings import TrainingSettings
from inr_engine.shape.model import OccupancyINR, ShapeConfig, occupancy_loss
from inr_engine.training import train_meta

STEPS = 3
TASKS_PER_RANK = 2
CFG = dict(hidden_features=16, hidden_layers=1, context_points=128, target_points=256, inner_steps=2,
           every_min=3, every_max=5, margin_mm=4.0, scale_mm=16.0)

WORKER = textwrap.dedent(f"""
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from inr_engine.meta import MetaLearner
    from inr_engine.shape.model import OccupancyINR, ShapeConfig, occupancy_loss
    from inr_engine.shape.tasks import collate, sample_task
    from inr_engine.settings import TrainingSettings
    from inr_engine.training import distributed_context, train_meta

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    rank, world = distributed_context()
    assert world == 2, world
    cfg = ShapeConfig(**{CFG!r})

    def ellipsoid(radii):
        ijk = np.stack(np.meshgrid(*[np.arange(24.0)] * 3, indexing="ij"), -1)
        return (((ijk - 11.5) / np.asarray(radii, float)) ** 2).sum(-1) <= 1

    # Different shapes and task draws on each rank.
    shapes = [ellipsoid(r) for r in ([(7, 5, 6), (5, 8, 6)] if rank == 0 else [(6, 6, 9), (8, 4, 5)])]
    rng = np.random.default_rng(100 + rank)
    batches = []
    while len(batches) < {STEPS}:
        tasks = []
        while len(tasks) < {TASKS_PER_RANK}:
            task = sample_task(shapes[int(rng.integers(len(shapes)))], np.eye(4), cfg, rng)
            if task is not None:
                tasks.append(task)
        batches.append(collate(tasks))
    flat = {{}}
    for n, ((cc, ce), cl), ((tc, te), tl) in ((n, *b) for n, b in enumerate(batches)):
        flat.update({{f"{{n}}.ctx_coords": cc, f"{{n}}.ctx_ev": ce, f"{{n}}.ctx_labels": cl,
                     f"{{n}}.tgt_coords": tc, f"{{n}}.tgt_ev": te, f"{{n}}.tgt_labels": tl}})
    save_file(flat, str(out / f"batches{{rank}}.safetensors"))

    torch.manual_seed(rank)  # different initialisations: DDP must broadcast rank 0's
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    if rank == 0:
        save_file({{k: v.detach().clone() for k, v in learner.state_dict().items()}}, str(out / "init.safetensors"))
    stream = iter(batches)
    result = train_meta(learner, lambda: next(stream), lambda lo, la, p: occupancy_loss(lo, la, p, cfg.weight_decay),
                        TrainingSettings({STEPS}, 1e-2, clip_grad_norm=1.0, log_every=1), torch.device("cpu"))
    save_file({{k: v.detach().contiguous() for k, v in learner.state_dict().items()}},
              str(out / f"final{{rank}}.safetensors"))
    (out / f"result{{rank}}.json").write_text(json.dumps({{"steps": result.steps, "history": result.history}}))
""")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build has no distributed")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    script = work / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # do not depend on how the host name resolves
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work


def test_ranks_end_with_identical_parameters(ddp_run):
    final0 = load_file(str(ddp_run / "final0.safetensors"))
    final1 = load_file(str(ddp_run / "final1.safetensors"))
    init = load_file(str(ddp_run / "init.safetensors"))
    assert final0.keys() == final1.keys() == init.keys()
    for k in final0:
        torch.testing.assert_close(final0[k], final1[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(final0[k], init[k]) for k in init), "training did not change the parameters"
    assert any(k.startswith("inner_lrs.") and not torch.equal(final0[k], init[k]) for k in init)


def test_ranks_drew_different_data(ddp_run):
    b0 = load_file(str(ddp_run / "batches0.safetensors"))
    b1 = load_file(str(ddp_run / "batches1.safetensors"))
    assert b0.keys() == b1.keys()
    assert not torch.equal(b0["0.tgt_labels"], b1["0.tgt_labels"])


def test_only_rank_zero_logs(ddp_run):
    r0 = json.loads((ddp_run / "result0.json").read_text())
    r1 = json.loads((ddp_run / "result1.json").read_text())
    assert r0["steps"] == r1["steps"] == STEPS
    assert [h["step"] for h in r0["history"]] == list(range(1, STEPS + 1))
    assert all(np.isfinite(h["train_loss"]) for h in r0["history"])
    assert r1["history"] == []


def test_ddp_equals_single_process_on_both_ranks_tasks(ddp_run):
    """Averaged gradients: one process on the concatenation of both ranks' tasks takes the same steps."""
    b0 = load_file(str(ddp_run / "batches0.safetensors"))
    b1 = load_file(str(ddp_run / "batches1.safetensors"))
    init = load_file(str(ddp_run / "init.safetensors"))
    cfg = ShapeConfig(**CFG)
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    learner.load_state_dict(init)

    def batch(n):
        cat = {k: torch.cat([b0[f"{n}.{k}"], b1[f"{n}.{k}"]]) for k in
               ("ctx_coords", "ctx_ev", "ctx_labels", "tgt_coords", "tgt_ev", "tgt_labels")}
        return ((cat["ctx_coords"], cat["ctx_ev"]), cat["ctx_labels"]), ((cat["tgt_coords"], cat["tgt_ev"]),
                                                                          cat["tgt_labels"])

    stream = iter([batch(n) for n in range(STEPS)])
    train_meta(learner, lambda: next(stream), lambda lo, la, p: occupancy_loss(lo, la, p, cfg.weight_decay),
               TrainingSettings(STEPS, 1e-2, clip_grad_norm=1.0), torch.device("cpu"))
    final0 = load_file(str(ddp_run / "final0.safetensors"))
    for k, v in learner.state_dict().items():
        torch.testing.assert_close(v, final0[k], rtol=1e-4, atol=1e-5, msg=k)


def _cli_under_torchrun(cwd, args: list[str]) -> subprocess.CompletedProcess:
    """``inr-engine ARGS`` in two gloo processes launched by torchrun (one thread each)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo") if sys.platform.startswith("linux") else None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "inr_engine.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_segmentation_priors_train_under_torchrun(tmp_path):
    """``inr-engine train nisf`` (auto-decoder, then meta-learning) in two gloo processes writes one usable prior."""
    from inr_engine.priors import load_prior

    samples = SAMPLES_DIR
    for sub in ("images", "labels"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for stem in ("hippocampus_004", "hippocampus_007"):
        for sub, kind in (("images", "image"), ("labels", "labels")):
            (tmp_path / "data" / sub / f"{stem}.nii.gz").write_bytes((samples / f"{stem}_{kind}.nii.gz").read_bytes())
    out = tmp_path / "prior.safetensors"
    proc = _cli_under_torchrun(tmp_path, ["train", "nisf",
           "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--latent-steps", "2", "--batch", "1",
           "--val", "1", "--threads", "1", "--classes", "background", "anterior", "posterior", "--config",
           "latent_size=8", "hidden_features=16", "hidden_layers=1", "points=128", "fit_points=256", "inner_steps=1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    prior = load_prior(out, task="segmentation/nisf")
    assert prior.metadata["training_steps"] == {"auto_decoder": 2, "latent_meta": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "prior.safetensors"]  # no stray files


def test_shape_prior_with_context_encoder_trains_under_torchrun(tmp_path):
    """``inr-engine train shape`` with a context encoder in two gloo processes: the encoder's
    averaged steps stop together at their time limit, and so do the meta-learning's, which
    writes one prior."""
    from inr_engine.priors import load_prior

    samples = SAMPLES_DIR
    (tmp_path / "labels").mkdir()
    for name in ("adrenal_val000_full.nii.gz", "adrenal_val001_full.nii.gz"):
        (tmp_path / "labels" / name).write_bytes((samples / name).read_bytes())
    out = tmp_path / "prior.safetensors"
    proc = _cli_under_torchrun(tmp_path, ["train", "shape",
           "--data", str(tmp_path / "labels"), "--out", str(out), "--steps", "50",
           "--time-limit", "0.001", "--meta-batch", "1", "--max-val", "1", "--threads", "1",
           "--encoder-steps", "50", "--encoder-batch", "1", "--encoder-time-limit", "0.001",
           "--config", "encoder_channels=4,8", "hidden_features=16",
           "hidden_layers=1", "context_points=128", "target_points=256", "inner_steps=1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert '"stage": "encoder", "step": 1,' in proc.stdout  # both ranks stopped after the first step
    prior = load_prior(out, task="shape_completion")
    assert prior.metadata["training_steps"] == 1 and any(k.startswith("encoder.") for k in prior.tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "prior.safetensors"]
