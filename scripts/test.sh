#!/usr/bin/env bash
# The test suite, with everything it needs installed into the project virtualenv: lint, types, tests.
. "$(dirname "$0")/_env.sh" test
# A virtual screen and the Qt/xcb runtime for the one real napari Viewer test, where this machine
# lets us install them (root with apt-get); elsewhere that test skips and says why.
if ! command -v Xvfb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb libgl1-mesa-dri libglx-mesa0 libegl1 \
    libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1) >/dev/null 2>&1 \
    || echo "could not install Xvfb and the Qt runtime: the real-viewer test will skip" >&2
fi
ruff check spora_zarr tests scripts
mypy
# One pytest worker per core, each test file whole on one worker (its module fixtures built once; the
# slow files run side by side). Tests use their own tmp paths, free ports and display numbers.
# Arguments go to pytest: `--all` also runs the tests marked slow (.ci/run does), a path runs one file.
python -m pytest -q -p no:cacheprovider -n auto --dist loadfile "$@"
