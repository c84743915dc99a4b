#!/usr/bin/env bash
# The prepared GPU check (issue 17): one short run on a lent GPU machine (the `device` tool), results in $OUT.
#   run: bash scripts/gpu_check.sh        (timeout_s ~540; about 6-8 min on one H200 for sections 1-2)
#   section 3 (the paper reproduction's projected wall time, benchmarks/reproduce_cost.py; not yet timed on a GPU)
#   can run alone in a second call if the first one runs out of time.
# 1. the package's CUDA path: per-image purification equal at two batch sizes on CUDA, a victim epoch on the
#    device; 2. the paper's 52.5M UNet under each switch (fp32 vs bf16, channels_last, compiled): purification
#    and diffusion training throughput, the physical floor at PEAK_TFLOPS (default 989, H100/H200 bf16 dense)
#    and the projected paper purification of 50,000 images x 100 steps; CSV in $OUT (copy it to figures/).
# Not yet run on a GPU (none was lent so far): read its log before trusting a number.
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ECLIPSE_CACHE=${ECLIPSE_CACHE:-/tmp/eclipse-cache}
log() { echo "== $(date -u +%T) $*" | tee -a "$OUT/log.txt"; }
python -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$OUT/log.txt" || { log "no torch with CUDA here"; exit 1; }
python -m pip install -q --no-deps -e . 2>&1 | tail -1
python -c "import opacus" 2>/dev/null || log "opacus missing: DP-SGD is skipped"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/log.txt"

log "1a. per-image purification on CUDA: batch 64 vs 7, one process"
timeout 120 python - <<'PY' 2>&1 | tee -a "$OUT/log.txt"
import torch
from eclipse.diffusion.checkpoints import DiffusionSettings, schedule_from_settings
from eclipse.diffusion.unet import UNetConfig, build_unet
from eclipse.purify import purify
torch.manual_seed(0)
model = build_unet(UNetConfig(num_channels=64, num_res_blocks=2)).cuda().eval()
schedule = schedule_from_settings(DiffusionSettings(diffusion_steps=4000))
x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
a, b = (purify(x, model, schedule, t_star=20, seed=1, batch_size=bs, noise="per-image", progress=False)
        for bs in (64, 7))
print("bit-identical:", torch.equal(a, b), "max level difference:", int((a.int() - b.int()).abs().max()))
PY
log "1b. a quick victim on CUDA (10,000 images, 20 epochs, bf16)"
timeout 240 python -m eclipse train --profile quick --device cuda --out "$OUT/victim-quick.json" 2>&1 | tail -12 \
  | tee -a "$OUT/log.txt"
log "2. the paper UNet's switches in one run: purification and diffusion training, fp32 / channels_last / bf16 / both / compiled"
timeout 300 python benchmarks/unet_switches.py --paper --device cuda --n 256 --t-star 20 --batch 128 --train-steps 10 \
  --compile --peak-tflops "${PEAK_TFLOPS:-989}" --csv "$OUT/unet-switches-gpu.csv" 2>&1 | tail -12 | tee -a "$OUT/log.txt"
log "3. the projected wall time of eclipse reproduce --profile paper on this GPU and on 8 (rates measured here)"
timeout 300 python benchmarks/reproduce_cost.py --profile paper --device cuda --devices 1 8 \
  --csv "$OUT/reproduce-cost-paper-gpu.csv" 2>&1 | tail -40 | tee -a "$OUT/log.txt"
log "done"
