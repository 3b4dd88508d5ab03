"""What each training is told: its steps, learning rates, budgets and batch sizes, per method;
and the error of a training that cannot go on.

Plain dataclasses, with no PyTorch: the command line builds them from its arguments (and shows
their defaults in ``--help``) without loading the engine; :func:`inr_engine.training.run_training`
runs a stage from a :class:`TrainingSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class TrainingDiverged(FloatingPointError):
    """A training loss that is NaN or infinite: the run cannot go on."""


@dataclass
class TrainingSettings:
    """How long and how fast one training stage runs, and how often it reports."""

    steps: int
    lr: float
    time_limit_s: float | None = None  # the stage ends at its steps or its time limit, whichever comes first
    lr_floor: float = 0.05  # the cosine schedule ends at lr * lr_floor (1.0: a constant rate)
    clip_grad_norm: float | None = None
    log_every: int = 50  # steps between log entries (and validations, with a validate function)


@dataclass
class MetaTrainingSettings:
    """A meta-learning stage: outer Adam steps on batches of tasks (the methods' settings extend it)."""

    steps: int = 3000  # outer (meta) steps
    meta_batch: int = 4  # tasks per step
    lr: float = 3e-4  # outer Adam learning rate
    seed: int = 0
    time_limit_s: float | None = None

    def meta_stage(self, log_every: int) -> TrainingSettings:
        return TrainingSettings(self.steps, self.lr, self.time_limit_s, clip_grad_norm=1.0, log_every=log_every)


# --- shape completion
@dataclass
class EncoderTrainingSettings:
    """The context encoder's supervised stage, before the meta-learning."""

    steps: int = 3000  # 0 keeps the encoder of the prior training continues from
    batch: int = 4  # examples per step
    lr: float = 1e-3
    time_limit_s: float | None = None
    echo: int = 1  # each example is used about this many times (data echoing: examples are slow to make)

    def stage(self) -> TrainingSettings:
        return TrainingSettings(self.steps, self.lr, self.time_limit_s, log_every=50)


VALIDATION_PROTOCOLS = (("axial", 8), ("axial", 4))  # (axis or plane, every n-th slice) scored while training


@dataclass
class ShapeTrainingSettings(MetaTrainingSettings):
    """How a shape-completion prior is meta-trained (what is not in its :class:`ShapeConfig`)."""

    steps: int = 4000
    meta_batch: int = 8
    data_workers: int = 1  # threads drawing tasks
    protocols: tuple[tuple[str, int], ...] = VALIDATION_PROTOCOLS
    encoder: EncoderTrainingSettings = field(default_factory=EncoderTrainingSettings)

    def stage(self) -> TrainingSettings:
        return self.meta_stage(log_every=max(self.steps // 12, 50))


# --- segmentation
@dataclass
class MetaSegTrainingSettings(MetaTrainingSettings):
    """How a MetaSeg prior is meta-trained (what is not in its :class:`~.metaseg.MetaSegConfig`);
    a task is a subject."""

    validate_every: int = 100

    def stage(self) -> TrainingSettings:
        return self.meta_stage(log_every=self.validate_every)


PAPER_STEP_GRID = (0, 10, 25, 50, 100, 150, 200, 300, 400)


@dataclass
class NISFTrainingSettings:
    """How a NISF prior is trained: the auto-decoder, then the fast procedure's meta-learned stage."""

    steps: int = 3000  # auto-decoder steps
    batch: int = 8  # subjects per step
    lr: float = 5e-4  # the network's Adam learning rate (the latents': NISFConfig.latent_lr)
    latent_steps: int = 300  # meta-learning steps of the fast procedure
    meta_lr: float = 1e-3
    seed: int = 0
    time_limit_s: float | None = None  # of the auto-decoder stage
    paper_step_grid: tuple[int, ...] = PAPER_STEP_GRID  # step counts the paper procedure chooses from

    def auto_decoder_stage(self) -> TrainingSettings:
        return TrainingSettings(self.steps, self.lr, self.time_limit_s, log_every=100)

    def meta_stage(self) -> TrainingSettings:
        return TrainingSettings(self.latent_steps, self.meta_lr, clip_grad_norm=1.0,
                                log_every=max(self.latent_steps // 4, 25))


REFINER_ITERATIONS = 800  # training steps of the renderer


# --- STRAINER (both tasks)
@dataclass
class StrainerSettings:
    """How the shared encoder is fitted (stored in the prior's metadata)."""

    steps: int = 1000  # joint fitting steps (fewer if time_limit_s runs out first)
    lr: float = 1e-3  # Adam (the reference's 1e-4 needs its 5000 steps; 1e-3 plateaus within 1000)
    points_per_signal: int = 1024
    time_limit_s: float = 75.0
    seed: int = 0
