#!/usr/bin/env bash
# Print the path of the first Python among the versions given (e.g. 3.13 3.12 3.11) that runs:
# python3.X on PATH, else one installed by pyenv. Exit 1 if none does.
set -uo pipefail
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for version in "$@"; do
  for candidate in "python$version" \
      $(ls -d "$pyenv_root"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -rV); do
    if "$candidate" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$version')" \
        2>/dev/null; then
      command -v "$candidate"
      exit 0
    fi
  done
done
exit 1
