#!/usr/bin/env bash
# `make demo`: offline end-to-end run. Generates the demo dataset and the tiny CLAP when no
# real data / model is configured, materializes every asset with the Dagster CLI on the
# persistent instance in $DAGSTER_HOME, and prints the evaluation table.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
CLI="$VENV/bin/clap-pipeline"
DAGSTER="$VENV/bin/dagster"
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster}
export HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1}  # no "Loading weights" bars in the log
mkdir -p "$DAGSTER_HOME"

setting() { "$PY" -c "from clap_pipeline.config import Settings; print(Settings.from_env().$1)"; }
TRACKS_CSV=$(setting tracks_csv)
AUDIO_DIR=$(setting audio_dir)

can_render() {  # FluidSynth and a GM soundfont present (clap_pipeline.demo.rendered)
  "$PY" -c "from clap_pipeline.demo.rendered import fluidsynth_exe, soundfont
fluidsynth_exe(); soundfont()" >/dev/null 2>&1
}
if [[ ! -f "$TRACKS_CSV" ]]; then
  # Music rendered from real instrument samples (FluidSynth + Debian's GM soundfont,
  # installed here as .ci/run does when missing and apt-get can); the synthesiser otherwise.
  RENDERER=${DEMO_RENDERER:-}
  if [[ -z "$RENDERER" ]]; then
    if ! can_render && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "==> installing fluidsynth and fluid-soundfont-gm (apt-get) for the rendered demo collection"
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm; } >/dev/null 2>&1 || true
    fi
    if can_render; then RENDERER=fluidsynth; else
      RENDERER=synth
      echo "==> no fluidsynth / GM soundfont (apt-get install fluidsynth fluid-soundfont-gm): synthesised demo clips"
    fi
  fi
  echo "==> no $TRACKS_CSV: generating the FMA-format demo dataset (clap-pipeline demo-data --renderer $RENDERER)"
  "$CLI" demo-data --renderer "$RENDERER" ${DEMO_TRACKS:+--tracks "$DEMO_TRACKS"}  # default: CLAP_MAX_TRACKS' default
elif [[ ! -d "$AUDIO_DIR" ]]; then
  echo "error: $TRACKS_CSV exists but the audio folder $AUDIO_DIR does not (set FMA_AUDIO_DIR)" >&2
  exit 2
fi

# shellcheck source=scripts/offline_model.sh
source scripts/offline_model.sh

# In-process executor: one process per asset step would re-import torch each time.
IN_PROCESS='{"execution": {"config": {"in_process": {}}}}'
materialize() { "$DAGSTER" asset materialize -m clap_pipeline.definitions "$@"; }

# A run of this instance killed earlier (kill -9, OOM kill) would keep the `gpu` pool slot.
"$CLI" run-health check | grep "marked FAILED" || true
echo "==> tracks, prompts"
materialize --select tracks,prompts --config-json "$IN_PROCESS"
FOLDERS=$("$PY" -c "
from dagster import DagsterInstance
print(' '.join(DagsterInstance.get().get_dynamic_partitions('audio_folders')))")
read -r -a KEYS <<<"$FOLDERS"
echo "==> waveforms (${#KEYS[@]} audio folder partitions: ${KEYS[*]})"
# One run over all folders: job decode_waveforms with a partition range (a backfill of
# `waveforms` would queue one run per folder, for the daemon of `make dev` to start).
RANGE="{\"dagster/asset_partition_range_start\": \"${KEYS[0]}\", \"dagster/asset_partition_range_end\": \"${KEYS[-1]}\"}"
IN_PROCESS_FILE="$DAGSTER_HOME/in_process.yaml"  # `job execute` reads config from files
echo "$IN_PROCESS" >"$IN_PROCESS_FILE"
"$DAGSTER" job execute -m clap_pipeline.definitions -j decode_waveforms --tags "$RANGE" -c "$IN_PROCESS_FILE"
echo "==> clap_model"
if [[ -n "$TINY_RUN_CONFIG" ]]; then
  materialize --select clap_model -c "$TINY_RUN_CONFIG"
else
  materialize --select clap_model --config-json "$IN_PROCESS"
fi
echo "==> window_embeddings, evaluation, track_embeddings, model_comparison"
materialize --select window_embeddings,evaluation,track_embeddings,model_comparison --config-json "$IN_PROCESS"
echo
echo "Try: $CLI search \"folk country music\" -k 5   (or make serve: a web page with playback)"
echo
"$PY" -m clap_pipeline.demo.story  # the per-epoch curve, its best epoch, the next max_epochs
echo
"$PY" -m clap_pipeline.evaluation show  # ends with the verdict
