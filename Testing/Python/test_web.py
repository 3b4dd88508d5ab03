"""The browser front end end to end: ``inr-engine web`` on a free loopback port, driven in Debian's
headless Chromium with playwright, as a user clicks it.

Needs the ``web`` extra (trame-slicer) and playwright (both in the ``test`` extra) and
``/usr/bin/chromium`` (``.ci/run`` installs it, and sets ``INR_WEB_TESTS_REQUIRED=1`` so that a
missing piece fails CI instead of skipping).
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inr_engine.data import PRIORS_DIR, sample_path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("INR_WEB_TESTS_REQUIRED") == "1"
IMAGE = "hippocampus_004_image.nii.gz"
SPARSE = "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd"
START_TIMEOUT = 90.0
RUN_TIMEOUT = 180.0
VIEWS = 3  # images the page streams at least: slice views and the 3D view


def _require(module: str):
    if REQUIRED:
        return importlib.import_module(module)
    return pytest.importorskip(module)


_require("trame_slicer")
sync_api = _require("playwright.sync_api")
if not Path(CHROMIUM).is_file():
    if REQUIRED:
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

Image = pytest.importorskip("PIL.Image")  # pillow comes with trame-slicer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"inr-engine web exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"inr-engine web did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``inr-engine web`` with the shipped image given on the command line."""
    port, log = free_port(), tmp_path_factory.mktemp("web") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "inr_engine.cli", "web", "--host", "127.0.0.1",
                                    "--port", str(port), str(sample_path(IMAGE))], stdout=out, stderr=subprocess.STDOUT,
                                   env=env)
    try:
        wait_for_port(port, process, START_TIMEOUT)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        print(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.goto(server)
    # the first frames of the slice views and the 3D view (they arrive one by one)
    page.locator("img[src^='blob:']").nth(VIEWS - 1).wait_for(timeout=60_000)
    yield page
    page.close()


# ------------------------------------------------------------------ helpers
def by_id(name: str) -> str:
    return f"[data-testid={name}]"


def message(page) -> str:
    texts = page.locator(by_id("inr-message")).all_inner_texts()
    return texts[0] if texts else ""


def wait_message(page, *words: str, timeout: float = RUN_TIMEOUT) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = message(page)
        if any(word in text for word in words):
            return text
        time.sleep(0.1)
    raise TimeoutError(f"no message with {words} within {timeout} s (last: {message(page)!r})")


def wait_progress_step(page, at_least: int, timeout: float = RUN_TIMEOUT) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = page.inner_text(by_id("inr-progress"))
        if text.startswith("step ") and int(text.split()[1].split("/")[0]) >= at_least:
            return text
        time.sleep(0.05)
    raise TimeoutError(f"the run did not reach step {at_least}")


def choose(page, select: str, option: str) -> None:
    page.click(by_id(select))
    page.get_by_role("option", name=option).first.click()


def load_sample(page, name: str) -> None:
    choose(page, "inr-sample", name)
    page.click(by_id("inr-load-sample"))
    wait_message(page, f"Loaded {name}", timeout=60)


def set_steps(page, steps: int) -> None:
    page.locator(f"{by_id('inr-steps')} input").fill(str(steps))


def views(page) -> np.ndarray:
    """The views' pixels (the page right of the panels), after the frames settle."""
    time.sleep(1.5)  # a changed scene reaches the browser in about 0.3 s (a full-quality frame later)
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    return np.asarray(shot)[80:-40, 400:].astype(np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


# ------------------------------------------------------------------ tests
def test_page_shows_the_views_and_offers_the_three_tasks(page):
    assert page.locator("img[src^='blob:']").count() >= VIEWS
    assert IMAGE in page.inner_text(by_id("inr-input"))  # the file given on the command line
    page.click(by_id("inr-task"))
    page.get_by_role("option").last.wait_for()  # the menu opens a moment after the click
    options = page.get_by_role("option").all_inner_texts()
    assert options == ["MetaSeg", "NISF", "Sparse-slice shape completion"]
    page.keyboard.press("Escape")


def start_metaseg(page, steps: int) -> np.ndarray:
    """Load the image, start MetaSeg for ``steps`` steps, wait for its first live update; the views before."""
    load_sample(page, IMAGE)
    choose(page, "inr-task", "MetaSeg")
    set_steps(page, steps)
    before = views(page)
    page.click(by_id("inr-apply"))
    page.wait_for_selector(by_id("inr-updates"), timeout=60_000)  # a preview reached the scene
    return before


def test_metaseg_updates_the_views_between_steps_and_lists_its_segments(page):
    before = start_metaseg(page, 40)
    first = views(page)
    assert wait_progress_step(page, 2)
    wait_message(page, "Done")
    after = views(page)
    assert differs(before, first) > 0.5, "no segment appeared in the views during the fit"
    assert differs(first, after) > 0.05, "the views did not change between the first live update and the result"
    names = page.inner_text(by_id("inr-outputs"))
    assert "anterior" in names and "posterior" in names
    assert page.locator(by_id("inr-download-nrrd")).is_enabled()


def test_cancel_puts_the_scene_back(page):
    before = start_metaseg(page, 5000)
    assert differs(before, views(page)) > 0.5  # the preview is showing
    page.click(by_id("inr-cancel"))
    assert "Cancelled" in wait_message(page, "Cancelled", timeout=60)
    assert page.locator(by_id("inr-outputs")).count() == 0
    assert differs(before, views(page)) < 0.05, "the views differ from before the run"


def test_completion_shows_the_model_and_downloads_what_the_cli_writes(page, tmp_path):
    from inr_engine.cli import main
    from inr_engine.io import read_volume

    load_sample(page, SPARSE)
    assert "Sparse-slice shape completion" in page.inner_text(by_id("inr-task"))  # chosen for a label map
    set_steps(page, 0)  # the prior's default, as on the command line (the server's page keeps other tests' choice)
    before = views(page)
    page.click(by_id("inr-apply"))
    wait_message(page, "Done")
    assert differs(before, views(page)) > 0.5
    assert page.locator(by_id("inr-download-stl")).is_enabled()
    files = {}
    for kind in ("nifti", "stl"):
        with page.expect_download() as download:
            page.click(by_id(f"inr-download-{kind}"))
        files[kind] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[kind])
    assert files["nifti"].name == "hn_0522c0331_parotid_lt_sparse_axial_every4_completed.nii.gz"
    assert files["stl"].stat().st_size > 10_000

    cli_output = tmp_path / "cli.nii.gz"
    assert main(["complete", str(sample_path(SPARSE)), "--output", str(cli_output), "--quiet"]) == 0
    ours, cli = read_volume(files["nifti"]), read_volume(cli_output)
    np.testing.assert_allclose(ours.affine, cli.affine, atol=1e-4)
    assert np.array_equal(ours.array > 0, cli.array > 0), "the page's completion differs from the command line's"


def paint(page, view, x: float, y: float, radius: float = 30) -> None:
    """One stroke of the Paint effect around (x, y), fractions of ``view``'s box."""
    box = view.bounding_box()
    cx, cy = box["x"] + box["width"] * x, box["y"] + box["height"] * y
    page.mouse.move(cx - radius, cy)
    page.mouse.down()
    for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, 0), (0, 0), (1, 0)):
        page.mouse.move(cx + dx * radius, cy + dy * radius, steps=5)
    page.mouse.up()
    time.sleep(0.5)


def next_slices(page, count: int) -> None:
    page.locator(".v-slider-thumb").first.focus()  # the main view's slice slider
    for _ in range(count):
        page.keyboard.press("ArrowRight")
    time.sleep(0.5)


def test_slices_drawn_in_the_page_complete_and_complete_again_after_an_edit(page):
    load_sample(page, IMAGE)
    page.locator("button:has(i.mdi-brush)").first.click()  # trame-slicer's segment editor
    add = page.get_by_text("Add segment")
    if add.count():
        add.click()
    else:  # the server's scene still has the segment an earlier test drew
        page.locator("button:has(i.mdi-plus)").first.click()
    page.locator("button:has(i.mdi-brush)").nth(2).click()  # its Paint effect
    view = page.locator("img[src^='blob:']").first
    for _ in range(3):
        paint(page, view, 0.6, 0.6)
        next_slices(page, 3)
    page.locator("button:has(i.mdi-brain)").first.click()  # back to the INR panel
    choose(page, "inr-task", "Sparse-slice shape completion")
    set_steps(page, 0)
    page.click(by_id("inr-apply"))
    wait_message(page, "Done")
    first = views(page)
    names = page.inner_text(by_id("inr-outputs"))

    page.locator("button:has(i.mdi-brush)").first.click()
    page.locator("button:has(i.mdi-brush)").nth(2).click()
    paint(page, view, 0.55, 0.55, radius=40)  # one more slice, larger
    page.locator("button:has(i.mdi-brain)").first.click()
    page.click(by_id("inr-apply"))
    wait_message(page, "Done")
    assert differs(first, views(page)) > 0.1, "completing the edited slices changed nothing"
    assert page.inner_text(by_id("inr-outputs")) == names  # the same output segment, rewritten


def test_bad_input_is_a_message_and_changes_nothing(page, tmp_path):
    import nibabel as nib

    load_sample(page, IMAGE)
    before = views(page)
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), four_d)
    page.locator("input[type=file]").first.set_input_files(str(four_d))
    assert "3D" in wait_message(page, "four_d", timeout=60)
    assert IMAGE in page.inner_text(by_id("inr-input"))

    choose(page, "inr-task", "Sparse-slice shape completion")  # an image, and nothing drawn on it
    page.click(by_id("inr-apply"))
    assert "segment" in wait_message(page, "segment", timeout=30)

    own = tmp_path / "my_adrenal.safetensors"  # a prior of the user's: here a copy of a bundled one
    shutil.copy(PRIORS_DIR / "adrenal.safetensors", own)
    page.locator(f"{by_id('inr-prior-upload')} input[type=file]").set_input_files(str(own))
    assert "checked and added" in wait_message(page, "checked and added", "prior not added", timeout=60)
    assert "my_adrenal.safetensors (uploaded)" in page.inner_text(by_id("inr-prior"))
    assert "Sparse-slice shape completion" in page.inner_text(by_id("inr-task"))  # the prior's task

    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"not a prior at all")
    page.locator(f"{by_id('inr-prior-upload')} input[type=file]").set_input_files(str(foreign))
    assert "prior not added" in wait_message(page, "prior not added", timeout=30)

    load_sample(page, SPARSE)
    choose(page, "inr-task", "MetaSeg")  # a label map given to segmentation
    page.click(by_id("inr-apply"))
    assert "label map" in wait_message(page, "is a label map", timeout=30)
    assert page.locator(by_id("inr-outputs")).count() == 0
    load_sample(page, IMAGE)
    assert differs(before, views(page)) < 0.05
