"""Typed, validated configuration for every stage (pydantic), loaded from YAML.

Every field has a documented default; unknown keys and out-of-range values are rejected
with an error that names the file and the field and says how to fix it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compo.directions.config import DirectionsConfig
from compo.oracles import DEFAULT_ORACLE, ORACLES, oracle_kind
from compo.oracles.service import GenerationRadius  # noqa: F401 (its settings, named here)
from compo.perturb_config import PerturbConfig
from compo.trackers import tracker_names

DEFAULT_TOKEN_ENV = "COMPO_ORACLE_API_TOKEN"  # the variable the service itself reads


class StrictModel(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    """Where preference pairs come from and how they are tokenized."""

    path: str = Field(description="JSONL file, or a directory saved with datasets.save_to_disk")
    split: str | None = Field(None, description="split name when path is a DatasetDict")
    max_prompt_tokens: int = Field(512, gt=0, description="prompt token limit")
    max_completion_tokens: int = Field(512, gt=0, description="limit per response")
    too_long: Literal["error", "truncate", "skip"] = Field(
        "error",
        description="rows over the limits: fail, truncate (prompt from the left, "
        "responses from the right) or skip and count in the report",
    )
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="malformed rows (missing field, empty response, chosen == "
        "rejected, bad bytes): fail naming file:line, or skip and count"
    )
    append_eos: bool = Field(True, description="end each response with the EOS token")


class ReselectConfig(StrictModel):
    """Each iteration's pairs scored under the current weights, as the reference code does
    (compute_gradients.py, noisy_pair_select): the next noisy ones from a running offset."""

    delta: float = Field(3.0, gt=0, description="margin threshold (the reference: 3.0)")
    rule: Literal["abs", "reference"] = Field(
        "reference", description="see SplitConfig.rule; reference: 0 < margin < delta (its "
        "`chosen > rejected and |margin| < threshold and |margin| != 0`)")
    scan_batch: int = Field(8, gt=0, description="candidate pairs scored per forward pass")


class TrainDataConfig(DataConfig):
    """The data of a ComPO run: DataConfig plus re-selection."""
    reselect: ReselectConfig | None = Field(None, description="pick each iteration's pairs under "
        "the current weights (file order: shuffle: false); None: the fixed schedule")


class ModelConfig(StrictModel):
    """The policy: a local Hugging Face causal LM directory."""

    path: str = Field(description="local directory with config.json and weights")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', ...; 'auto': the layers "
                        "spread over every visible GPU (device_map)")
    batch_size: int = Field(8, gt=0, description="sequences per forward pass when scoring")


class ClipConfig(StrictModel):
    """How the unit-norm estimate is made sparse (entries below a threshold are zeroed).

    raw: threshold = value (the paper's lambda_g, model-specific: 2.2e-4 for Mistral-7B).
    sigma: threshold = value / sqrt(numel); 2.326 keeps ~2% of a Gaussian-like vector.
    fraction: keep the `value` fraction of entries with the largest magnitude.
    """

    mode: Literal["raw", "sigma", "fraction"] = "sigma"
    value: float = Field(2.326, gt=0)

    @model_validator(mode="after")
    def _fraction_in_range(self) -> ClipConfig:
        if self.mode == "fraction" and not self.value <= 1:
            raise ValueError(f"clip.value is a fraction in (0, 1] for mode 'fraction', "
                             f"got {self.value}; e.g. 0.02 keeps 2% of entries")
        return self


class ComPOConfig(StrictModel):
    """Algorithm 2's knobs (defaults: the paper's Mistral-7B settings)."""

    num_perturbations: int = Field(1600, gt=0, description="m, directions per iteration")
    radius: float = Field(5e-4, gt=0, description="r, perturbation radius")
    perturb: PerturbConfig = Field(default_factory=PerturbConfig)
    directions: DirectionsConfig = Field(default_factory=DirectionsConfig)  # compo/directions/
    clip: ClipConfig = Field(default_factory=ClipConfig)
    accept_ratio: float = Field(
        0.2, ge=0, lt=1, description="lambda: update only if n_minus / m > lambda"
    )
    step_scale: float = Field(0.035, gt=0, description="gamma: step = gamma * n_minus / m")
    vote_rule: Literal["any", "all", "majority"] = Field(
        "any", description="with several pairs per batch, how pair improvements make a vote"
    )
    direction_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype directions are rounded to; bfloat16 with a bf16 model makes "
        "h*z products exact and halves the bytes (GPU)",
    )
    block_elements: int | None = Field(
        None, gt=0,
        description="direction values generated per block (memory/speed, never the math; "
        "default 2**20 on CPU, 2**26 on CUDA): bigger blocks batch several directions of "
        "a small model into one matmul",
    )
    products: Literal["auto", "fused", "eager"] = Field(
        "auto",
        description="how the likelihood oracle computes h z^T and the log-prob changes: "
        "fused (one Triton kernel, directions made in registers; CUDA, needs the gpu extra), "
        "eager (directions in blocks, torch matmul); auto: fused on CUDA with compute "
        "capability >= 8.0 when triton is installed, else eager (one info line says why)",
    )
    # the public reference code's rules (ComparisonPO, compute_gradients.py), off by default
    accept_rule: Literal["strict", "at_least"] = Field("strict", description="strict: n_minus / m "
        "> accept_ratio (the paper); at_least: n_minus >= accept_count (the reference)")
    accept_count: int | None = Field(None, gt=0, description="at_least: the count (reference: 330)")
    accept_check: Literal["none", "trial_step"] = Field("none", description="trial_step: keep W "
        "unless log pi(y+) rises and log pi(y-) falls under W - trial_step_scale * g_clip "
        "(pairs combined by vote_rule; the reference: any); see compo.train.trial_check")
    trial_step_scale: float = Field(5.0, gt=0, description="trial step along g_clip (reference: 5)")

    @model_validator(mode="after")
    def _accept_count_with_at_least(self) -> ComPOConfig:
        count, m = self.accept_count, self.num_perturbations
        if (self.accept_rule == "at_least") != (count is not None) or (count or 0) > m:
            raise ValueError(f"accept_count (got {count}) goes with accept_rule: at_least only and "
                             f"is at most num_perturbations ({m}); e.g. 330 for m = 1800")
        return self

    @model_validator(mode="after")
    def _directions_fit(self) -> ComPOConfig:
        if reason := self.directions.refusal(self.perturb.target, self.products):
            raise ValueError(reason)
        return self


class RayConfig(StrictModel):
    """Distributed votes on a Ray cluster: one worker actor per GPU (or CPU slot)."""

    address: str | None = Field(
        None, description="'auto', 'ray://host:10001' or host:port (--ray-address overrides "
        "it); None: a local instance when local_* are set, else ray.init()'s default "
        "(RAY_ADDRESS, a cluster started on this machine, or a new local instance)")
    num_workers: int | None = Field(
        None, gt=0, description="worker actors; default one per GPU free when the run "
        "starts, or one per cpus_per_worker free CPUs when the cluster has no GPU")
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="one GPU per worker; auto: when the cluster has GPUs")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    gpus_per_worker: float = Field(
        1.0, gt=0, description="GPUs reserved per worker when workers use GPUs; below 1 "
        "several workers share a GPU (0.5: two per GPU); above 1, a whole number, each "
        "generation worker (a generative oracle) spreads its model over that many GPUs of "
        "one node (device_map), e.g. 2 for a 70B model on 80 GB GPUs")
    cpus_per_body: float = Field(
        1.0, gt=0, description="CPUs of the body (likelihood oracle: it holds the model and "
        "runs it once per iteration; the workers hold only the moved parameters)")
    gpus_per_body: float = Field(1.0, gt=0, description="GPUs of the body when on GPUs")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement group strategy: PACK fills nodes, SPREAD uses many")
    chunk_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="perturbation indices per task; auto: about 4 chunks per live "
        "worker (m / (4 workers), at least 1, whole oracle.generation_batch_size batches), "
        "so every worker is busy; or a fixed number. Votes never depend on it")
    tasks_in_flight: int = Field(2, gt=0, description="chunks queued per worker at a time")
    straggler_timeout_s: float = Field(
        300.0, gt=0, description="a worker silent this long while holding chunks is treated "
        "as unreachable: its chunks go to live workers (it rejoins if it answers)")
    max_redispatch: int = Field(
        3, ge=0, description="times one chunk may be re-dispatched before the run fails")
    max_restarts: int = Field(
        3, ge=0, description="Ray restarts of a worker actor that died (it reloads the model)")
    load_timeout_s: float = Field(
        1800.0, gt=0, description="time for every worker to load the model")
    call_timeout_s: float = Field(
        600.0, gt=0, description="time for a worker to prepare an iteration (one forward "
        "pass) or acknowledge an update; a slower worker sits the iteration out")
    placement_timeout_s: float = Field(
        600.0, gt=0, description="time to reserve the placement group's bundles")
    poll_interval_s: float = Field(
        0.5, gt=0, description="how often the gather loop looks for stragglers and restarts")
    local_num_cpus: int | None = Field(
        None, gt=0, description="start a new local instance (address None) with this many "
        "CPUs; default: ray.init()'s choice")
    local_object_store_bytes: int | None = Field(
        None, gt=0, description="start a new local instance with this object store size")

    @field_validator("gpus_per_worker", "gpus_per_body")
    @classmethod
    def _whole_above_one(cls, value: float, info) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"ray.{info.field_name} above 1 is a whole number of GPUs (got "
                             f"{value:g}): a model spreads over whole GPUs of one node")
        return value


class OracleCommon(StrictModel):
    """The oracle: fields of every kind (which kind, its token, how failures stop a run)."""

    kind: str = Field(DEFAULT_ORACLE, description="which oracle makes the votes, one of "
                      "compo/oracles/ (likelihood: log-probs of the pair's responses; "
                      "service: generated responses compared by the oracle service)")
    token_env: str = Field(
        DEFAULT_TOKEN_ENV, min_length=1, description="environment variable holding the "
        "service's bearer token (unset: no token is sent)")
    max_abstain_ratio: float = Field(
        0.5, ge=0, le=1, description="an iteration whose comparisons needing an answer "
        "abstained more than this share takes no step (a failed iteration: its vote ratio "
        "would rest on a minority; a healthy judge behind the service's retries abstains on "
        "a few percent, a rejected key, no quota or a service that is down on ~all)")
    max_failed_iterations: int = Field(
        3, gt=0, description="failed iterations in a row before the run stops (exit 3), "
        "saved before the first of them so that --resume redoes them once the cause is "
        "fixed; a restart of the service or a rate-limit burst can cost one or two")
    report_timeout_s: float = Field(
        10.0, gt=0, description="time for posting one iteration summary (a failed report is "
        "a warning, retried with the next iteration)")

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        oracle_kind(kind)  # a ValueError naming the registered kinds
        return kind


class OracleConfig(OracleCommon, *(kind.settings for kind in ORACLES.values())):
    """The oracle behind the votes: the common fields plus each kind's own section
    (compo/oracles/: the service oracle's generation and request settings)."""


class ExportConfig(StrictModel):
    """How final/ stores the tuned output layer (delta.safetensors is always exact)."""

    dtype: Literal["float32", "model"] = Field(
        "float32", description="float32: the output layer in float32 and the checkpoint "
        "marked float32, so from_pretrained(final, dtype='auto') keeps the update (loads the "
        "model in float32: 2x the memory of bf16; the files grow by the output layer only); "
        "model: stored in model.dtype (a bf16 export rounds paper-scale steps away; "
        "export_report.json says how much is kept)")


class TrainConfig(StrictModel):
    """A ComPO run: model, noisy pairs, algorithm, bookkeeping."""

    model: ModelConfig
    data: TrainDataConfig
    compo: ComPOConfig = Field(default_factory=ComPOConfig)
    seed: int = Field(0, ge=0, description="run seed: data order and all directions")
    batch_size: int = Field(1, gt=0, description="pairs per iteration (paper: 1)")
    epochs: int = Field(1, gt=0)
    shuffle: bool = True
    max_iterations: int | None = Field(None, gt=0, description="stop early after this many")
    output_dir: str = Field("runs", description="runs are written to <output_dir>/<run_id>")
    run_id: str | None = Field(None, description="default: derived from the time")
    checkpoint_every: int = Field(
        10, gt=0, description="iterations between commit points (checkpoint.json: progress, "
        "data offset); the weights' sparse changes are logged as each iteration ends")
    dense_every: int = Field(
        100, gt=0, description="iterations between dense float32 masters of the moved "
        "parameters (written at a commit point; sooner when the delta log reaches 4 "
        "masters' bytes); between them only the sparse delta log grows")
    oracle_service_url: str | None = Field(
        None, description="report per-iteration summaries to this oracle service"
    )
    ray: RayConfig | None = Field(
        None, description="run the votes on a Ray cluster (see RayConfig); None: this process"
    )
    oracle: OracleConfig = Field(
        default_factory=OracleConfig, description="the oracle behind the votes (see "
        "OracleConfig): likelihood, or generated responses judged by the oracle service"
    )
    export: ExportConfig = Field(default_factory=ExportConfig,
                                 description="how final/ is written (see ExportConfig)")
    report_to: list[str] = Field(
        default_factory=list, description="experiment trackers (as TRL's report_to): any of "
        "tensorboard (RUN_DIR/tensorboard/), wandb, mlflow, trackio, each an extra (pip "
        "install 'compo[NAME]'); per iteration the figures of metrics.jsonl, the config as "
        "hyper-parameters, the run id as run name (compo/trackers/); 'none' or []: none")

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> list[str]:  # a name, a list, or 'none'
        return tracker_names(value)

    @field_validator("data", mode="before")
    @classmethod
    def _plain_data(cls, value: Any) -> Any:  # a DataConfig is validated as TrainDataConfig
        return value.model_dump() if type(value) is DataConfig else value

    @model_validator(mode="after")
    def _reference_rules_fit(self) -> TrainConfig:
        if self.data.reselect is not None and self.shuffle:
            raise ValueError("data.reselect scans the pairs in file order from a running "
                             "offset (the reference code); set shuffle: false")
        needs = in_process_options(self)
        if self.ray is not None and needs:
            raise ValueError(f"{', '.join(needs)}: not supported on Ray (they score pairs under "
                             "weights the workers do not hold); remove them or the ray section")
        return self

    @model_validator(mode="after")
    def _several_gpus_only_where_a_model_is(self) -> TrainConfig:
        generative = oracle_kind(self.oracle.kind).generative
        if self.ray is not None and self.ray.gpus_per_worker > 1 and not generative:
            raise ValueError(f"ray.gpus_per_worker {self.ray.gpus_per_worker:g}: head workers "
                             f"(oracle.kind {self.oracle.kind}) hold only the moved parameters, "
                             "not the model; use at most 1, and ray.gpus_per_body for the "
                             "body's model")
        return self

    @model_validator(mode="after")
    def _oracle_fits_the_run(self) -> TrainConfig:
        oracle_kind(self.oracle.kind).check(self)  # its own rules, e.g. targets it refuses
        return self


def in_process_options(config: TrainConfig) -> list[str]:
    """Options set that need the model in the training process (refused on Ray)."""
    return ["data.reselect"] * (config.data.reselect is not None) + [
        "compo.accept_check: trial_step"] * (config.compo.accept_check == "trial_step")


class SplitConfig(StrictModel):
    """Noisy/clean split by the reference model's log-likelihood margin."""

    model: ModelConfig
    data: DataConfig
    delta: float = Field(3.0, gt=0, description="noisy iff |margin| <= delta (paper: 3)")
    rule: Literal["abs", "reference"] = Field(
        "abs", description="abs: |margin| <= delta; reference: 0 < margin < delta "
        "(the public reference code)"
    )
    output_dir: str = "split"
    histogram_bins: int = Field(20, gt=1)

    @model_validator(mode="after")
    def _finite_delta(self) -> SplitConfig:
        if not math.isfinite(self.delta):
            raise ValueError("delta must be a finite number of nats, e.g. 3.0")
        return self

