#!/usr/bin/env bash
# The test suite, with everything it needs installed into the project virtualenv.
. "$(dirname "$0")/_env.sh" test
python -m pytest -q -p no:cacheprovider "$@"
