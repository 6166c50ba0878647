#!/usr/bin/env bash
# The project's front door. Each sub-command creates ./.venv on first use (PyPI only) and
# reinstalls when pyproject.toml changes, so on a fresh machine one command does all set-up.
#   bash run.sh setup    only create / refresh the virtualenv
#   bash run.sh test     the default test suite (< 10 min on 2 CPU cores)
#   bash run.sh slow     the long checks marked `slow`
#   bash run.sh lint     ruff check, ruff format --check and mypy (what CI and pre-commit run)
#   bash run.sh docs     build the documentation site strictly into site/ (or a given folder)
#   bash run.sh ablate   the main job: the optimizer ablation on the embedded default corpus
#   bash run.sh bench    the orthogonalizer benchmark (JSON under results/bench/)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${OPTZOO_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.optzoo-installed"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev,docs,experiments,notebooks]"
    echo "$want" > "$stamp"
  fi
}

lint() {
  local rc=0
  "$VENV/bin/ruff" check . || rc=1
  "$VENV/bin/ruff" format --check . || rc=1
  "$VENV/bin/python" -m mypy || rc=1
  return "$rc"
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  setup)  setup ;;
  test)   setup; exec "$VENV/bin/python" -m pytest -n 2 -m "not slow" "$@" ;;
  slow)   setup; exec "$VENV/bin/python" -m pytest -n 2 -m slow "$@" ;;
  lint)   setup; lint ;;
  docs)   setup; exec "$VENV/bin/mkdocs" build --strict --site-dir "${1:-site}" ;;
  ablate) setup; exec "$VENV/bin/python" -m experiments.ablate "$@" ;;
  bench)  setup; exec "$VENV/bin/python" -m experiments.bench.orthogonalize "$@" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
