"""Floor 4, what a run leaves behind: report.json, errors.jsonl, TensorBoard, and the run
directory's file names (`names`, the one module that spells them). Stands on core only."""
