#!/usr/bin/env bash
# The README's "Bring your own data" commands, run for three hospitals on this machine
# (loopback ports 7301-7303), on DICOM folders from scripts/example_dicom_folders.py.
#   bash scripts/byod_walkthrough.sh /tmp/byod
set -euo pipefail
out=${1:-/tmp/byod}
rm -rf "$out/sites" "$out/manifest.json"* "$out"/model.*
mkdir -p "$out/sites"
[ -d "$out/dicom" ] || python scripts/example_dicom_folders.py --out "$out/dicom" --sites 3 --series 200
for i in 0 1 2; do
  swarm-node init --site "$out/sites/hospital-$i" --name "hospital-$i" --endpoint "tcp://127.0.0.1:730$((i + 1))" \
    --data source=dicom --data root="$out/dicom/hospital-$i" --data labels=labels.csv \
    --data 'classes=["normal","lesion"]' --data size=64
done
swarm-node federation create --name dicom-demo --plan docs/plan-dicom.toml --out "$out/manifest.json" \
  --member "$out/sites/hospital-0/member.json" --member "$out/sites/hospital-1/member.json" --member "$out/sites/hospital-2/member.json"
for i in 0 1 2; do swarm-node federation sign "$out/manifest.json" --site "$out/sites/hospital-$i"; done
for i in 0 1 2; do swarm-node federation install "$out/manifest.json" --site "$out/sites/hospital-$i"; done
export OMP_NUM_THREADS=1
start=$(date +%s%N)
pids=()
for i in 0 1 2; do swarm-node run --site "$out/sites/hospital-$i" > "$out/sites/hospital-$i.out" 2>&1 & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a node that fails fails the script
echo "federation wall time: $(( ($(date +%s%N) - start) / 1000000 )) ms"
tail -n 2 "$out"/sites/hospital-*.out
swarm-node export --site "$out/sites/hospital-0" --format onnx --out "$out/model.onnx"
swarm-node audit "$out/sites" --model "$out/model.onnx" | grep -v " round "  # the ancestry, one line per version, left out
