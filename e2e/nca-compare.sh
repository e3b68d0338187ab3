#!/usr/bin/env bash
# `policyc matrix --ports all` beside NCA's connectivity report (network-config-analyzer,
# `nca --connectivity`, every port at once) on the same synthetic clusters, one size after the
# other: wall time and peak resident memory of each, from reading the YAML to the last byte of
# output. Not part of the test suite.
#
#   python3 -m venv /work/nca-venv && /work/nca-venv/bin/pip install network-config-analyzer
#   NCA=/work/nca-venv/bin/nca e2e/nca-compare.sh
#
# Environment: NCA (default: nca on PATH), NCA_TIMEOUT seconds per NCA run (default 600),
# SIZES (default "100/30 300/150 1000/500 3000/1200", pods/policies), WORK (a directory for the
# clusters and NCA's reports; default a new temporary one), SKIP_BUILD=1 to use the binaries
# already built. policyc's JSON goes to /dev/null (at 3,000 pods it is tens of GB).
set -euo pipefail
cd "$(dirname "$0")/.."

NCA=${NCA:-nca}
NCA_TIMEOUT=${NCA_TIMEOUT:-600}
SIZES=${SIZES:-"100/30 300/150 1000/500 3000/1200"}
WORK=${WORK:-$(mktemp -d)}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -q -p policyc
    cargo build --release -q -p policyc-compiler --example synth
fi
POLICYC=$TARGET/release/policyc
SYNTH=$TARGET/release/examples/synth
command -v "$NCA" >/dev/null || { echo "error: NCA not found: $NCA (set NCA=path/to/nca)" >&2; exit 2; }

echo "date: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $("$NCA" --version 2>&1 | grep -m1 .), timeout ${NCA_TIMEOUT} s, work in $WORK"
printf '%-16s %6s %12s %12s %14s %12s %10s\n' "pods/policies" ports "policyc s" "policyc MiB" "NCA s" "NCA MiB" "NCA/policyc"
for size in $SIZES; do
    pods=${size%/*}
    policies=${size#*/}
    dir=$WORK/$pods
    mkdir -p "$dir"
    "$SYNTH" --pods "$pods" --policies "$policies" > "$dir/cluster.yaml"
    # The number of distinct ports: headings of the grouped tables (small to print).
    ports=$("$POLICYC" matrix -f "$dir" --ports all --group-by namespace | grep -c '^# ')
    start=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$WORK/policyc.time" "$POLICYC" matrix -f "$dir" --ports all -o json > /dev/null
    p_s=$(awk -v ns="$(( $(date +%s%N) - start ))" 'BEGIN { printf "%.3f", ns / 1e9 }')
    p_kb=$(tail -1 "$WORK/policyc.time")
    set +e
    /usr/bin/time -f '%e %M' -o "$WORK/nca.time" timeout "$NCA_TIMEOUT" \
        "$NCA" --connectivity -r "$dir" -o txt -f "$WORK/nca-$pods.txt" > "$WORK/nca-$pods.log" 2>&1
    rc=$?
    set -e
    read -r n_s n_kb < <(tail -1 "$WORK/nca.time")
    if [ "$rc" = 124 ]; then
        nca="> $NCA_TIMEOUT"
        ratio="> $(awk -v a="$NCA_TIMEOUT" -v b="$p_s" 'BEGIN { printf "%.0f", a / b }')x"
        n_mib="(timeout)"
    elif [ "$rc" != 0 ]; then
        nca="failed ($rc)"
        ratio="-"
        n_mib="-"
    else
        nca=$n_s
        ratio="$(awk -v a="$n_s" -v b="$p_s" 'BEGIN { printf "%.0f", a / b }')x"
        n_mib=$(( n_kb / 1024 ))
    fi
    printf '%-16s %6s %12s %12s %14s %12s %10s\n' "$pods/$policies" "$ports" "$p_s" "$(( p_kb / 1024 ))" "$nca" "$n_mib" "$ratio"
done
