"""The browser front end's responsiveness: server start, page load, step-to-frame latency, memory.

For a small volume (the shipped hippocampus MRI, MetaSeg) and a real-size one (a held-out left
lung of a head-and-neck CT on its 512x512xN grid, annotated every 4th slice, shape completion),
each in a fresh ``inr-engine web`` server driven by headless Chromium (playwright, Debian's
``/usr/bin/chromium``):

* ``start``: from launching the server to its port accepting connections;
* ``page load``: from opening the page to every view's first frame;
* ``step to frame``: from the page learning that a fitting step's preview is in the scene (the
  panel's update counter changes) to the next new frame of the main view (a MutationObserver on
  its image), per live update, median;
* ``run``: from Apply to the result on the page; ``server peak MB``: the server's peak resident
  memory (``VmHWM``) at the end.

Run: ``python -m benchmarks.web --data-root ../shared/data`` (needs the ``web`` and ``test`` extras).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from inr_engine.data import sample_path

CHROMIUM = "/usr/bin/chromium"
SCAN, ORGAN, EVERY = "0522c0331", "Lung-Lt", 4

# Timestamps of the update counter's and the main view's changes, recorded in the page.
OBSERVER = """() => {
  window.__marks = {updates: [], frames: []};
  const counter = () => document.querySelector('[data-testid=inr-updates]');
  new MutationObserver(() => window.__marks.updates.push([performance.now(), counter() ? counter().innerText : ''])).
    observe(document.querySelector('[data-testid=inr-panel]'), {subtree: true, childList: true, characterData: true});
  const view = document.querySelector("img[src^='blob:']");
  new MutationObserver(() => window.__marks.frames.push(performance.now())).
    observe(view, {attributes: true, attributeFilter: ['src']});
}"""


def parse_args(argv=None):
    p = harness.parser(__doc__, "web")
    p.add_argument("--repeats", type=int, default=3, help="servers started per case (medians)")
    p.add_argument("--screenshots", type=Path, help="also save a screenshot of each case (mid-run and result) here")
    return harness.parse(p, argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(file: Path, threads: int | None) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "inr_engine.cli", "web", "--port", str(port), str(file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"inr-engine web exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}/", time.perf_counter() - t0
        time.sleep(0.05)


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def step_to_frame(marks: dict) -> list[float]:
    """For each change of the update counter, the delay to the next frame of the main view (ms)."""
    frames = np.asarray(marks["frames"])
    seen, delays = "", []
    for t, text in marks["updates"]:
        if text and text != seen:
            seen = text
            later = frames[frames > t]
            if len(later):
                delays.append(float(later[0] - t))
    return delays


def measure(browser, file: Path, task: str, steps: int, threads: int | None, shots: Path | None = None) -> dict:
    """One fresh server on ``file``: ``task`` run for ``steps`` (0: the prior's); with ``shots``, the page
    is saved there as ``<shots>_live.jpg`` at its first live update and ``<shots>_result.jpg`` at the end."""
    process, url, start_s = start_server(file, threads)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function("document.querySelectorAll(\"img[src^='blob:']\").length >= 4", timeout=120_000)
        load_s = time.perf_counter() - t0
        page.wait_for_function("document.querySelector('[data-testid=inr-input]').innerText.includes('x')")
        page.click("[data-testid=inr-task]")
        page.get_by_role("option", name=task).first.click()
        page.locator("[data-testid=inr-steps] input").fill(str(steps))
        page.evaluate(OBSERVER)
        t0 = time.perf_counter()
        page.click("[data-testid=inr-apply]")
        if shots is not None:
            page.wait_for_selector("[data-testid=inr-updates]", timeout=600_000)
            time.sleep(0.5)
            page.screenshot(path=f"{shots}_live.jpg", type="jpeg", quality=80)
        page.wait_for_function("(document.querySelector('[data-testid=inr-message]') || {innerText: ''})"
                               ".innerText.startsWith('Done')", timeout=600_000)
        run_s = time.perf_counter() - t0
        time.sleep(1.0)  # the result's last frames
        delays = step_to_frame(page.evaluate("window.__marks"))
        if shots is not None:
            page.screenshot(path=f"{shots}_result.jpg", type="jpeg", quality=80)
        page.close()
        return {"start_s": start_s, "load_s": load_s, "run_s": run_s, "updates": len(delays),
                "step_to_frame_ms": delays, "peak_mb": peak_mb(process.pid)}
    finally:
        process.terminate()
        process.wait(30)


def real_size_input(data_root: Path, folder: Path) -> Path:
    from inr_engine.io import read_volume, write_volume
    from inr_engine.shape.slices import sparsify
    from inr_engine.shape.training import plane_axis

    volume = read_volume(data_root / "deepmind_hn_oar" / "oncologist" / SCAN / "segmentations" / f"{ORGAN}.nrrd")
    sparse, _ = sparsify(volume.array > 0, plane_axis(volume.affine, "axial"), EVERY)
    return write_volume(folder / f"{SCAN}_{ORGAN}_every{EVERY}.nrrd", sparse.astype(np.uint8), volume)


def summarise(runs: list[dict]) -> dict:
    delays = [d for r in runs for d in r["step_to_frame_ms"]]
    return {key: float(np.median([r[key] for r in runs])) for key in ("start_s", "load_s", "run_s", "peak_mb")} | {
        "updates": int(np.median([r["updates"] for r in runs])),
        "step_to_frame_ms": float(np.median(delays)) if delays else None,
        "step_to_frame_ms_max": float(np.max(delays)) if delays else None, "runs": runs}


def table(results: dict) -> str:
    lines = [f"# Web front end: start, page load, step-to-frame latency, memory\n\n`{results['command']}`\n",
             f"Medians over {results['repeats']} fresh servers each; headless Chromium on the same machine "
             "(software rendering, llvmpipe).\n",
             "| case | grid | start s | page load s | run s | live updates | step to frame ms (median / max) "
             "| server peak MB |", "|---|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        s = case["summary"]
        latency = ("-" if s["step_to_frame_ms"] is None
                   else f"{s['step_to_frame_ms']:.0f} / {s['step_to_frame_ms_max']:.0f}")
        lines.append(f"| {case['name']} | {case['grid']} | {s['start_s']:.1f} | {s['load_s']:.1f} | {s['run_s']:.1f} "
                     f"| {s['updates']} | {latency} | {s['peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    from inr_engine.io import read_volume

    args = parse_args(argv)
    results = {"command": harness.command(), "repeats": args.repeats, "cases": []}
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        cases = [("small: hippocampus MRI, MetaSeg (20 steps)", sample_path("hippocampus_004_image.nii.gz"),
                  "MetaSeg", 20, "web_metaseg"),
                 (f"real size: {ORGAN} of CT {SCAN}, every {EVERY}th slice, completion",
                  real_size_input(args.data_root, Path(folder)), "Sparse-slice shape completion", 0, "web_completion")]
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
        for name, file, task, steps, shot in cases:
            harness.log(name)
            runs = [measure(browser, file, task, steps, args.threads,
                            args.screenshots / shot if args.screenshots and n == 0 else None)
                    for n in range(args.repeats)]
            grid = "x".join(map(str, read_volume(file).shape))
            results["cases"].append({"name": name, "grid": grid, "summary": summarise(runs)})
        browser.close()
    harness.write_results(args.out, "web", results, table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
