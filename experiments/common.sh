# Sourced by the experiment scripts after they cd to the repository root.

PY=${PY:-.venv/bin/python}

# A run is done when its final checkpoint exists: re-running an experiment skips it.
train_unless_done() {  # output folder, config, then KEY VALUE overrides
    local output=$1 config=$2
    shift 2
    if [ ! -f "$output/model_final.pth" ]; then
        "$PY" tools/train_net.py --config-file "$config" "$@" OUTPUT_DIR "$output"
    fi
}
