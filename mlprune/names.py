"""Every name mlprune writes into MLflow, spelled once: tags, params, metrics, artifacts.

Users, docs, the MLflow UI's filters and other tools rely on these (they never change);
every module that reads or writes one imports it from here. Imports nothing.
"""

# ---- tags of a state run ------------------------------------------------------------
TAG_KEY = "mlprune.key"  # the state's content key (spec.keys)
TAG_KIND = "mlprune.kind"  # init, train, prune, reinit, "reinit+train", analysis, ...
TAG_ROOT = "mlprune.root"  # run id of the lineage's root state (a root: its own)
TAG_PARENT_PREFIX = "mlprune.parent."  # + role: run id of each parent beyond the primary one
TAG_VERSION = "mlprune.version"  # the mlprune version that wrote the run
TAG_DEVICE = "mlprune.device"  # where the state was computed (e.g. "cpu", "NVIDIA H200")
TAG_INVALID = "mlprune.invalid"  # why a state failed its integrity check (it is then never used)
TAG_ERROR = "mlprune.error"  # why a state run is FAILED or KILLED
TAG_DIVERGED = "mlprune.diverged"  # on a state whose training diverged and was recorded (why)
TAG_WORKFLOW = "mlprune.workflow"  # run id of the workflow run that computed the state
TAG_DATA_DIR = "mlprune.data_dir"  # where a root's data was read (not in the key; children reuse it)
TAG_SLURM_JOB_ID = "mlprune.slurm.job_id"  # the SLURM job (SLURM_JOB_ID) whose process computed the state
TAG_HEARTBEAT = "mlprune.heartbeat"  # a RUNNING claim's last sign of life (unix time)
TAG_CLAIM_HOST = "mlprune.claim.host"  # host/pid namespace of the process holding a claim (or a workflow run)
TAG_CLAIM_PID = "mlprune.claim.pid"
TAG_HASH_PREFIX = "mlprune.sha256."  # + artifact file name: its SHA-256 (also in state.json)
TAG_CHECKPOINTS = "mlprune.checkpoints"  # on a claim run: the commit records of its resumable checkpoints (JSON)
# the software and hardware a state was computed with (never keyed; a series mixing them is warned about)
TAG_ENV_TORCH = "mlprune.env.torch"  # torch.__version__
TAG_ENV_TORCHVISION = "mlprune.env.torchvision"  # torchvision.__version__ ("none" when not installed)
TAG_ENV_PYTHON = "mlprune.env.python"  # platform.python_version()
TAG_ENV_CUDA = "mlprune.env.cuda"  # torch.version.cuda ("none": a CPU build)
TAG_ENV_CUDNN = "mlprune.env.cudnn"  # torch.backends.cudnn.version() ("none" without cuDNN)
TAG_ENV_DEVICE_NAME = "mlprune.env.device_name"  # the GPU's name, or the CPU's model name
ENV_TAGS = (TAG_ENV_TORCH, TAG_ENV_TORCHVISION, TAG_ENV_PYTHON, TAG_ENV_CUDA, TAG_ENV_CUDNN, TAG_ENV_DEVICE_NAME)
TAG_PLUGIN_PREFIX = "mlprune.plugin."  # + entry name: {distribution, version, digest} of a plugin the state depends on

# ---- tags of a workflow run (the run a recipe or sweep works in) ---------------------
TAG_RECIPE = "mlprune.recipe"  # the recipe (or "sweep a b") a workflow run ran
TAG_STATES = "mlprune.states"  # how many states it reached
TAG_FIGURES = "mlprune.figures"  # its figures: how many were drawn (after the run, in the background), or why not
TAG_RECORD = "mlprune.record"  # SHA-256 of its plan.json and params.json: a re-run reaching the
# same states with the same parameters adds no second record

# ---- MLflow's own tags --------------------------------------------------------------
TAG_PARENT_RUN = "mlflow.parentRunId"  # the primary parent: the UI nests children under it
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"  # the run's description (markdown) in the UI

# ---- MLflow's own tags of an experiment ----------------------------------------------
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's kind of an experiment (where its UI reads it)
EXPERIMENT_KIND = "custom_model_development"  # ... model training: the runs, not the GenAI traces
TAG_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # + key: a runs-table view the UI opens with ?viewStateShareKey=
UI_VIEW_KEY = "mlprune-states"  # the shared view `mlprune ui` writes: states, study columns, flat

# ---- params of a state run -----------------------------------------------------------
PARAM_ROUND = "round"  # recipe round (0 = the dense training)
PARAM_BRANCH = "branch"  # recipe branch (main, or a control's name)
PARAM_SEED = "seed"  # the seed of the state's root (every state of a recipe; never keyed)
PARAM_RECIPE = "recipe"  # the recipe that planned the state
PARAM_MODEL = "model"  # the root's model
PARAM_DATASET = "dataset"  # the root's dataset
PARAM_SPARSITY = "sparsity"  # the sparsity the state reached (the metric, as a param to group by)
# every run option (executor.options.RUN_OPTIONS) recorded on a state is a param "run.<option>"
RUN_PARAM_PREFIX = "run."
PARAM_THREADS = RUN_PARAM_PREFIX + "threads"  # torch threads the state was computed with (bytes depend on it)
PARAM_CHECKPOINT_EVERY = RUN_PARAM_PREFIX + "checkpoint_every"  # cadence of resumable checkpoints ("1ep", "off")
PARAM_BATCH = RUN_PARAM_PREFIX + "batch"  # sibling trainings its training ran batched with (1: alone)
# every resolved step option is a param "<step kind>.<option>" (e.g. prune.method, train.lr)

# ---- metrics of a state run ----------------------------------------------------------
M_TEST_ACCURACY = "test_accuracy"
M_TEST_LOSS = "test_loss"
M_VAL_ACCURACY = "val_accuracy"
M_VAL_LOSS = "val_loss"
M_TRAIN_LOSS = "train_loss"  # per epoch (step = epoch)
M_LR = "lr"  # per epoch: the learning rate at the epoch's last iteration
M_TRAIN_SPARSITY = "train_sparsity"  # per epoch of a gradually pruned training: sparsity at the epoch's end
M_SPARSE_UPDATES = "sparse_updates"  # per epoch of a dynamic sparse training (SET, RigL): mask updates so far
M_SPARSITY = "sparsity"  # fraction of prunable weights masked
M_SPARSITY_PREFIX = "sparsity."  # + param name
M_COMPRESSION = "compression_ratio"  # prunable weights / kept prunable weights
M_COMPRESSION_ALL = "compression_ratio_all"  # ShrinkBench's: all parameters / nonzero parameters
M_FLOPS_DENSE = "flops_dense"
M_FLOPS_MASKED = "flops_masked"
M_THEORETICAL_SPEEDUP = "theoretical_speedup"  # flops_dense / flops_masked (ShrinkBench's convention)
M_TEST_ACCURACY_TOP5 = "test_accuracy_top5"  # datasets of more than 10 classes: true class among the top 5
M_DURATION = "duration_s"
M_ITERATIONS = "iterations"  # optimizer steps a state's training ran
M_EARLY_STOP_EPOCH = "early_stop_epoch"
M_EARLY_STOP_ITERATION = "early_stop_iteration"
M_DIVERGED = "diverged"  # 1 on a state whose training diverged (train on_divergence: record)
M_DIVERGED_EPOCH = "diverged_epoch"  # the epoch in which it did
M_EARLY_STOP_TEST_ACCURACY = "early_stop_test_accuracy"  # test accuracy at the early-stopping epoch
M_TRAIN_ACCURACY = "train_accuracy"  # per epoch: accuracy on the epoch's training batches, as trained
M_EPOCH_TEST_LOSS = "epoch_test_loss"  # per epoch (step = epoch): the test set at each epoch's end
M_EPOCH_TEST_ACCURACY = "epoch_test_accuracy"
M_CLASS_ACCURACY_PREFIX = "test_accuracy.class."  # + class index: the class's recall on the test set
M_CKA_PREFIX = "cka."  # + param name: linear CKA of a layer's outputs (a cka analysis)
# analysis states of linear interpolation (step `interpolate`; Frankle et al. 2020)
M_INSTABILITY = "instability"  # max test error along the path minus the endpoints' mean test error
M_BARRIER_LOSS = "barrier_loss"  # the same for the test loss
M_TRAIN_INSTABILITY = "train_instability"  # ... on the training set (option train_set)
M_TRAIN_BARRIER_LOSS = "train_barrier_loss"
M_SPAWN_ITERATION = "spawn_iteration"  # two spawned copies: the iteration of the schedule they started from
# structured states (channels removed: mlprune.compact): the compact network's cost, measured
M_PARAMS_COMPACT = "params_compact"  # parameters of the compact network
M_FLOPS_COMPACT = "flops_compact"  # its multiply-adds (analysis.flops, batch 1)
M_LATENCY = "latency_ms"  # median ms of one batch-64 forward pass of the compact network
M_LATENCY_BATCH1 = "latency_ms.batch1"  # the same at batch 1
M_LATENCY_DENSE = "latency_ms.dense"  # the dense (masked) network, batch 64, timed alongside
M_LATENCY_DENSE_BATCH1 = "latency_ms.dense.batch1"
M_SPEEDUP = "speedup"  # latency_ms.dense / latency_ms (batch 64)
M_SPEEDUP_BATCH1 = "speedup.batch1"
M_COMPACT_DIFF = "compact_max_abs_diff"  # max |compact - masked| of the outputs on a test batch
# resumable trainings (mlprune.training.checkpoint)
M_CHECKPOINT_ITERATION = "checkpoint_iteration"  # on a claim run, step = value: a checkpoint committed there
M_RESUMED_FROM_ITERATION = "resumed_from_iteration"  # a trained state: the checkpoint it resumed from (0: none)

# ---- artifacts of a state run ----------------------------------------------------------
WEIGHTS_FILE = "weights.safetensors"
MASKS_FILE = "masks.safetensors"
STATE_FILE = "state.json"
PREDICTIONS_FILE = "predictions.safetensors"  # per test example, in test-set order: the tensors below
CONFUSION_FILE = "confusion.json"  # {"classes", "matrix": rows = true class, columns = predicted}
CKA_FILE = "cka.json"  # a cka analysis: per-layer CKA, the probe set and the estimator
# tensors of predictions.safetensors
PRED_PREDICTED = "predicted"  # the predicted class: uint8 up to 256 classes, int16, int32
PRED_LABEL = "label"  # the true class (same type)
PRED_TRUE_PROBABILITY = "true_class_probability"  # float32: softmax probability of the true class
INTERPOLATION_FILE = "interpolation.json"  # per alpha: test (and train) error and loss
INTERPOLATION_FIGURE_FILE = "interpolation.png"  # error and loss vs alpha

# ---- files of a resumable checkpoint, under checkpoints/<label>/ of a claim run ------------
STATE_DATA_FINGERPRINT = "data_fingerprint"  # in state.json: sizes + SHA-256 of the data it was computed on
STATE_DATA_CHANGE = "data_change"  # in state.json: {from, to} fingerprints, computed with --accept-data-change
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_TENSORS_FILE = "checkpoint.safetensors"  # weights, buffers, masks, optimizer and scaler tensors, sums
CHECKPOINT_META_FILE = "checkpoint.json"  # iteration, step, histories, what is not a tensor

# ---- files of a compact export (mlprune export RUN_ID DIR --compact) --------------------
COMPACT_WEIGHTS_FILE = "compact.safetensors"
COMPACT_ARCH_FILE = "compact.json"

# ---- artifacts of a workflow run -------------------------------------------------------
PLAN_FILE = "plan.json"  # the plans it ran: nodes with keys, rounds, branches, run ids
STATES_FILE = "states.json"  # {plan node: state run id}
PARAMS_FILE = "params.json"
LINEAGE_SVG = "lineage.svg"
LINEAGE_HTML = "lineage.html"

# ---- files of a report (mlprune report OUT_DIR) -----------------------------------------
PIES_DIR = "pies"  # one JSON per recipe series and round: its PIEs vs round 0

# ---- environment ---------------------------------------------------------------------
ENV_THREADS = "MLPRUNE_THREADS"
ENV_SCHEDULER = "MLPRUNE_SCHEDULER"  # the scheduler where --scheduler is not given (auto)
ENV_CLAIM_TIMEOUT = "MLPRUNE_CLAIM_TIMEOUT"
ENV_DEVICE = "MLPRUNE_DEVICE"
ENV_DATA_DIR = "MLPRUNE_DATA_DIR"
ENV_PLUGIN_MODULES = "MLPRUNE_PLUGIN_MODULES"  # modules workers import for plugins registered in-process
ENV_CACHE_DIR = "MLPRUNE_CACHE_DIR"  # migrated empty sqlite stores (default ~/.cache/mlprune)
ENV_SQLITE_READS = "MLPRUNE_SQLITE_READS"  # 0: read sqlite stores through MLflow only (store.sqlview)
ENV_FIGURES = "MLPRUNE_FIGURES"  # 0: `mlprune run` logs no recipe figures unless --figures
ENV_BACKGROUND = "MLPRUNE_BACKGROUND"  # 0: a run's figures and cached records before it returns
ENV_DATA_WORKERS = "MLPRUNE_DATA_WORKERS"  # loader processes of image-folder datasets (ImageNet)
ENV_LATENCY_BUDGET = "MLPRUNE_LATENCY_BUDGET"  # seconds of timing per batch size for a compact network's latency (2)
ENV_SQLITE_TIMEOUT = "MLPRUNE_SQLITE_TIMEOUT"  # seconds a read waits for a locked sqlite store (30)
ENV_CHECKPOINT_BUDGET = "MLPRUNE_CHECKPOINT_BUDGET"  # share of training time checkpoints may cost (0.05; inf)
ENV_CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"  # cuBLAS reads it; deterministic runs set it (":4096:8")

DEFAULT_EXPERIMENT = "mlprune"
LINEAGE_ROUTE = "/mlprune/lineage/"  # the lineage pages of `mlflow server --app-name mlprune`
