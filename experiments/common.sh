# Sourced by the experiment scripts after they cd to the repository root.

PY=${PY:-.venv/bin/python}

# A mistake in a script's arguments ends it as every vader_d2 command ends: one line, exit status 2.
fail() { echo "vader_d2: $*" >&2; exit 2; }

# The value is a whole number of at least the minimum, or the script ends with one line naming it.
require_whole_number() {  # what (a name for the message), value, minimum
    [[ "$2" =~ ^[1-9][0-9]*$ ]] && [ "$2" -ge "$3" ] || fail "$1 must be a whole number of at least $3, not '$2'"
}

# A run is done when its final checkpoint exists: re-running an experiment skips it.
train_unless_done() {  # output folder, config, then KEY VALUE overrides
    local output=$1 config=$2
    shift 2
    if [ ! -f "$output/model_final.pth" ]; then
        "$PY" tools/train_net.py --config-file "$config" "$@" OUTPUT_DIR "$output"
    fi
}

# The model-zoo export of a pretraining run, beside its final checkpoint: output folder/d2.pkl.
export_unless_done() {  # output folder
    [ -f "$1/d2.pkl" ] || "$PY" tools/convert_vader_to_d2.py --input "$1/model_final.pth" --output "$1/d2.pkl"
}
