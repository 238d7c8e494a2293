# Sourced by the benchmarks/runs training scripts: `stage NAME ARGS...` runs one resumable
# `nsm train ARGS` into $OUT/NAME.pt (checkpoint $OUT/NAME.ckpt, log $OUT/NAME.log) at the
# lowest priority, one thread, and does nothing where $OUT/NAME.pt is already written.
export OMP_NUM_THREADS=1
stage() {
    local name=$1; shift
    test -f "$OUT/$name.pt" && return 0
    nice -n 19 .venv/bin/nsm train "$@" --checkpoint "$OUT/$name.ckpt" --resume \
        -o "$OUT/$name.pt" >> "$OUT/$name.log" 2>&1
}
