"""A real napari Viewer (Qt) under Xvfb: a converted demo tissue with its masks, and a screenshot that is not blank.

The viewer runs in a child process on a private Xvfb display, so the display can be stopped after
Qt has let go of it. Skipped, with the reason, where no display can be had (no Xvfb binary, no Qt
binding): the test command installs both where it can (``scripts/test.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spora_zarr import ConvertOptions, convert_cohort
from spora_zarr.demo import make_demo_cohort

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "napari_demo_T01.png"

VIEW = r"""
import json, sys
import napari
from spora_zarr.napari import CohortBrowser, CohortWidget
store, shot = sys.argv[1], sys.argv[2]
viewer = napari.Viewer(show=True)
browser = CohortBrowser(viewer, store, modalities=["imc"], tiles=None)
layers = browser.show("T01")
viewer.window.add_dock_widget(CohortWidget(viewer, browser=browser), name="spora cohort", area="right")
viewer.reset_view()
viewer.screenshot(shot, canvas_only=True, flash=False)
state = {layer.name: [layer.__class__.__name__, bool(layer.visible)] for layer in viewer.layers}
dropped = viewer.open(store + "/segmentations/cell_masks/T01", plugin="spora_zarr")  # as dropping the group on napari
state["dropped"] = [layer.name for layer in dropped] + [layer.contour for layer in dropped]
print(json.dumps(state))
viewer.close()
"""


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    if shutil.which("Xvfb") is None:
        pytest.skip("no display: Xvfb is not installed (apt-get install xvfb; scripts/test.sh does it where it can)")
    try:
        import qtpy.QtWidgets  # noqa: F401
    except Exception as exc:  # qtpy raises its own error class when no binding imports
        pytest.skip(f"no Qt binding ({exc}): pip install 'napari[pyqt5]'")
    number = 90 + os.getpid() % 9
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x900x24", "-nolisten", "tcp"], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if server.poll() is not None:
        pytest.skip(f"no display: Xvfb :{number} did not start")
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.timeout(300)
def test_a_real_viewer_shows_a_demo_tissue(display: str, tmp_path: Path) -> None:
    import imageio.v3 as iio

    store = tmp_path / "demo.zarr"
    assert convert_cohort(make_demo_cohort(tmp_path / "tiff"), store, ConvertOptions(progress=False)).ok
    shot = tmp_path / "shot.png"
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    out = subprocess.run([sys.executable, "-c", VIEW, str(store), str(shot)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    layers = json.loads(out.stdout.strip().splitlines()[-1])
    channels = {name: state for name, state in layers.items() if state[0] == "Image"}
    assert set(channels) == {"DNA1", "CD3", "CD20", "PanCK", "Vimentin", "Ki67"} and all(visible for _, visible in channels.values())
    assert layers["T01: tissue_masks"] == ["Labels", True] and layers["T01: cell_masks"] == ["Labels", True]
    assert layers.pop("dropped")[1:] == [1]  # a cell mask dropped on napari is drawn as contours too
    picture = iio.imread(shot)
    rgb = picture[..., :3].astype(np.int32)
    assert rgb.std() > 5 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100  # not blank: an image with structure
    if os.environ.get("SPORA_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
        shutil.copyfile(shot, SCREENSHOT)
