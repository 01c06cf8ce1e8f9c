#!/usr/bin/env bash
# The test suite, with everything it needs installed into the project virtualenv: lint, types, tests.
. "$(dirname "$0")/_env.sh" test
ruff check spora_zarr tests scripts
mypy
python -m pytest -q -p no:cacheprovider "$@"
