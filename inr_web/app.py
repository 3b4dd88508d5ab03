"""The browser front end: trame-slicer's viewer and segment editor, with the INR panel.

trame-slicer gives the scene, the slice and 3D views (rendered on the server, sent as images),
file upload, layouts and the segment editor. This module wires them to a :class:`WebSession`
and the panel. Threads: the fit runs on the worker thread of :mod:`inr_slicer.worker`; an
asyncio task on trame's event loop polls it, so every scene change (a preview, the result, a
cancel's restore) happens on the loop, as VTK and trame-rca need.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from trame.app import TrameApp
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import (
    LayoutButtonLogic,
    MprInteractionButtonLogic,
    SegmentEditorLogic,
    VolumePropertyLogic,
)
from trame_slicer.app.ui import ControlButton, SegmentationAppUI, SegmentEditorUI, VolumePropertyUI
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.utils import write_client_files_to_dir

from inr_engine.data import sample_path, samples
from inr_engine.priors import DEFAULT_PRIORS, SHAPE_COMPLETION_TASK
from inr_slicer.worker import FitRun, RunState

from .panel import PanelState, build_panel
from .session import SEGMENTATION_FORMATS, TASKS, WebSession

POLL_SECONDS = 0.05  # how often the loop looks at the worker: previews are shown within this of being ready
PANEL = "InrPanel"  # the drawer's tool name for the panel
USER_ERRORS = (ValueError, OSError)  # VolumeError, PriorError, InputError, SliceError...: shown in the page

log = logging.getLogger(__name__)


class InrWebApp(TrameApp):
    """One server, one scene (every browser tab shows it). ``files`` are loaded when the server is ready."""

    def __init__(self, server=None, files: tuple[str, ...] = ()):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        self.session = WebSession(self.slicer)
        self._files = [str(f) for f in files]
        register_rca_factories(self.slicer.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer)
        self.volume_logic = VolumePropertyLogic(self.server, self.slicer)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer)
        self.mpr_logic = MprInteractionButtonLogic(self.server, self.slicer)
        self._init_state()
        self._build_ui()
        self.ctrl.on_server_ready.add(self._on_ready)

    # ------------------------------------------------------------------ page
    def _init_state(self) -> None:
        self.state.update(PanelState(
            samples=[{"title": f"{s['file']} ({s['kind']})", "value": s["file"]} for s in samples()],
            tasks=[{"title": title, "value": task} for task, title in TASKS.items()],
            file_names={},
        ).initial())
        self.state.update({"trame__title": "INR segmentation", "trame__favicon": None})
        self._on_task(self.state.inr_task)
        self.state.change("inr_task")(self._on_task)
        self.state.change("inr_prior_upload")(self._on_prior_upload)
        for name in ("apply", "cancel", "load_sample"):
            self.ctrl[f"inr_{name}"] = getattr(self, name)
        self.server.trigger("inr_segmentation_file")(self.segmentation_file)
        self.server.trigger("inr_mesh_file")(self.mesh_file)

    def _build_ui(self) -> None:
        self.ui = SegmentationAppUI(self.server, self.layout_logic.layout_manager)
        layout = self.ui.layout
        layout.title.set_text("INR segmentation")
        with layout:
            with layout.drawer:
                panel = build_panel(self.ctrl)
                panel.v_if = (f"{layout.typed_state.name.active_tool} === '{PANEL}'",)
            with layout.toolbar:
                ControlButton(name="INR segmentation", icon="mdi-brain", click=self._toggle_panel, classes="mt-1",
                              active=(f"{layout.typed_state.name.active_tool} === '{PANEL}'",))
        self.editor_logic.set_ui(self.ui.tool_registry[SegmentEditorUI])
        self.volume_logic.set_ui(self.ui.tool_registry[VolumePropertyUI])
        self.layout_logic.set_ui(self.ui.layout_button)
        self.mpr_logic.set_ui(self.ui.mpr_interaction_button)
        self.ui.load_volume_items_buttons.on_load_volume.connect(self._on_upload)
        self.ui.download_scene_button.set_download_callback(self._scene_file)
        self._show_panel()

    def _toggle_panel(self) -> None:
        data = self.ui.layout.typed_state.data
        visible = not (data.is_drawer_visible and data.active_tool == PANEL)
        data.is_drawer_visible, data.active_tool = visible, PANEL if visible else None

    def _show_panel(self) -> None:
        data = self.ui.layout.typed_state.data
        data.is_drawer_visible, data.active_tool = True, PANEL

    def _message(self, text: str, kind: str = "info") -> None:
        self.state.update({"inr_message": text, "inr_message_type": kind})

    # ------------------------------------------------------------------ loading
    def _on_ready(self, **_) -> None:
        for file in self._files:
            self.load(file)

    def load(self, path: str | Path) -> bool:
        """Load a file into the scene (or say in the page why not); True when loaded."""
        with self.state:
            try:
                volume = self.session.load(path)
            except USER_ERRORS as exc:  # named by the file's name, not by where an upload was kept
                text = _one_line(exc).replace(str(path), Path(path).name)
                self._message(text if Path(path).name in text else f"{Path(path).name}: {text}", "error")
                return False
            self.editor_logic.on_volume_changed(volume)
            self.ui.layout.typed_state.data.is_volume_loaded = True
            loaded = self.session.loaded
            what = "label map: draw or edit its segment, then complete it" if loaded.is_labelmap else "image"
            self.state.inr_input_text = f"{loaded.path.name} ({'x'.join(map(str, loaded.volume.shape))}, {what})"
            if loaded.is_labelmap:
                self.state.inr_task = SHAPE_COMPLETION_TASK
            self._clear_result()
            self._message(f"Loaded {loaded.path.name}.", "success")
            self._show_panel()
        return True

    def load_sample(self) -> None:
        if self.state.inr_sample:
            self.load(sample_path(self.state.inr_sample))

    def _on_upload(self, files: list[dict]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            for path in write_client_files_to_dir(files, folder)[:1]:  # one volume at a time
                self.load(path)

    def _on_task(self, inr_task, **_) -> None:
        choices = self.session.prior_choices(inr_task)
        self.state.inr_priors = choices
        default = DEFAULT_PRIORS.get(inr_task)
        self.state.inr_prior = choices[0]["value"] if choices else (default or "")

    def _on_prior_upload(self, inr_prior_upload, **_) -> None:
        if not inr_prior_upload:
            return
        upload = inr_prior_upload[0] if isinstance(inr_prior_upload, list) else inr_prior_upload
        try:
            task, path = self.session.add_prior(upload.get("name", "prior"), _upload_bytes(upload))
        except USER_ERRORS as exc:
            self._message(f"prior not added: {_one_line(exc)}", "error")
            return
        finally:
            self.state.inr_prior_upload = None
        if task != self.state.inr_task:
            self.state.inr_task = task
        self._on_task(task)
        self.state.inr_prior = path
        self._message(f"Prior {upload.get('name')} checked and added ({TASKS.get(task, task)}).", "success")

    # ------------------------------------------------------------------ runs
    def apply(self) -> None:
        """Start the chosen task; bad input is a message and leaves the scene as it was."""
        try:
            steps = int(self.state.inr_steps or 0)
            run = self.session.start(self.state.inr_task, self.state.inr_prior or "", steps, self.state.inr_device)
        except USER_ERRORS as exc:
            self._message(_one_line(exc), "error")
            return
        self.state.update({"inr_running": True, "inr_progress": 0, "inr_progress_text": "starting...",
                           "inr_outputs": [], "inr_updates": 0})
        self._message(f"{TASKS[self.state.inr_task]} running...", "info")
        asyncio.get_event_loop().create_task(self._watch(run))

    def cancel(self) -> None:
        self.session.cancel()

    async def _watch(self, run: FitRun) -> None:
        """Poll the run on the event loop: previews and the result change the scene here."""
        while True:
            writes = _writes(run)
            alive = run.poll()
            with self.state:
                self._show_progress(run)
                if _writes(run) > writes:
                    self.state.inr_updates += 1
            if not alive:
                break
            await asyncio.sleep(POLL_SECONDS)
        self.session.finish(run)
        with self.state:
            self.state.inr_running = False
            if run.state is RunState.FINISHED:
                self._show_result()
            elif run.state is RunState.CANCELLED:
                self.state.update({"inr_outputs": [], "inr_progress": 0, "inr_progress_text": ""})
                self._message("Cancelled: the scene is as it was before the run.", "warning")
            else:
                self.state.inr_outputs = []
                self._message(f"Failed: {_one_line(run.error or 'unknown error')} (the scene is as it was)", "error")

    def _show_progress(self, run: FitRun) -> None:
        progress = run.progress
        if progress.total:
            self.state.inr_progress = 100.0 * progress.step / progress.total
            self.state.inr_progress_text = progress.describe()
        output = run.output.node if run.output is not None else None
        if output is not None and not self.state.inr_outputs:
            self.state.inr_outputs = _segments(output)

    def _show_result(self) -> None:
        outcome, loaded = self.session.outcome, self.session.loaded
        names = {fmt: self.session.result_name(suffix) for fmt, suffix in SEGMENTATION_FORMATS.items()}
        self.state.update({
            "inr_has_result": True,
            "inr_has_model": outcome.surface is not None,
            "inr_file_names": {**names, "stl": self.session.result_name(".stl")},
            "inr_outputs": _segments(self.session.run.output.node),
        })
        self._message(f"Done: {TASKS[outcome.task]} on {loaded.path.name}.", "success")

    def _clear_result(self) -> None:
        self.state.update({"inr_has_result": False, "inr_has_model": False, "inr_outputs": [], "inr_progress": 0,
                           "inr_progress_text": ""})

    # ------------------------------------------------------------------ downloads
    def segmentation_file(self, fmt: str):
        return self.server.protocol.addAttachment(self.session.segmentation_file(fmt)[1])

    def mesh_file(self):
        return self.server.protocol.addAttachment(self.session.mesh_file()[1])

    def _scene_file(self):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "scene.mrb"
            self.slicer.io_manager.write_scene(path)
            return self.server.protocol.addAttachment(path.read_bytes())


def _writes(run: FitRun) -> int:
    """How often the run's output segmentation was written (each preview once)."""
    return run.output.writes if run.output is not None else 0


def _segments(node) -> list[dict]:
    segmentation = node.GetSegmentation()
    out = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        r, g, b = (int(255 * c) for c in segment.GetColor())
        out.append({"name": segment.GetName(), "color": f"#{r:02x}{g:02x}{b:02x}"})
    return out


def _upload_bytes(upload: dict) -> bytes:
    content = upload.get("content", b"")
    return b"".join(content) if isinstance(content, list) else bytes(content)


def _one_line(exc) -> str:
    return " ".join(str(exc).split())
