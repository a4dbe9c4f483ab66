# Shared by the bench scripts (sourced): timing helpers.

# median_ms COMMAND...: the median wall time of COMMAND in ms, to 0.01 ms, over $runs runs
# after one warm-up (output discarded).
median_ms() {
  "$@" >/dev/null 2>&1
  for _ in $(seq "$runs"); do
    local start end
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s%N)
    echo $(( (end - start) / 1000 ))
  done | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]/1000}'
}
