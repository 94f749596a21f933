# Sourced by scripts/demo.sh and scripts/dev.sh (needs $PY and $CLI).
# When CLAP_MODEL cannot be loaded (no Hugging Face access), stand in the tiny offline
# CLAP and, unless CLAP_RETRAIN_RUN_CONFIG is set, the training recipe that suits it.
setting() { "$PY" -c "from clap_pipeline.config import Settings; print(Settings.from_env().$1)"; }
MODEL=$(setting model)
TINY_RUN_CONFIG=""
if ! HF_HUB_ETAG_TIMEOUT=5 HF_HUB_DOWNLOAD_TIMEOUT=10 "$PY" -c "
import sys
from transformers import ClapConfig
try:
    ClapConfig.from_pretrained(sys.argv[1])
except Exception:
    sys.exit(1)
" "$MODEL" >/dev/null 2>&1; then
  # The same stand-in for every collection, whoever made it: the tiny CLAP pre-trained on
  # varied music (clap_pipeline/demo/stand_in_model, made by `clap-pipeline
  # pretrain-stand-in`; docs/stand-in.md). The tiny random CLAP only when it is not there.
  PRETRAINED=$("$PY" -c "
from clap_pipeline.demo import SHIPPED_STAND_IN
print(SHIPPED_STAND_IN if (SHIPPED_STAND_IN / 'config.json').is_file() else '')")
  if [[ -n "$PRETRAINED" ]]; then
    echo "==> CLAP_MODEL=$MODEL cannot be loaded offline: using the pre-trained offline stand-in at $PRETRAINED"
    export CLAP_MODEL="$PRETRAINED"
    TINY_RUN_CONFIG="$PWD/scripts/pretrained_stand_in_run_config.yaml"
  else
    TINY=$(setting tiny_model_dir)
    echo "==> CLAP_MODEL=$MODEL cannot be loaded offline: using the tiny offline CLAP at $TINY"
    [[ -f "$TINY/config.json" ]] || "$CLI" tiny-model "$TINY" >/dev/null
    export CLAP_MODEL="$TINY"
    TINY_RUN_CONFIG="$PWD/scripts/tiny_model_run_config.yaml"
  fi
  export CLAP_RETRAIN_RUN_CONFIG="${CLAP_RETRAIN_RUN_CONFIG:-$TINY_RUN_CONFIG}"
fi
