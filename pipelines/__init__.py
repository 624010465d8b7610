"""tf.data pipelines and the declared input spec (installed as safetrain.pipelines)."""

if __name__ == "pipelines":  # imported by the folder's name (python run from the repository): a second copy
    raise ImportError(
        "the folder pipelines/ installs as safetrain.pipelines; importing it as `pipelines` would load a second "
        "copy whose registrations (sources) safetrain never sees. Import safetrain.pipelines instead, e.g. "
        "`from safetrain.pipelines.build import build_datasets`")
