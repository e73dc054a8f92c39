#!/bin/bash
# bench/mpi.sh [BINARY]: the MPI table of BENCHMARKS.md (Open MPI's mpirun on this machine).
# 1 process (1 thread) vs 2 ranks (1 thread each), same global batch; items/s from summary.json,
# all-reduce from metrics.jsonl.
SHARED=${SHARED:-$(cd "$(dirname "$0")/../../shared" && pwd)}
B=${1:-target/release/pretext}   # a binary built with --features mpi
D=$(mktemp -d)
python3 -c "
import gzip; t=gzip.open('$SHARED/data/text/austen.txt.gz','rt').read()[:400000]; open('$D/a.txt','w').write(t)"
F=idx:$SHARED/data/fashion-mnist
run() { # name, steps, args...
  name=$1; shift
  RAYON_NUM_THREADS=1 $B "$@" --set replicas=1 --set log_every=5 --out $D/$name-1 -q > /dev/null 2>&1 || echo "FAIL 1 $name"
  mpirun --allow-run-as-root --oversubscribe --bind-to none -x RAYON_NUM_THREADS=1 -np 2 $B "$@" --set replicas=1 --set log_every=5 --out $D/$name-2 -q > /dev/null 2>$D/$name.err || { echo "FAIL 2 $name"; tail -3 $D/$name.err; }
  python3 - $D/$name-1 $D/$name-2 $name <<'PY'
import json,sys
a=json.load(open(sys.argv[1]+'/summary.json')); b=json.load(open(sys.argv[2]+'/summary.json'))
rows=[json.loads(l) for l in open(sys.argv[2]+'/metrics.jsonl')]
rows=[r for r in rows if 'allreduce_ms_per_step' in r][1:]
mb=sum(r['allreduce_mb_per_step'] for r in rows)/max(len(rows),1); ms=sum(r['allreduce_ms_per_step'] for r in rows)/max(len(rows),1)
ia,ib=a['items_per_s'],b['items_per_s']
step_ms=1000*json.load(open(sys.argv[2]+'/summary.json'))['wall_s']/b['steps_done']
print(f"| {sys.argv[3]} | {ia:.0f} | {ib:.0f} | {ib/ia:.2f}x | {mb:.2f} | {ms:.1f} | {step_ms:.0f} |")
PY
}
echo "| model | 1 rank items/s | 2 ranks items/s | speed-up | all-reduce MB/step | all-reduce ms/step | step ms (2 ranks) |"
echo "|---|---|---|---|---|---|---|"
run rotation-convnet pretrain --task rotation --data $F --set limit=4096 --set batch_size=64 --set steps=40 --set eval_every=0 --set workers=1
run rotation-resnet18 pretrain --task rotation --data $F --set limit=4096 --set backbone=resnet18 --set batch_size=32 --set steps=10 --set eval_every=0 --set workers=1
run causal-lm-tiny pretrain --task causal-lm --data text:$D/a.txt --set model=tiny --set batch_size=16 --set steps=40 --set eval_every=1000 --set vocab=2000
run causal-lm-small pretrain --task causal-lm --data text:$D/a.txt --set model=small --set batch_size=8 --set steps=10 --set eval_every=1000 --set vocab=2000
