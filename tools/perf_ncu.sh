#!/usr/bin/env bash
# Issue 9's first step: where the time goes in fa2 and cuDNN at 4k / d128 (fp16, paper shapes), by Nsight
# Compute: speed of light, tensor pipe, warp stall reasons, occupancy, registers and spills of every kernel.
# Usage (on the GPU machine, after installing fa2bench): bash tools/perf_ncu.sh OUTDIR [PROVIDER ...]
set -uo pipefail
out=${1:?out dir}; shift
provs=${*:-fa2 sdpa-cudnn}
mkdir -p "$out"
sections="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section SchedulerStats"
for p in $provs; do
  for mode in fwd bwd; do
    for causal in "" "--causal"; do
      tag="$p-$mode${causal:+-causal}"
      ncu --profile-from-start off --clock-control none $sections -f -o "$out/$tag" \
        python3 tools/perf_point.py --provider "$p" --mode "$mode" --seqlen 4096 --headdim 128 $causal \
        >"$out/$tag.log" 2>&1 || { echo "ncu failed for $tag"; tail -5 "$out/$tag.log"; }
      ncu --import "$out/$tag.ncu-rep" --csv --page details >"$out/$tag.csv" 2>>"$out/$tag.log"
      echo "$tag: $(grep -c '' "$out/$tag.csv") csv lines; $(tail -1 "$out/$tag.log" | cut -c1-150)"
    done
  done
done
