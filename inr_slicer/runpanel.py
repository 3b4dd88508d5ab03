"""GUI helpers shared by the extension's module widgets.

A :class:`RunPanel` owns the Apply / Cancel buttons, the progress bar and the status label of
a module panel. Given a :class:`~inr_slicer.worker.FitRun`, it polls the run from a ``QTimer``
on the main thread (which is where the run's callbacks change the scene), shows its progress,
cancels it on request, reports a failure, restores the buttons and hands the finished run to
the widget. A :class:`PriorChooser` fills a prior combo box (the bundled priors, a chosen prior
file, "Browse..."); :func:`showIn3D` shows a finished output. None of them computes anything.

Slicer application only (imports ``qt`` and ``slicer``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import qt
import slicer
from slicer.i18n import tr as _

from .worker import FitRun, RunState

POLL_INTERVAL_MS = 50


class RunPanel:
    """Drives one run at a time: polling, progress, Cancel, error display, button states.

    ``failureMessage`` heads the error shown when a run fails; ``lockedWidgets`` (e.g. the
    input sections) are disabled while a run is going on.
    """

    def __init__(self, progressBar, statusLabel, applyButton, cancelButton, failureMessage: str = "",
                 lockedWidgets: Sequence = (), pollInterval: int = POLL_INTERVAL_MS):
        self.progressBar, self.statusLabel = progressBar, statusLabel
        self.applyButton, self.cancelButton = applyButton, cancelButton
        self.failureMessage = failureMessage or _("Fitting failed.")
        self.lockedWidgets = list(lockedWidgets)
        self.run: FitRun | None = None
        self._done = True  # the run (if any) was handed back
        self._onDone: Callable[[FitRun], None] | None = None
        self._applyAllowed = False
        self._timer = qt.QTimer()
        self._timer.setInterval(pollInterval)
        self._timer.timeout.connect(self._poll)
        self.cancelButton.clicked.connect(self._onCancelClicked)
        self.progressBar.setRange(0, 1)
        self.progressBar.setValue(0)
        self.statusLabel.text = ""
        self._updateButtons()

    @property
    def running(self) -> bool:
        """A run was started and not handed back yet."""
        return not self._done

    def setApplyAllowed(self, allowed: bool, toolTip: str = "") -> None:
        """Whether the inputs allow Apply; Apply stays disabled while a run is going on anyway."""
        self._applyAllowed = bool(allowed)
        self.applyButton.toolTip = toolTip
        self._updateButtons()

    def start(self, run: FitRun, onDone: Callable[[FitRun], None] | None = None) -> None:
        """Follow ``run`` until it is done, then call ``onDone(run)`` (whatever its final state)."""
        if self.running:
            raise RuntimeError("a run is already going on in this panel")
        self.run, self._onDone, self._done = run, onDone, False
        self.progressBar.setRange(0, 0)  # busy until the first step reports the total
        self.statusLabel.text = _("Preparing...")
        self._updateButtons()
        self._timer.start()

    def cancel(self) -> None:
        """Cancel the run (its output goes back as it was) and hand it back; the panel is ready again."""
        if self.running:
            self.run.cancel()
            self._poll()

    def stop(self) -> None:
        """Cancel the run and stop polling without calling back (module cleanup)."""
        self._timer.stop()
        if self.running:
            self.run.cancel()
        self._done, self._onDone = True, None

    # ------------------------------------------------------------------ internals
    def _onCancelClicked(self) -> None:
        self.cancel()

    def _poll(self) -> None:
        run = self.run
        if run is None or self._done:
            self._timer.stop()
            return
        alive = run.poll()
        self._showProgress(run)
        if alive:
            return
        self._timer.stop()
        self._done = True
        self._updateButtons()
        onDone, self._onDone = self._onDone, None
        if run.state is RunState.FAILED:
            slicer.util.errorDisplay(f"{self.failureMessage}\n\n{run.error}")
        if onDone is not None:
            onDone(run)

    def _showProgress(self, run: FitRun) -> None:
        progress = run.progress
        if progress.total > 0:
            self.progressBar.setRange(0, progress.total)
            self.progressBar.setValue(min(progress.step, progress.total))
        elif run.state.done:
            self.progressBar.setRange(0, 1)
            self.progressBar.setValue(0)
        if run.state is RunState.QUEUED:
            self.statusLabel.text = _("Preparing...")
        elif run.state is RunState.RUNNING:
            self.statusLabel.text = progress.describe()
        elif run.state is RunState.FINISHED:
            text = _("Finished {step} steps in {seconds:.1f} s").format(step=progress.step, seconds=progress.elapsed)
            if progress.loss is not None:
                text += _(", final loss {loss:.4f}").format(loss=progress.loss)
            self.statusLabel.text = text
        elif run.state is RunState.CANCELLED:
            if progress.total:
                self.statusLabel.text = _("Cancelled after {step} of {total} steps; the output was put back.").format(
                    step=progress.step, total=progress.total)
            else:
                self.statusLabel.text = _("Cancelled; the output was put back.")
        else:
            self.statusLabel.text = _("Failed: {error}").format(error=run.error)

    def _updateButtons(self) -> None:
        running = self.running
        self.applyButton.enabled = self._applyAllowed and not running
        self.cancelButton.enabled = running
        for widget in self.lockedWidgets:
            widget.enabled = not running


def showIn3D(node) -> None:
    """Show a finished output (segmentation or model) in the views, the first 3D view centred on it."""
    if node is None:
        return
    displayNode = node.GetDisplayNode()
    if displayNode is not None:
        displayNode.SetVisibility(True)
        displayNode.SetVisibility3D(True)
    layoutManager = slicer.app.layoutManager()
    if layoutManager is not None and layoutManager.threeDViewCount > 0:
        layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


class PriorChooser:
    """A prior combo box: the bundled priors (the default first, standing for ""), the chosen prior
    file if any, and "Browse..." to choose one. The user's choice goes to ``onChosen(prior)``;
    the widget shows the current choice with :meth:`update` (e.g. when its parameter node changes).
    """

    BROWSE = "__browse__"

    def __init__(self, comboBox, onChosen: Callable[[str], None], dialogTitle: str = ""):
        self.comboBox, self.onChosen = comboBox, onChosen
        self.dialogTitle = dialogTitle or _("Choose a prior file")
        self._choices: list[str] = []
        self._prior = ""
        self.comboBox.connect("activated(int)", self._onActivated)

    def update(self, choices: Sequence[str], prior: str) -> None:
        """Show ``choices`` (bundled prior names, the default first) with ``prior`` selected."""
        self._choices, self._prior = list(choices), prior or ""
        combo = self.comboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for index, name in enumerate(self._choices):
            if index == 0:
                combo.addItem(_("{name} (default)").format(name=name), "")
            else:
                combo.addItem(name, name)
        if not self._choices:
            combo.addItem(_("(no bundled prior)"), "")
        current = "" if self._choices and self._prior == self._choices[0] else self._prior
        if current and current not in self._choices:
            combo.addItem(os.path.basename(current), current)  # a prior file
            combo.setItemData(combo.count - 1, current, qt.Qt.ToolTipRole)
        combo.addItem(_("Browse..."), self.BROWSE)
        combo.setCurrentIndex(max(combo.findData(current), 0))
        combo.blockSignals(wasBlocked)

    def _onActivated(self, index: int) -> None:
        prior = self.comboBox.itemData(index) or ""
        if prior == self.BROWSE:
            start = os.path.dirname(self._prior) if os.path.isfile(self._prior) else ""
            prior = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), self.dialogTitle, start,
                                                   _("INR priors (*.safetensors);;All files (*)"))
            if not prior:  # dialog cancelled: keep the current prior
                self.update(self._choices, self._prior)
                return
        self.onChosen(prior)
        self.update(self._choices, self._prior)  # the widget's update (if any) has set self._prior
