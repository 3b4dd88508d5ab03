"""Training data drawn in background threads while the model trains: :class:`TaskStream`, and
:class:`EchoedBatches` (data echoing) for examples that take longer to make than to train on."""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np


class _WorkerFailure:
    """What a worker hands on instead of a batch when drawing it raised ``error``."""

    def __init__(self, error: BaseException):
        self.error = error


class TaskStream:
    """Batches drawn in background threads (NumPy, SciPy and PyTorch release the GIL).

    ``draw(rng)`` makes one batch. Worker ``i`` of ``workers`` draws batches ``i, i + workers,
    ...`` from its own generator and the stream hands them out in that order, so the sequence
    depends on the seed and the number of workers, not on thread timing. An exception raised by
    ``draw`` reaches the consumer: the call that would have returned that batch re-raises it
    (the same exception, so a user error stays one), and so does every later call. Use it as a
    context manager (or call ``close``): threads still inside native code when the interpreter
    exits abort the process. The workers are daemon threads and ``close`` waits for them for at
    most ``close_timeout_s`` seconds, so neither an error nor Ctrl-C can hang on them.
    """

    POLL_S = 0.1  # how often a waiting worker or consumer checks for a stop or a dead worker

    def __init__(self, draw: Callable[[np.random.Generator], object], seed: int, workers: int = 1,
                 prefetch: int = 4, close_timeout_s: float = 30.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.draw = draw
        self.close_timeout_s = close_timeout_s
        self.queues = [queue.Queue(max(1, prefetch // workers)) for _ in range(workers)]
        self.turn = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        rngs = np.random.default_rng(seed).spawn(workers) if workers > 1 else [np.random.default_rng(seed)]
        self.threads = [threading.Thread(target=self._fill, args=(q, rng), daemon=True, name=f"TaskStream-{i}")
                        for i, (q, rng) in enumerate(zip(self.queues, rngs))]
        for thread in self.threads:
            thread.start()

    def _fill(self, out: queue.Queue, rng: np.random.Generator) -> None:
        try:
            while not self.stopping.is_set():
                if not self._put(out, self.draw(rng)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(out, _WorkerFailure(exc))

    def _put(self, out: queue.Queue, item) -> bool:
        """Put ``item`` once there is room; False if the stream stopped first."""
        while not self.stopping.is_set():
            try:
                out.put(item, timeout=self.POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __call__(self):
        if self.error is not None:
            raise self.error
        source, worker = self.queues[self.turn], self.threads[self.turn]
        while True:
            try:
                item = source.get(timeout=self.POLL_S)  # a timeout: Ctrl-C and dead workers are noticed
                break
            except queue.Empty:
                if self.stopping.is_set():
                    raise RuntimeError("the task stream is closed") from None
                if not worker.is_alive() and source.empty():
                    raise RuntimeError(f"data worker {worker.name} stopped without a batch or an error") from None
        if isinstance(item, _WorkerFailure):
            self.error = item.error
            self.stopping.set()  # the other workers stop after their current batch
            raise item.error
        self.turn = (self.turn + 1) % len(self.queues)
        return item

    def close(self) -> None:
        """Stop the workers and wait for each to finish its current batch, at most
        ``close_timeout_s`` seconds in all (they are daemon threads: a stuck one cannot hang)."""
        self.stopping.set()
        deadline = time.monotonic() + self.close_timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            warnings.warn(f"data workers {', '.join(stuck)} still drawing after {self.close_timeout_s:g} s; "
                          "not waiting for them", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EchoedBatches:
    """Data echoing (Choi et al., 2019) for a stream of example batches.

    On a CPU, preparing an encoder example (slice evidence, registration) takes longer than a
    training step on it. With ``echo`` > 1, one fresh batch joins a pool of recent examples every
    ``echo`` steps and each step draws its batch from the pool, so an example is used about
    ``echo`` times. ``echo`` = 1 hands the stream's batches through unchanged.
    """

    POOL_BATCHES = 8  # pool size in batches: large enough that consecutive steps share few examples

    def __init__(self, stream: Callable[[], list], batch: int, echo: int, rng: np.random.Generator):
        if echo < 1:
            raise ValueError(f"echo must be >= 1, got {echo}")
        self.stream, self.batch, self.echo, self.rng = stream, batch, echo, rng
        self.pool: list = []
        self.step = 0

    def __call__(self) -> list:
        self.step += 1
        if self.echo == 1:
            return self.stream()
        if len(self.pool) < self.POOL_BATCHES * self.batch or self.step % self.echo == 0:
            self.pool = (self.pool + list(self.stream()))[-self.POOL_BATCHES * self.batch:]
        pick = self.rng.choice(len(self.pool), min(self.batch, len(self.pool)), replace=False)
        return [self.pool[i] for i in pick]
