#!/bin/bash
# Repeat a 2-process CPU run of HYDRA-TOK stage 2 (the CI test's second torchrun) and count the runs that hang at
# teardown; on a hang, write py-spy stacks (native frames) of every process. This is how end_processes' sleep was
# measured: 2 hangs in 49 runs without it and 0 in 105 with it, each with 3-6 busy loops beside it
# (`python3 -c "while True: pass" &`) to mimic a loaded CI machine.
#
#   scripts/stress_ddp_teardown.sh WORK_DIR [RUNS]      (needs `pip install py-spy` for the stacks)
set -u
if [ $# -lt 1 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then sed -n 2,7p "$0"; exit 0; fi
work=$(realpath -m "$1"); runs=${2:-20}; repo=$(cd "$(dirname "$0")/.." && pwd)
py=$repo/.venv/bin/python; script=$repo/examples/train_tokenizer.py
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
common="--max_steps 3 --per_device_train_batch_size 2 --save_steps 2 --logging_steps 1 --use_cpu --ddp_backend gloo --report_to none --disable_tqdm true"
mkdir -p "$work" && cd "$work" || exit 1
[ -d data ] || $py -c "from hydra_hf.data import make_shapes_dataset; make_shapes_dataset(24, seed=0).save_to_disk('data')"
[ -d s1 ] || $py -m torch.distributed.run --nproc_per_node 2 --master_port 29611 "$script" --dataset data --preset tiny --stage 1 --output_dir s1 $common > s1.log 2>&1
hangs=0
for i in $(seq 1 "$runs"); do
  rm -rf s2; start=$(date +%s)
  $py -m torch.distributed.run --nproc_per_node 2 --master_port $((29700 + i % 200)) "$script" --dataset data --model_name_or_path s1 --stage 2 --output_dir s2 $common > run$i.log 2>&1 &
  launcher=$!
  while kill -0 $launcher 2>/dev/null; do
    sleep 2
    if [ $(( $(date +%s) - start )) -gt 90 ]; then
      hangs=$((hangs + 1))
      for p in $(pgrep -f train_tokenizer.py); do echo "== $p"; py-spy dump --native --pid "$p"; done > hang$i.txt 2>&1
      pkill -9 -f train_tokenizer.py; break
    fi
  done
  echo "run $i: $(( $(date +%s) - start )) s"
done
echo "$hangs of $runs runs hung (stacks in $work/hang*.txt)"
