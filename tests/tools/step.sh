#!/usr/bin/env bash
# One long step, quietly: prints a line when it starts and one when it ends with its time; its whole
# output goes to build/logs/NAME.log, and on failure the last lines of that log are shown.
#   tests/tools/step.sh NAME "what it does" COMMAND [ARG...]
# STEP_TAIL lines are shown on failure (default 40), and also on success with STEP_TAIL_ALWAYS=1
# (a test lane's summary). The command's exit status is kept.
set -uo pipefail
name=$1 title=$2
shift 2
logs=${GPUFLEET_LOGS:-$(cd "$(dirname "$0")/../.." && pwd)/build/logs}
mkdir -p "$logs"
log=$logs/$name.log
start=$(date +%s)
echo "==> $title (log: $log)"
"$@" >"$log" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
if ((rc)); then
  tail -n "${STEP_TAIL:-40}" "$log" >&2
  echo "==> $title FAILED after $took s (exit $rc; whole output: $log)" >&2
  exit "$rc"
fi
[[ -z ${STEP_TAIL_ALWAYS:-} ]] || tail -n "${STEP_TAIL:-40}" "$log"
echo "    done in $took s"
