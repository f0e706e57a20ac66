# Sourced by the launchers: the model zoo's positional arguments, then train.py / eval.py flags.
#
#   split_args MAX "$@"   ->  POS=(at most MAX leading arguments that are not flags)  REST=(the others)
#
# The positional arguments end at the MAXth, at "--" (dropped) or at the first argument starting with "-".
# Returns 1 (the caller prints its usage line) when REST still starts with a positional argument: one too many.
split_args() {
  local max=$1
  shift
  POS=()
  while [ $# -gt 0 ] && [ ${#POS[@]} -lt "$max" ]; do
    case "$1" in
      --|-*) break ;;
      *) POS+=("$1"); shift ;;
    esac
  done
  if [ "${1:-}" = "--" ]; then shift; fi
  REST=("$@")
  if [ $# -gt 0 ] && [[ "$1" != -* ]]; then return 1; fi
}

# add_flag ARRAY FLAG VALUE: append "FLAG VALUE" to the array named ARRAY when VALUE is not empty
add_flag() {
  local -n target=$1
  if [ -n "$3" ]; then target+=("$2" "$3"); fi
}
