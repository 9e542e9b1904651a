#!/usr/bin/env bash
# On a machine with a GPU: the GPU-marked tests, then short CPU-vs-CUDA benchmarks, in under 10 minutes.
#   bash launch/gpu_check.sh            (from the repository root, after `make install`)
#   BIN=/path/to/env/bin bash launch/gpu_check.sh   (an environment that already holds CUDA torch)
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
$BIN/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())"

echo "== GPU tests"
timeout 240 $BIN/python -m pytest -q -m gpu tests/launch/test_gpu.py -p no:cacheprovider --durations=0
tests=$?

echo "== bench: W2b and W6 (2 parties, tfp over zmq and gloo), CUDA then CPU"
for device in cuda cpu; do
  timeout 200 $BIN/python -m bench --device $device --workloads W2b,W6 --systems zmq-tfp,gloo-tfp \
      --repeats 1 --psi-ids 0 --budget 150 --timeout 60
done
echo "== transport: MPI ping-pong and all_reduce, CPU vs CUDA tensors (staged through host)"
timeout 60 $BIN/mpirun -n 2 $BIN/python bench/transport_bench.py --device cpu
timeout 60 $BIN/mpirun -n 2 $BIN/python bench/transport_bench.py --device cuda

echo "== one round's small kernels and host copy, alone and with a second process on the device"
timeout 60 $BIN/python bench/gpu_contention.py --device cuda
timeout 60 $BIN/python bench/gpu_contention.py --device cpu

echo "== training: 2 parties and the dealer, mlp, 2000 rows each, 1 epoch, CPU vs CUDA"
out=$(mktemp -d)
for device in cpu cuda; do
  timeout 150 $BIN/mpirun -n 3 $BIN/cotrain run device=$device model=mlp data.rows=2000 data.test_rows=1000 \
      train.epochs=1 output_dir="$out" run_id=gpu-check-$device log_level=WARNING > "$out/$device.log" 2>&1
  $BIN/python - "$out/gpu-check-$device/summary.json" "$device" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    print(f"  {sys.argv[2]:>4}: training {s['training_s']:.1f} s, secure AUC {s['secure']['auc']:.4f}, "
          f"plaintext AUC {s['plaintext']['auc']:.4f}, evaluator {s['evaluator_rounds_per_epoch']:.0f} rounds/epoch")
except (OSError, KeyError, TypeError) as error:
    print(f"  {sys.argv[2]:>4}: run failed ({error}); the log's end:")
    sys.exit(1)
PY
  [ $? -eq 0 ] || tail -n 25 "$out/$device.log"
done
rm -rf "$out"

exit $tests
