# Sourced by setup_venv.sh, main_job.sh and test.sh (not run alone): they use the Python and pip of
# the venv only. The environment of another Python set-up broke them (outside probe, fresh machine
# round three): PYTHONPATH naming another dodo made the venv's python import that one (setup_venv.sh
# said "dodo installed in .venv (its version)", main_job.sh then stopped at "No module named
# 'dodo.cli'", test.sh tested the other); PYTHONHOME made the venv's python fail to start
# (setup_venv.sh then said to remove a sound venv); PIP_TARGET/PIP_PREFIX sent the install outside
# the venv; pip's `user = true` (PIP_USER=1 or a pip.conf) stopped every install into the venv
# ("Can not perform a '--user' install").
use_the_venvs_python_only() {  # $1: the script's name, for the note
  local var
  for var in PYTHONPATH PYTHONHOME PIP_TARGET PIP_PREFIX; do
    if [ -n "${!var+x}" ]; then
      echo "$1: note: $var=${!var} is ignored here (these scripts use the Python and pip of the venv)" >&2
      unset "$var"
    fi
  done
  export PIP_USER=0
}
