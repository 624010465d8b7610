"""The run directory's names: the one module that spells them.

    <run dir>/report.json          REPORT        the run's summary, written at the end of every run
    <run dir>/errors.jsonl         ERRORS        one line per captured error or data event
    <run dir>/tb/                  TENSORBOARD   scalars, text, images, hparams
    <run dir>/checkpoints/         CHECKPOINTS   tf.train.CheckpointManager's (run_spec.json inside)
    <run dir>/export/              EXPORT        SavedModel, model.keras, model.tflite, signature.json
    <run dir>/results/             RESULTS       confusion_matrix.png, top_losses.png
    <run dir>/suspect_labels.csv   SUSPECTS      image folders: eval/test files the model puts elsewhere
    <run dir>/lr_find.png, .json   LR_FIND_*     trainer.lr_find's curve

docs/run-directory.md describes what each holds.
"""

REPORT = "report.json"
ERRORS = "errors.jsonl"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
EXPORT = "export"
SIGNATURE = "signature.json"         # in export/: the input spec the serving signature enforces
SAVED_MODEL = "saved_model.pb"       # in export/
KERAS_FILE = "model.keras"           # in export/
TFLITE_FILE = "model.tflite"         # in export/
TFLITE_INT8_FILE = "model_int8.tflite"  # in export/: full-integer, or the dynamic-range fallback
ONNX_FILE = "model.onnx"             # in export/
SAMPLES = "samples"                  # in export/: test images and the outputs the self-check expects
RESULTS = "results"
CONFUSION_MATRIX = "confusion_matrix.png"  # in results/
TOP_LOSSES = "top_losses.png"              # in results/
RELIABILITY = "reliability.png"      # in results/: calibration before and after
PRECISION_RECALL = "precision_recall.png"  # in results/: multi-label, per label
SUSPECTS = "suspect_labels.csv"
LR_FIND_PNG = "lr_find.png"
LR_FIND_JSON = "lr_find.json"
