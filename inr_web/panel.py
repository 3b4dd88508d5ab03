"""The INR panel of the web page: widgets bound to ``server.state`` keys, no behaviour.

Every key the panel reads or writes is an ``inr_*`` field of :class:`PanelState`; the buttons call
the controller functions :class:`~inr_web.app.InrWebApp` defines (``ctrl.inr_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trame.widgets import html
from trame.widgets import vuetify3 as v3

DEVICES = ["auto", "cpu", "cuda"]


@dataclass
class PanelState:
    """The panel's state keys (``inr_`` + field name) and their starting values."""

    samples: list = field(default_factory=list)  # [{title, value}] of the shipped samples
    sample: str | None = None
    tasks: list = field(default_factory=list)  # [{title, value}]
    task: str = "metaseg"
    priors: list = field(default_factory=list)  # [{title, value}] for the task
    prior: str = ""
    prior_upload: object = None  # the browser's file (name, content)
    steps: int = 0  # 0 = the prior's default
    device: str = "auto"
    input_text: str = "Nothing loaded: open a file, or load a sample."
    running: bool = False
    progress: float = 0.0  # percent
    progress_text: str = ""
    message: str = ""
    message_type: str = "info"  # info, success, warning, error
    outputs: list = field(default_factory=list)  # [{name, color}] of the run's output segments
    updates: int = 0  # previews of this run shown in the scene
    has_result: bool = False
    has_model: bool = False
    file_names: dict = field(default_factory=dict)  # nrrd, nifti, stl -> the download's file name

    def initial(self) -> dict:
        return {f"inr_{name}": value for name, value in self.__dict__.items()}


def build_panel(ctrl) -> v3.VCard:
    """The panel (inside the drawer). ``ctrl`` is the server's controller."""
    with v3.VCard(flat=True, classes="pa-2", **_test_id("inr-panel")) as card:
        v3.VCardTitle("INR segmentation", classes="px-1")
        with v3.VRow(dense=True, classes="ma-0 align-center"):
            v3.VSelect(label="Sample", items=("inr_samples",), v_model=("inr_sample",), density="compact",
                       hide_details=True, classes="flex-grow-1", **_test_id("inr-sample"))
            v3.VBtn("Load", click=ctrl.inr_load_sample, disabled=("!inr_sample || inr_running",), classes="ml-2",
                    **_test_id("inr-load-sample"))
        html.Div("{{ inr_input_text }}", classes="text-caption my-2", **_test_id("inr-input"))
        v3.VSelect(label="Task", items=("inr_tasks",), v_model=("inr_task",), density="compact",
                   disabled=("inr_running",), **_test_id("inr-task"))
        v3.VSelect(label="Prior", items=("inr_priors",), v_model=("inr_prior",), density="compact",
                   disabled=("inr_running",), **_test_id("inr-prior"))
        v3.VFileInput(label="Upload a prior (.safetensors)", v_model=("inr_prior_upload",), accept=".safetensors",
                      density="compact", disabled=("inr_running",), show_size=True, **_test_id("inr-prior-upload"))
        with v3.VRow(dense=True, classes="ma-0"):
            v3.VTextField(label="Steps (0: the prior's)", v_model_number=("inr_steps",), type="number", min=0,
                          density="compact", disabled=("inr_running",), classes="mr-2", **_test_id("inr-steps"))
            v3.VSelect(label="Device", items=("inr_devices", DEVICES), v_model=("inr_device",), density="compact",
                       disabled=("inr_running",), **_test_id("inr-device"))
        with v3.VRow(dense=True, classes="ma-0 mb-2"):
            v3.VBtn("Apply", color="primary", click=ctrl.inr_apply, disabled=("inr_running",), classes="mr-2",
                    **_test_id("inr-apply"))
            v3.VBtn("Cancel", click=ctrl.inr_cancel, disabled=("!inr_running",), **_test_id("inr-cancel"))
        v3.VProgressLinear(model_value=("inr_progress",), height=6, color="primary", classes="mb-1",
                           indeterminate=("inr_running && inr_progress === 0",))
        html.Div("{{ inr_progress_text }}", classes="text-caption", **_test_id("inr-progress"))
        html.Div("{{ inr_updates }} live update(s) shown", v_if=("inr_updates",), classes="text-caption mb-2",
                 **_test_id("inr-updates"))
        v3.VAlert(text=("inr_message",), type=("inr_message_type",), v_if=("inr_message",), density="compact",
                  variant="tonal", classes="mb-2", **_test_id("inr-message"))
        with html.Div(v_if=("inr_outputs.length",), classes="mb-2", **_test_id("inr-outputs")):
            html.Div("Output segments", classes="text-subtitle-2")
            with html.Div(v_for="out in inr_outputs", key="out.name", classes="d-flex align-center"):
                html.Span(style=("{background: out.color, width: '12px', height: '12px', display: 'inline-block',"
                                 " marginRight: '6px', borderRadius: '2px'}",))
                html.Span("{{ out.name }}", classes="text-body-2")
        with v3.VRow(dense=True, classes="ma-0"):
            for fmt, label in (("nrrd", "NRRD"), ("nifti", "NIfTI")):
                v3.VBtn(label, prepend_icon="mdi-download", size="small", classes="mr-1", disabled=("!inr_has_result",),
                        click=_download(fmt, f"trigger('inr_segmentation_file', ['{fmt}'])"),
                        **_test_id(f"inr-download-{fmt}"))
            v3.VBtn("STL", prepend_icon="mdi-download", size="small", disabled=("!inr_has_model",),
                    click=_download("stl", "trigger('inr_mesh_file')"), **_test_id("inr-download-stl"))
    return card


def _download(kind: str, content: str) -> str:
    """A click handler that saves what the trigger expression ``content`` returns under its file name."""
    return f"utils.download(inr_file_names.{kind}, {content}, 'application/octet-stream')"


def _test_id(name: str) -> dict:
    """A ``data-testid`` attribute (trame passes only known attributes as keywords): what tests click and read."""
    return {"raw_attrs": [f'data-testid="{name}"']}
