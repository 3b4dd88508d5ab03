"""Fitting off the main thread: one persistent worker thread, per-step results through a queue.

A :class:`FitRun` is one fitting job seen from both sides:

* the **worker thread** runs the job function, which calls :meth:`FitRun.report` after every
  fitting step, passing a function that makes that step's preview; ``report`` calls it only
  when the last preview was shown and previews take at most a quarter of the worker's time,
  so they never pile up or slow fitting much; it raises :class:`Cancelled` once cancel was asked;
* the **main thread** calls :meth:`FitRun.poll` (from a ``QTimer`` in Slicer, from a loop in
  scripts and tests), which hands the newest preview and then the final result, error or
  cancellation to the run's callbacks. Scene changes therefore happen only on the main thread.

One thread serves every run, so the PyTorch state that is per thread (e.g. cuDNN's plan cache)
is built once; runs wait their turn in a queue.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

Job = Callable[["FitRun"], Any]


class Cancelled(Exception):  # noqa: N818 -- a signal, not an error
    """Raised inside a job when its run was cancelled."""


class RunState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        return self in (RunState.FINISHED, RunState.CANCELLED, RunState.FAILED)


@dataclass(frozen=True)
class Progress:
    """Where a run stands: ``step`` of ``total`` fitting steps done, with the last loss."""

    step: int = 0
    total: int = 0
    loss: float | None = None
    elapsed: float = 0.0  # seconds since the fitting started

    @property
    def seconds_left(self) -> float | None:
        if self.step <= 0 or self.total <= 0:
            return None
        return self.elapsed / self.step * max(self.total - self.step, 0)

    def describe(self) -> str:
        parts = [f"step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.seconds_left is not None and self.step < self.total:
            parts.append(f"{self.seconds_left:.1f} s left")
        return ", ".join(parts)


Callback = Callable[[Any], None]

# Previews may cost at most 1 / (1 + PREVIEW_SPACING) of the worker's time.
PREVIEW_SPACING = 3.0


class FitRun:
    """One job on the worker thread; poll it from the main thread."""

    def __init__(self, job: Job, on_preview: Callback | None = None, on_finished: Callback | None = None,
                 on_stopped: Callable[[RunState, str | None], None] | None = None):
        self._job = job
        self._on_preview, self._on_finished, self._on_stopped = on_preview, on_finished, on_stopped
        self._cancel = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._preview_shown = threading.Event()
        self._preview_shown.set()
        self._next_preview = 0.0  # time.monotonic() from which a new preview is worth its cost
        self._next_show = 0.0  # time.monotonic() from which showing a preview may block the main thread again
        self._held_preview: Any = None  # a preview waiting for _next_show
        self.state = RunState.QUEUED
        self.progress = Progress()
        self.result: Any = None
        self.error: str | None = None
        # The live outputs the starting logic attached (e.g. a LiveSegmentation, a LiveModel).
        self.output: Any = None
        self.output_model: Any = None

    # ------------------------------------------------------------------ main thread
    def cancel(self) -> None:
        """Stop at the end of the current step; the callbacks see the run as cancelled now."""
        if self.state.done:
            return
        self._cancel.set()
        self._stop(RunState.CANCELLED, None)

    def poll(self) -> bool:
        """Hand pending results to the callbacks; returns True while the run is not done."""
        preview, final = None, None
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                self.progress = value
                if self.state is RunState.QUEUED:
                    self.state = RunState.RUNNING
            elif kind == "preview":
                preview = value
            else:
                final = (kind, value)
        if self.state.done:
            return False
        try:
            if final is not None:
                self._held_preview = None
                self._preview_shown.set()
                self._finish(*final)
            else:
                self._show(preview)
        except Exception as exc:  # a failure while updating the scene: stop the fit too
            logging.exception("updating the scene from a fitting step failed")
            self._cancel.set()
            self._stop(RunState.FAILED, f"updating the scene failed: {exc}")
        return not self.state.done

    def _show(self, preview: Any) -> None:
        """Show the newest preview, unless showing the last one cost so much main-thread time that the
        GUI needs a pause (its surfaces of a large segment, say): then it waits, and the worker makes
        no newer one meanwhile. Showing may take at most 1 / (1 + PREVIEW_SPACING) of the main thread."""
        if preview is not None:
            self._held_preview = preview
        if self._held_preview is None or time.monotonic() < self._next_show:
            return
        preview, self._held_preview = self._held_preview, None
        start = time.monotonic()
        if self._on_preview is not None:
            self._on_preview(preview)
        end = time.monotonic()
        self._next_show = end + PREVIEW_SPACING * (end - start)
        self._preview_shown.set()

    def wait(self, timeout: float | None = None, interval: float = 0.01) -> RunState:
        """Poll until the run is done (scripts and tests; a GUI polls from a timer instead).

        On timeout the run is cancelled (its outputs put back) and ``TimeoutError`` raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the run did not finish within {timeout} s ({self.progress.describe()})")
            time.sleep(interval)
        return self.state

    def _finish(self, kind: str, value: Any) -> None:
        if kind == "finished":
            self.result = value
            if self._on_finished is not None:
                self._on_finished(value)
            self.state = RunState.FINISHED
        elif kind == "cancelled":
            self._stop(RunState.CANCELLED, None)
        else:
            self._stop(RunState.FAILED, value)

    def _stop(self, state: RunState, error: str | None) -> None:
        self.state, self.error = state, error
        if self._on_stopped is not None:
            self._on_stopped(state, error)

    # ------------------------------------------------------------------ worker thread
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the run was cancelled (between the phases of long work)."""
        if self.cancelled:
            raise Cancelled

    def report(self, progress: Progress, make_preview: Callable[[], Any] | None = None) -> None:
        """Publish a step's progress, and ``make_preview()`` when a preview is due.

        Raises :class:`Cancelled` when the run was cancelled.
        """
        self.check()
        self._events.put(("progress", progress))
        if make_preview is None or not self._preview_shown.is_set() or time.monotonic() < self._next_preview:
            return
        start = time.monotonic()
        preview = make_preview()
        end = time.monotonic()
        self._next_preview = end + PREVIEW_SPACING * (end - start)
        self._preview_shown.clear()
        self._events.put(("preview", preview))

    def _run(self) -> None:
        if self.cancelled:
            self._events.put(("cancelled", None))
            return
        try:
            self._events.put(("finished", self._job(self)))
        except Cancelled:
            self._events.put(("cancelled", None))
        except Exception as exc:  # reaches the user as a message; the traceback goes to the log
            logging.exception("fitting failed")
            self._events.put(("failed", str(exc) or type(exc).__name__))


class FitWorker:
    """One persistent daemon thread that runs :class:`FitRun` jobs one after another."""

    def __init__(self, name: str = "inr-fit-worker"):
        self._name = name
        self._jobs: queue.Queue[FitRun | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._current: FitRun | None = None

    def submit(self, run: FitRun) -> FitRun:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(run)
        return run

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every run and let the thread finish its current step (at exit: a thread killed
        inside a PyTorch operation aborts the process)."""
        while True:
            try:
                queued = self._jobs.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                queued._cancel.set()
        if self._current is not None:
            self._current._cancel.set()
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (run := self._jobs.get()) is not None:
            self._current = run
            run._run()
            self._current = None


_shared_worker = FitWorker()
atexit.register(_shared_worker.shutdown)


def start(job: Job, **callbacks: Any) -> FitRun:
    """Queue ``job`` on the shared worker thread; ``callbacks`` as for :class:`FitRun`."""
    return _shared_worker.submit(FitRun(job, **callbacks))
