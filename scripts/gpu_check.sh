#!/usr/bin/env bash
# The GPU check, in under 5 minutes on a GPU machine (offline: the embedded digits only):
#   doctor; the precision decision; float32 vs auto examples/s; on GPUs >= 8.0 mixed_float16 vs
#   mixed_bfloat16 with soft device placement off (bfloat16 ops have silently fallen back to the
#   CPU in past TensorFlow versions: with placement strict, such an op is an error, not a slowdown);
#   XLA (trainer.jit_compile) off vs on; trainer.steps_per_loop 1 vs auto.
#     bash scripts/gpu_check.sh                 # writes gpu_check/ (logs, report.json per run, summary.txt)
#     OUT=/tmp/g PYTHON=.venv/bin/python bash scripts/gpu_check.sh
# On a machine without a GPU it runs the same CPU-side steps, so the script itself is checked anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-gpu_check}
STEPS=${STEPS:-200}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

say "== doctor"
$PY -m safetrain.doctor | tee "$OUT/doctor.txt" | grep -E "^(device|cpu|hardware.precision|tensorflow built|FATAL|doctor)" | tee -a "$SUMMARY"

# One training run: its name, then overrides. Prints precision, median step rate, effective rate.
run() {
  local name=$1; shift
  local started=$SECONDS
  timeout 150 $PY -m safetrain hydra.run.dir="$OUT/$name" trainer.export=false trainer.epochs=100 \
      trainer.max_steps="$STEPS" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  $PY - "$OUT/$name/report.json" "$name" "$rc" "$((SECONDS - started))" <<'EOF' | tee -a "$SUMMARY"
import json, sys
path, name, rc, seconds = sys.argv[1:]
try:
    r = json.load(open(path))
except OSError:
    print(f"{name:34s} exit {rc}: no report.json ({seconds} s)")
    sys.exit()
t, h = r.get("throughput") or {}, r.get("hardware") or {}
if r.get("status") != "ok":
    print(f"{name:34s} exit {rc}: {(r.get('error') or {}).get('message', '')[:160]}")
else:
    print(f"{name:34s} {h.get('precision_policy'):15s} median {t.get('examples_per_sec') or 0:>9,.0f} ex/s  "
          f"effective {t.get('effective_examples_per_sec') or 0:>9,.0f} ex/s  steps/call {t.get('steps_per_loop')}  "
          f"({seconds} s; {h.get('precision_reason')})")
EOF
}

CNN="model=cnn_small trainer.batch_size=256"
RES="model=cnn_residual dataset.image.height=96 dataset.image.width=96 trainer.batch_size=128"

say "== precision: float32 vs auto (steps_per_loop auto)"
run small_float32 $CNN hardware.precision=float32
run small_auto $CNN hardware.precision=auto
run residual_float32 $RES hardware.precision=float32
run residual_auto $RES hardware.precision=auto

CC=$($PY - <<'EOF'
from safetrain.tf_import import import_tensorflow
tf = import_tensorflow()
gpus = tf.config.list_physical_devices("GPU")
cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
print(f"{cc[0]}.{cc[1]}" if cc else "none")
EOF
)
say "== compute capability of GPU 0: $CC"
if [[ "$CC" != "none" ]] && [[ "${CC%%.*}" -ge 8 ]]; then
  say "== bf16 on the GPU with soft device placement off (an op without a GPU kernel is an error)"
  $PY - <<'EOF' 2>&1 | tail -3 | tee -a "$SUMMARY"
from safetrain.tf_import import import_tensorflow
tf = import_tensorflow()
import keras
tf.config.set_soft_device_placement(False)
for policy in ("mixed_float16", "mixed_bfloat16"):
    keras.mixed_precision.set_global_policy(policy)
    with tf.device("/GPU:0"):
        model = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Conv2D(64, 3, activation="relu"),
                                  keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(10, dtype="float32")])
        optimizer = keras.optimizers.Adam()
        x, y = tf.random.normal((64, 96, 96, 3)), tf.zeros(64, tf.int32)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                                                   from_logits=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return loss
        try:
            print(f"{policy}: a train step ran with every op on the GPU (loss {float(step()):.3f})")
        except Exception as err:  # an op placed off the GPU
            print(f"{policy}: FAILED with soft placement off: {type(err).__name__}: {str(err)[:200]}")
EOF
  run residual_mixed_float16 $RES hardware.precision=mixed_float16
  run residual_mixed_bfloat16 $RES hardware.precision=mixed_bfloat16
else
  say "(mixed_float16 vs mixed_bfloat16 skipped: needs a GPU with compute capability >= 8.0)"
fi

say "== XLA: trainer.jit_compile off vs on (auto precision)"
run residual_xla_off $RES trainer.jit_compile=false
run residual_xla_on $RES trainer.jit_compile=true

say "== trainer.steps_per_loop: 1 vs auto (auto precision)"
run small_k1 model=cnn_small trainer.batch_size=32 trainer.steps_per_loop=1
run small_kauto model=cnn_small trainer.batch_size=32 trainer.steps_per_loop=auto
say "-> $SUMMARY"
