#!/usr/bin/env bash
# Runs the CUDA paths on a machine with a GPU and prints what they measured: the engine on --device cuda (mixed
# precision is on whenever training runs on CUDA) against the same job on the CPU, then the embedded service and a
# real Celery worker with SQUEEZER_WORKER_DEVICE=cuda, then the speed benchmark's ResNet-56 row timed on onnxruntime-cuda
# (where onnxruntime-gpu is installed). Exits 1 where no CUDA device is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
SQ=.venv/bin/squeezer
"$PY" -c 'import sys, torch; ok = torch.cuda.is_available(); print("cuda:", torch.cuda.get_device_name(0) if ok else "none"); sys.exit(0 if ok else 1)'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$SQ" sample digits --out "$work/digits" >/dev/null

summary() {  # device, wall seconds, report.json
  "$PY" - "$@" <<'EOF'
import json, sys
device, wall, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
report = json.load(open(path))
base, comp = report["baseline"], report["compressed"]
print(f"{device:5s} wall {wall:7.1f} s  top-1 {base['accuracy']:.2f} -> {comp['accuracy']:.2f}  "
      f"ratio {report.get('compression_ratio', 'n/a')}")
EOF
}

for device in cpu cuda; do
  start=$(date +%s.%N)
  "$SQ" compress "$work/digits" --data sample:digits --max-drop 1.0 --seed 0 --device "$device" \
    --out "$work/out-$device" >/dev/null || [ $? -eq 3 ]
  end=$(date +%s.%N)
  summary "$device" "$(echo "$end - $start" | bc)" "$work/out-$device/report.json"
done

echo "embedded service, in-process worker on cuda:"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SQUEEZER_WORKER_DEVICE=cuda "$SQ" serve --port "$port" --data-dir "$work/serve" >"$work/serve.log" 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 1; done
start=$(date +%s.%N)
"$SQ" submit "$work/digits" --data sample:digits --max-drop 1 --server "http://127.0.0.1:$port" --wait \
  --out "$work/served" >/dev/null || [ $? -eq 3 ]
end=$(date +%s.%N)
summary "serve" "$(echo "$end - $start" | bc)" "$work/served/report.json"

echo "Celery worker process on cuda (real PostgreSQL and Redis):"
SQUEEZER_TEST_WORKER_DEVICE=cuda "$PY" -m pytest -q tests/api/test_celery_end_to_end.py

echo "speed benchmark, ResNet-56 row, timed on onnxruntime-cuda (bench/results/speed_gpu.json):"
if "$PY" -c 'import sys, onnxruntime as ort; sys.exit(0 if "CUDAExecutionProvider" in ort.get_available_providers() else 1)'; then
  OMP_NUM_THREADS=1 "$PY" bench/speed.py --only resnet56 --runtime onnxruntime-cuda --results speed_gpu
else
  echo "skipped: onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu for the CUDA target)"
fi
