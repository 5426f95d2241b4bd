use std::path::PathBuf;

use cbs_flow::solver::Solver;
use cbs_run::WeightsKind;
use cbs_split::{JvpMethod, MonitorKind, ProbeKind, SplitMode};
use clap::{Args, Parser, Subcommand};

/// Complexity-Balanced Splitting for flow-matching image models.
///
/// The pipeline: train-aux → estimate-splits → train-experts → sample → eval-fid.
/// Time runs from t = 0 (noise) to t = 1 (data); x_t = t·x1 + (1 − t)·x0 on the default linear
/// path (train.path = "gvp" or "vp": x_t = α(t)·x1 + σ(t)·x0).
#[derive(Parser, Debug)]
#[command(
    name = "cbs",
    version,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug). `CBS_LOG` overrides (tracing filter syntax).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one model on all of [0, 1]: the auxiliary model of CBS, or a monolithic baseline.
    TrainAux(TrainArgs),
    /// Estimate the expert boundaries from an auxiliary model (monitor + equidistribution).
    EstimateSplits(EstimateArgs),
    /// Train N experts, expert i on its interval [t_i, t_{i+1}] only.
    TrainExperts(TrainExpertsArgs),
    /// Sample images from a checkpoint (or a set of experts) and write a grid and samples.npz.
    Sample(SampleArgs),
    /// Evaluate the network once on given x, t, y (safetensors in and out): its raw output and
    /// the velocity, for parity checks against PyTorch and for debugging.
    Forward(ForwardArgs),
    /// Encode a data set's images to SD-VAE latents (the `latents` data source reads them),
    /// as SiT and DiT train on ImageNet-256.
    EncodeLatents(crate::vae::EncodeLatentsArgs),
    /// Decode a latents file to images with the SD VAE (grid.png, samples.npz).
    Decode(crate::vae::DecodeArgs),
    /// FID, sFID, Inception Score, precision/recall and KID of samples against reference
    /// images or statistics (Inception-v3 features, as pytorch-fid).
    EvalFid(EvalFidArgs),
    /// Train a small classifier on the data set; its penultimate layer is an offline feature
    /// space for `eval-fid --features classifier:RUN_DIR` (not comparable with Inception FID).
    TrainClassifier(TrainClassifierArgs),
    /// Mean log-likelihood and sliced W2 of point samples against the true Gaussian mixture.
    EvalGmm(EvalGmmArgs),
    /// A Gaussian-mixture run's training loss per time bin next to the exact Bayes floor
    /// (the least achievable loss) and the excess loss = loss − floor; also as CSV.
    LossFloor(LossFloorArgs),
    /// Training-loss curves of runs from their metrics.jsonl on one chart (an experts
    /// directory adds one curve per expert).
    Plot(PlotArgs),
    /// Run a declared grid of arms × seeds (monolithic, uniform split, CBS, ...) end to end —
    /// training, splits, sampling, metrics with bootstrap intervals, per-time velocity error —
    /// and write results.tsv, summary.md and charts. Finished stages are skipped: the same
    /// command continues a killed experiment. See configs/experiments/.
    Experiment(ExperimentArgs),
    /// Start one process per GPU of this node for a training command (data parallelism), as
    /// `torchrun --no-python` does: each gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    /// MASTER_PORT; the first to fail stops the others.
    ///
    /// Example: `cbs launch --gpus 4 -- train-aux --config c.toml --out runs/aux --device cuda`.
    /// Several nodes: the same command on each with --nnodes, --node-rank, --master-addr and
    /// --master-port (or torchrun; see the README).
    Launch(crate::launch::LaunchArgs),
    /// Print the parameter names, shapes and total count of a model preset.
    Inspect(InspectArgs),
    /// Time training or sampling steps of a preset (median step ms, images/s, peak memory).
    ///
    /// CPU threads: `RAYON_NUM_THREADS=N` (or `CANDLE_NUM_THREADS=N`), as for every command;
    /// the default is the number of physical cores.
    Bench(BenchArgs),
    /// Check a device against the CPU: every op's forward and gradients, and one training
    /// step of each backbone (loss and every gradient), in f32 and bf16.
    ///
    /// The reference is the composed ops on the CPU in f64. Tolerances: relative 1e-4 in f32,
    /// 5e-2 in bf16. Exits non-zero when a check fails. `--device cpu` checks the CPU kernels
    /// the same way (convolutional backbones skip bf16 there: candle's CPU backend has no bf16
    /// convolution).
    DeviceCheck(DeviceCheckArgs),
}

#[derive(Args, Debug)]
pub struct DeviceCheckArgs {
    /// Backbones whose training step is checked (16×16 RGB images, 10 classes; MLP presets
    /// on 2-D points).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sit-nano-4,jit-nano-4,unet-mini,mlp-64"
    )]
    pub models: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The feature space of `eval-fid`.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureSpace {
    Inception,
    Classifier(PathBuf),
}

fn parse_unit_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: expected a time in [0, 1]")),
    }
}

fn parse_features(s: &str) -> Result<FeatureSpace, String> {
    match s.split_once(':') {
        None if s == "inception" => Ok(FeatureSpace::Inception),
        Some(("classifier", dir)) if !dir.is_empty() => Ok(FeatureSpace::Classifier(dir.into())),
        _ => Err(format!(
            "`{s}`: expected `inception` or `classifier:RUN_DIR` (a `cbs train-classifier` run)"
        )),
    }
}

/// Device selection shared by every command that computes.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a binary built with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training configuration (TOML with [model], [data], [train]); see configs/.
    /// With --resume it may be omitted: the run directory's config.toml is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory: checkpoints/, metrics.jsonl and config.toml are written there.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

/// How a training command runs, shared by `train-aux` and `train-experts`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Continue from the latest checkpoint(s) in --out (exactly: same batches and noise);
    /// with train-experts, an expert without a checkpoint yet starts fresh.
    #[arg(long)]
    pub resume: bool,
    /// Override train.steps (the total per run, not the number of additional steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override train.seed (expert i of train-experts uses seed + i).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override train.kernels: `fused` (hand-written kernels where they apply: CPU f32/f64)
    /// or `composed` (candle's ops everywhere). Recorded in the run's config.toml.
    #[arg(long, value_enum)]
    pub kernels: Option<cbs_kernels::Kernels>,
    /// Override train.precision: `f32`; `tf32` (TensorFloat-32 products on CUDA); `bf16` or
    /// `f16` (half-precision products and attention; weights, optimizer state, EMA, norm
    /// statistics and loss stay f32). Recorded in the run's config.toml.
    #[arg(long, value_enum)]
    pub precision: Option<cbs_kernels::Precision>,
    /// Override data.max_memory_gib: the most memory (GiB) a data reader may allocate for
    /// what a file declares (default: half the physical memory).
    #[arg(long, value_name = "GIB", value_parser = parse_memory_limit)]
    pub max_memory_gib: Option<cbs_data::MemoryLimit>,
    /// Override train.init_from: start from these weights instead of the reference
    /// initialisation (a cbs run or checkpoint directory, or a PyTorch checkpoint of the same
    /// architecture), e.g. every expert from a trained monolithic model. Fresh runs only.
    #[arg(long, value_name = "CHECKPOINT")]
    pub init_from: Option<PathBuf>,
    /// Override train.init_weights: which weights of --init-from (`ema` or `model`).
    #[arg(long, value_enum)]
    pub init_weights: Option<WeightsKind>,
    /// When to read each step's loss and gradient norm back from the device: `auto` (after
    /// every step on the CPU, at logging intervals elsewhere), `every-step` (a non-finite step
    /// stops the run at that step), `logging` (the GPU never waits for the host between
    /// logging steps; a non-finite step is still never applied, and stops the run at the next
    /// logging step, before any checkpoint).
    #[arg(long, value_enum, default_value = "auto")]
    pub host_reads: cbs_train::HostReads,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub dist: crate::launch::DistArgs,
}

fn parse_memory_limit(s: &str) -> Result<cbs_data::MemoryLimit, String> {
    s.parse::<f64>()
        .ok()
        .and_then(cbs_data::MemoryLimit::from_gib)
        .ok_or_else(|| format!("{s:?}: expected a positive number of GiB"))
}

impl RunArgs {
    /// The device (`cuda` = this node's GPU LOCAL_RANK in a group), the data-parallel group
    /// joined, --resume and the stop-after-step signal handler.
    pub fn options(&self) -> anyhow::Result<cbs_train::TrainOptions> {
        let device = self.device.open_local(self.dist.local_rank)?;
        let dist = self.dist.connect(&device)?;
        Ok(cbs_train::TrainOptions {
            resume: self.resume,
            device,
            stop: Some(crate::signals::stop_after_step()),
            dist,
            host_reads: self.host_reads,
        })
    }

    /// Apply --steps, --seed, --kernels, --precision, --max-memory-gib, --init-from and
    /// --init-weights to a configuration.
    pub fn apply(&self, cfg: &mut cbs_run::TrainConfig) {
        if let Some(s) = self.steps {
            cfg.train.steps = s;
        }
        if let Some(s) = self.seed {
            cfg.train.seed = s;
        }
        if let Some(k) = self.kernels {
            cfg.train.kernels = k;
        }
        if let Some(p) = self.precision {
            cfg.train.precision = p;
        }
        if let Some(m) = self.max_memory_gib {
            cfg.data.max_memory_gib = Some(m);
        }
        if let Some(p) = &self.init_from {
            cfg.train.init_from = Some(p.clone());
        }
        if let Some(w) = self.init_weights {
            cfg.train.init_weights = w;
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainExpertsArgs {
    /// Knots from `cbs estimate-splits` (its splits.toml).
    #[arg(long, conflicts_with = "uniform")]
    pub splits: Option<PathBuf>,
    /// Train the naive equal split into N experts instead (the baseline).
    #[arg(long)]
    pub uniform: Option<usize>,
    /// Training configuration shared by every expert (same hyperparameters as a baseline);
    /// each expert gets train.t_range = its segment and train.seed + i.
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory: splits.toml and expert-<i>/ run directories.
    #[arg(long)]
    pub out: PathBuf,
    /// Train only expert i (run experts as separate processes or machines).
    #[arg(long)]
    pub expert: Option<usize>,
    /// Train the experts on N GPUs at once, one process per expert on cuda:0 … cuda:N−1
    /// (more experts than GPUs: each GPU takes the next expert when one finishes).
    #[arg(long, value_name = "N", conflicts_with_all = ["expert", "devices"])]
    pub gpus: Option<usize>,
    /// As --gpus with the devices listed, e.g. `cuda:0,cuda:2` or `cpu,cpu` (on the CPU each
    /// process gets its share of the cores unless RAYON_NUM_THREADS is set).
    #[arg(long, value_delimiter = ',', conflicts_with = "expert")]
    pub devices: Option<Vec<String>>,
    /// With --gpus/--devices: each expert data-parallel on K devices at once (a `cbs launch`
    /// group per expert; --gpus 8 --gpus-per-expert 2 trains four experts at a time).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub gpus_per_expert: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A run directory (its latest checkpoint), a checkpoint directory, or a PyTorch
    /// checkpoint file of the reference code (with --model).
    #[arg(long, required_unless_present = "experts", conflicts_with = "experts")]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub torch: TorchModelArgs,
    /// A `cbs train-experts` directory: each step uses the expert that owns it, and every
    /// knot is a step edge (steps shared in proportion to segment length).
    #[arg(long)]
    pub experts: Option<PathBuf>,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub num: usize,
    /// Solver steps from t = 0 to t = 1.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "heun")]
    pub solver: Solver,
    /// euler-maruyama: the diffusion coefficient w(t) of the SDE (SiT's diffusion_form).
    #[arg(long, value_enum, default_value_t = cbs_flow::sde::Diffusion::Sbdm)]
    pub diffusion: cbs_flow::sde::Diffusion,
    /// euler-maruyama: scale of w(t) (SiT's diffusion_norm).
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive_f64)]
    pub diffusion_norm: f64,
    /// dopri5's absolute tolerance (SiT's default).
    #[arg(long, default_value_t = 1e-6, value_parser = parse_positive_f64)]
    pub atol: f64,
    /// dopri5's relative tolerance (SiT's default).
    #[arg(long, default_value_t = 1e-3, value_parser = parse_positive_f64)]
    pub rtol: f64,
    /// Classifier-free guidance scale on all channels (1 = no guidance).
    #[arg(long, default_value_t = 1.0)]
    pub cfg_scale: f64,
    /// Guide only for LO < t < HI (JiT: 0.1,1.0); elsewhere the conditional field alone.
    #[arg(long, value_delimiter = ',', num_args = 1, value_name = "LO,HI",
          value_parser = parse_unit_f64)]
    pub cfg_interval: Option<Vec<f64>>,
    /// Seed of the starting noise; the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class labels, comma separated, repeated to --num (default: all classes in turn).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<u32>>,
    /// Start from this noise (.npy, float, [num, C, H, W]) instead of seeded noise.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Decode the latent samples with this SD VAE (a diffusers AutoencoderKL directory, e.g.
    /// stabilityai/sd-vae-ft-mse) after dividing by its scaling_factor: grid.png and
    /// samples.npz hold images (for eval-fid), latents.npz the latents. Without it a latent
    /// model's samples go to latents.npz only (unscaled by 0.18215; `cbs decode` reads it).
    #[arg(long, value_name = "DIR")]
    pub vae: Option<PathBuf>,
    /// Latents decoded per VAE call with --vae (the decoder's activations at 256² take about
    /// 0.5 GB per image).
    #[arg(long, default_value_t = 8, requires = "vae")]
    pub vae_batch: usize,
    /// The interpolation path the model was trained on (`linear`, `gvp`, `vp`): checked
    /// against the path a cbs run records (a model is never sampled as another path's);
    /// the path of a PyTorch checkpoint file, which records none [default: the recorded one,
    /// or linear].
    #[arg(long, value_enum)]
    pub path: Option<cbs_flow::path::Interpolant>,
    /// Which weights of the checkpoint.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: WeightsKind,
    /// Numeric precision of the network: `f32`; `tf32` (TensorFloat-32 products on CUDA);
    /// `bf16` or `f16` (half-precision products and attention, f32 norm statistics). The
    /// solver's state is integrated in f32 either way.
    #[arg(long, value_enum, default_value_t = cbs_kernels::Precision::F32)]
    pub precision: cbs_kernels::Precision,
    /// Images integrated at once (memory bound; the noise does not depend on it, the images
    /// only up to floating-point rounding).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[command(flatten)]
    pub images: ImageOutputArgs,
    /// Output directory: grid.png, samples.npz (arr_0 = uint8 [N, H, W, C]), labels.txt
    /// (point models: samples.npz with float32 [N, D] and scatter.png).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// How image outputs are laid out (`cbs sample`, `cbs decode`).
#[derive(Args, Debug)]
pub struct ImageOutputArgs {
    /// Images per grid row (default: √ of the images shown).
    #[arg(long)]
    pub nrow: Option<usize>,
    /// grid.png shows the first this many images (samples.npz holds all of them).
    #[arg(long, default_value_t = 100)]
    pub grid_max: usize,
    /// Also write every image as DIR/images/NNNNNN.png.
    #[arg(long)]
    pub individual: bool,
}

impl ImageOutputArgs {
    pub fn options(&self) -> cbs_sample::images::OutputOptions {
        cbs_sample::images::OutputOptions {
            nrow: self.nrow,
            grid_max: self.grid_max,
            individual: self.individual,
        }
    }
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// The experiment file (TOML: seeds, [train], [aux.NAME], [splits], [sample], [metrics],
    /// [[arm]]s); see configs/experiments/.
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory (created; an existing one is continued).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directories (or `train-experts` directories).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "loss.png")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct LossFloorArgs {
    /// A run directory trained on `source = "gmm"` data (train-aux, or one expert-<i>/).
    pub run: PathBuf,
    /// Average the per-bin losses of this many of the last log lines of metrics.jsonl.
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// Exact draws of x_t per time at which the floor is evaluated (8 times per bin).
    #[arg(long, default_value_t = 4000)]
    pub points: usize,
    /// Also write the table as CSV (`t_lo,t_hi,loss,floor,excess`) and the chart beside it
    /// (same name, .png) [default: RUN/loss-floor.csv].
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalGmmArgs {
    /// A `cbs sample` output directory or its samples.npz (arr_0 = float [N, D]).
    pub samples: PathBuf,
    /// The mixture JSON (means, stds, weights).
    #[arg(long)]
    pub gmm: PathBuf,
    /// Random directions of the sliced Wasserstein distance.
    #[arg(long, default_value_t = 256)]
    pub projections: usize,
    /// Seed of the reference samples and directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON (mean_log_likelihood, reference_log_likelihood, sliced_w2, ...).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Full training steps: forward, backward, AdamW, EMA (one fixed synthetic batch).
    Train(BenchCommon),
    /// Velocity evaluations as in sampling (with classifier-free guidance if --cfg-scale ≠ 1).
    Sample(BenchCommon),
    /// One f32 matrix product `[M, K]·[K, N]` on the CPU, as the fused linear layers run it
    /// (one gemm block per thread), e.g. `--shape 2048,384,1536` for a sit-s-4 fc1 layer at
    /// batch 32.
    Matmul(BenchMatmul),
}

#[derive(Args, Debug)]
pub struct BenchMatmul {
    /// `M,K,N`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub shape: Vec<usize>,
    /// The left operand is the transpose of a row-major `[K, M]` (as in a weight gradient
    /// `gᵀ·x`).
    #[arg(long)]
    pub lhs_transposed: bool,
    /// Timed products (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
}

#[derive(Args, Debug)]
pub struct BenchCommon {
    /// Preset, e.g. sit-s-4 (see `cbs inspect --list`).
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// Data dimension (MLP presets).
    #[arg(long, default_value_t = 2)]
    pub dim: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// `f32`; `tf32` (TensorFloat-32 products on CUDA); `bf16` or `f16` (half-precision
    /// products and attention; f32 master weights, optimizer state and loss).
    #[arg(long, value_enum, default_value_t = cbs_kernels::Precision::F32)]
    pub precision: cbs_kernels::Precision,
    /// Guidance scale for `bench sample` (2× batch when ≠ 1).
    #[arg(long, default_value_t = 1.0)]
    pub cfg_scale: f64,
    /// `fused` (the hand-written kernels) or `composed` (candle's ops), for side-by-side
    /// timings of the two.
    #[arg(long, value_enum, default_value_t = cbs_kernels::Kernels::Fused)]
    pub kernels: cbs_kernels::Kernels,
    /// bench train: recompute each transformer block's activations in the backward pass
    /// (`train.activation_checkpointing`); compare `peak_rss_mb` with and without.
    #[arg(long)]
    pub activation_checkpointing: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?}: expected a positive number")),
    }
}

/// The architecture of a PyTorch checkpoint file, which carries none.
#[derive(Args, Debug, Clone, Default)]
pub struct TorchModelArgs {
    /// For a PyTorch checkpoint file (`.pt`/`.pth` saved by SiT, DiT, JiT or torchcfm code):
    /// the preset it was trained as, e.g. sit-xl-2 (`cbs inspect --list`). Not needed for cbs
    /// run or checkpoint directories, which record their architecture.
    #[arg(long = "model", value_name = "PRESET")]
    pub preset: Option<String>,
    /// With --model: image side (latent side for latent models) [default: the preset's
    /// published one, e.g. 32 for SiT's ImageNet-256 latents].
    #[arg(long, requires = "preset")]
    pub image_size: Option<usize>,
    /// With --model: input channels [default: the preset's, 4 for SiT latents].
    #[arg(long, requires = "preset")]
    pub in_channels: Option<usize>,
    /// With --model: classes [default: the preset's, 1000 for the ImageNet presets].
    #[arg(long, requires = "preset")]
    pub num_classes: Option<usize>,
}

impl TorchModelArgs {
    pub fn spec(&self) -> Option<cbs_models::ModelSpec> {
        self.preset.as_ref().map(|p| {
            let mut spec = cbs_models::ModelSpec::new(p);
            spec.image_size = self.image_size;
            spec.in_channels = self.in_channels;
            spec.num_classes = self.num_classes;
            spec
        })
    }
}

/// `cbs forward`: one network evaluation on given inputs, for parity checks and debugging.
#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// A cbs run or checkpoint directory, or a PyTorch checkpoint file (with --model).
    #[arg(long, required_unless_present = "vae", conflicts_with = "vae")]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate an SD VAE (a diffusers AutoencoderKL directory) instead: the inputs file holds
    /// `x` (images in [-1, 1]) and/or `z` (unscaled latents); the output `mean` and `logvar`
    /// of the encoder's posterior and/or `decoded`.
    #[arg(long, value_name = "DIR")]
    pub vae: Option<PathBuf>,
    #[command(flatten)]
    pub torch: TorchModelArgs,
    /// Safetensors file with `x` ([B, C, H, W] or [B, D], float), `t` ([B], float, the time the
    /// network receives: 0 = noise, 1 = data) and optionally `y` ([B], integer labels; default:
    /// the null class, or 0 without one).
    #[arg(long, value_name = "FILE.safetensors")]
    pub inputs: PathBuf,
    /// Output safetensors: `output` (the network's own output: SiT's whole final layer, the
    /// velocity then the learn_sigma variance channels; JiT's clean-image prediction) and
    /// `velocity` (what the sampler integrates), both float32.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Which weights of the checkpoint.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: WeightsKind,
    #[arg(long, value_enum, default_value_t = cbs_kernels::Precision::F32)]
    pub precision: cbs_kernels::Precision,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Preset name, e.g. sit-xl-2 (see --list).
    #[arg(long, required_unless_present = "list")]
    pub model: Option<String>,
    /// Image side [default: the preset's: 32 for SiT (ImageNet-256 latents), 256 for
    /// jit-*-16/32, 64 for jit-b-4, 32 for the small CPU presets].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// [default: the preset's: 4 for SiT latents, 3 for JiT and UNet].
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// [default: the preset's: 1000 for the ImageNet presets].
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Data dimension (MLP presets) [default: 2].
    #[arg(long)]
    pub dim: Option<usize>,
    /// Print JSON: {"parameters": total, "trainable": trainable, "tensors": {name: [dims...]}}.
    #[arg(long)]
    pub json: bool,
    /// List the preset names.
    #[arg(long)]
    pub list: bool,
}

/// What `cbs estimate-splits` writes (shown after its --help).
pub const ESTIMATE_OUTPUTS: &str = "\
Outputs in --out:
  splits.toml  knots, settings (source: checkpoint dir or oracle:<json>) and bootstrap intervals
  monitor.csv  t,m,cumulative: grid point t_j, mass m_j of cell [t_j, t_{j+1}] (empty on the
               last row), cumulative mass C(t_j)
  monitor.png  800x500 chart against t (0 = noise, 1 = data), with a legend: m(t) / max m,
               C(t) / C(1), grey targets i/N of C, the knots and their bootstrap intervals
Stdout: `knots = [..]` and `intervals = [[lo, hi], ..]`.";

/// Arguments of `cbs estimate-splits` (the outputs are described in [`ESTIMATE_OUTPUTS`]).
#[derive(Args, Debug)]
#[command(
    group(clap::ArgGroup::new("source").required(true).args(["aux", "oracle_gmm"])),
    after_help = ESTIMATE_OUTPUTS
)]
pub struct EstimateArgs {
    /// Auxiliary model: a run directory (its latest checkpoint), a checkpoint directory, or a
    /// PyTorch checkpoint file of the reference code (with --model); EMA weights. Exclusive
    /// with --oracle-gmm.
    #[arg(long, value_name = "RUN_DIR")]
    pub aux: Option<PathBuf>,
    #[command(flatten)]
    pub torch: TorchModelArgs,
    /// Use the exact velocity field of a Gaussian mixture (JSON: means, stds, weights) instead
    /// of a model. Exclusive with --aux.
    #[arg(long, value_name = "FILE.json")]
    pub oracle_gmm: Option<PathBuf>,
    /// With --oracle-gmm: the interpolation path of the exact field (`linear`, `gvp`, `vp`).
    /// A model's own path is part of the model.
    #[arg(long, value_enum, default_value_t = cbs_flow::path::Interpolant::Linear,
          requires = "oracle_gmm")]
    pub path: cbs_flow::path::Interpolant,
    /// Monitor of local difficulty (acceleration is the paper's).
    #[arg(long, value_enum, default_value = "acceleration")]
    pub monitor: MonitorKind,
    /// Number of experts N (N − 1 knots).
    #[arg(long, default_value_t = 3)]
    pub experts: usize,
    /// Number of time cells G of the uniform grid t_j = j/G.
    #[arg(long, default_value_t = 100)]
    pub grid: usize,
    /// Number of Euler trajectories K averaged into the monitor.
    #[arg(long, default_value_t = 1024)]
    pub trajectories: usize,
    /// Knot rule: `grid` is the paper's (closest grid point), `linear` interpolates.
    #[arg(long, value_enum, default_value = "linear")]
    pub mode: SplitMode,
    /// Hutchinson probes S per point (Dirichlet only).
    #[arg(long, default_value_t = 1)]
    pub probes: usize,
    /// Probe distribution (Dirichlet only).
    #[arg(long, value_enum, default_value = "gaussian")]
    pub probe: ProbeKind,
    /// Jacobian–vector products (Dirichlet only): `vjp` (one backward pass) or `fd`.
    #[arg(long, value_enum, default_value = "vjp")]
    pub jvp: JvpMethod,
    /// Classifier-free guidance scale (class-conditional models only; 1 = no guidance).
    /// Trajectory labels are drawn uniformly with a generator seeded by --seed.
    #[arg(long, default_value_t = 1.0)]
    pub cfg_scale: f64,
    /// Seed of the noises, labels, probes and bootstrap resamples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Trajectories integrated at once (memory bound; results do not depend on it).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Bootstrap resamples of the trajectories for the knot intervals (0 disables).
    #[arg(long, default_value_t = 200)]
    pub bootstrap: usize,
    /// Confidence level of the bootstrap intervals, in (0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub confidence: f64,
    /// Output directory: splits.toml, monitor.csv, monitor.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Numeric precision of the network: `f32`; `tf32` (TensorFloat-32 products on CUDA);
    /// `bf16` or `f16` (half-precision products and attention, f32 norm statistics). The
    /// trajectories and the monitor are integrated and accumulated in f32 either way.
    #[arg(long, value_enum, default_value_t = cbs_kernels::Precision::F32)]
    pub precision: cbs_kernels::Precision,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// What `cbs eval-fid` reads and prints (shown after its --help).
pub const EVAL_FID_INPUTS: &str = "\
SAMPLES and REFERENCE may each be:
  a directory of PNG/JPEG images   (sorted by name, all one size; grayscale → 3 channels)
  a `cbs sample` output directory  (its samples.npz)
  an .npz with arr_0               (uint8 [N, H, W, C], the ADM evaluator's format)
  an .npz of statistics            (mu [D], sigma [D, D]: pytorch-fid's --save-stats format;
                                    mu_s/sigma_s add sFID)
Metrics: FID and sFID (Fréchet distances), Inception Score of SAMPLES (10 splits),
precision/recall (k = 3) and KID (100 subsets of ≤ 1000); the last two need images on both
sides. Two statistics files need no network weights.
Inception weights: pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception, from
https://github.com/mseitzer/pytorch-fid/releases) or a safetensors copy, given with
--inception PATH or the CBS_INCEPTION environment variable.";

/// Arguments of `cbs eval-fid` (the accepted inputs are described in [`EVAL_FID_INPUTS`]).
#[derive(Args, Debug)]
#[command(after_help = EVAL_FID_INPUTS)]
pub struct EvalFidArgs {
    /// Generated images or their statistics.
    pub samples: PathBuf,
    /// Reference images or statistics (optional with --save-stats: then only the statistics
    /// of SAMPLES are written).
    #[arg(required_unless_present = "save_stats")]
    pub reference: Option<PathBuf>,
    /// Print JSON: fid, sfid, inception_score {mean, std}, precision, recall, kid, kid_std,
    /// num_samples, num_reference, feature_dim, features (null where not computable).
    #[arg(long)]
    pub json: bool,
    /// Write the statistics of SAMPLES (mu, sigma; mu_s, sigma_s for sFID) to this .npz.
    #[arg(long, value_name = "OUT.npz")]
    pub save_stats: Option<PathBuf>,
    /// Feature space: `inception` (pytorch-fid's Inception-v3, comparable with papers) or
    /// `classifier:RUN_DIR`, the penultimate layer of a `cbs train-classifier` run (an
    /// offline quality signal, NOT comparable with Inception FID; no sFID).
    #[arg(long, default_value = "inception", value_parser = parse_features, value_name = "SPACE")]
    pub features: FeatureSpace,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) or a safetensors
    /// copy [default: $CBS_INCEPTION].
    #[arg(long, value_name = "PATH")]
    pub inception: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Seed of the KID subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Random subsets averaged by KID.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// Rows per KID subset (at most the smaller side).
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// Config with [data] (as the training configs) and [classifier] (widths, feature_dim,
    /// steps, batch_size, lr, weight_decay, seed). Default: Fashion-MNIST with the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory: classifier.toml, model.safetensors, summary.json, reference.npz (the
    /// test split, uint8 NHWC: the reference side for eval-fid) and train-sample.npz (1000
    /// training images: the FID real data of that size gets).
    #[arg(long)]
    pub out: PathBuf,
    /// Override [classifier] steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override [classifier] seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override [classifier] real_sample: training images written to train-sample.npz.
    #[arg(long, value_name = "N")]
    pub real_sample: Option<usize>,
    /// Override [data] dir.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}
