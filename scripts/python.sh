#!/usr/bin/env bash
# The interpreter the Makefile builds its virtualenvs with (override: `make PYTHON=...`): the
# system's /usr/bin/python3 when it is 3.11 or later and can make a virtualenv, else python3
# on the PATH. Debian's and Ubuntu's python3 are built with profile-guided and link-time
# optimisation and link libpython statically; pyenv's default build does neither, and ran
# the detector's Python 15 to 20% slower on the development machine (docs/performance.md,
# "The interpreter").
for py in /usr/bin/python3 python3; do
  if "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$py"
    exit 0
  fi
done
echo python3
