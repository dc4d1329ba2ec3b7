#!/usr/bin/env bash
# Install PyTaskFarmer 0.1.0 (this project's predecessor, from PyPI) in a venv of its own under PREFIX, and print
# the environment that points the tests to it:
#
#   eval "$(bash ci/pytaskfarmer010-install.sh /tmp/tf-ptf010 | tail -n 1)"
#
# Tests run it to make real PyTaskFarmer work directories, which this version must refuse untouched. Its own
# package is also named `taskfarmer`, hence a venv apart. Idempotent.
set -euo pipefail
prefix=${1:?usage: $0 PREFIX}
if [ ! -x "$prefix/venv/bin/pytaskfarmer.py" ]; then
  python3 -m venv "$prefix/venv"
  "$prefix/venv/bin/pip" install -q PyTaskFarmer==0.1.0 >&2
fi
"$prefix/venv/bin/python" -I -c 'import taskfarmer.task' >&2  # its package imports: a broken install fails here
echo "export TASKFARMER_PYTASKFARMER_010=$prefix/venv/bin/pytaskfarmer.py"
