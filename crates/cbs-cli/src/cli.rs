use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Complexity-Balanced Splitting for flow-matching image models.
///
/// The pipeline: train-aux → estimate-splits → train-experts → sample → eval-fid.
/// Time runs from t = 0 (noise) to t = 1 (data); x_t = t·x1 + (1 − t)·x0.
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
    EstimateSplits(PassThrough),
    /// Train N experts, expert i on its interval [t_i, t_{i+1}] only.
    TrainExperts(PassThrough),
    /// Sample images from a checkpoint (or a set of experts) and write a grid and samples.npz.
    Sample(SampleArgs),
    /// FID / IS / precision-recall of samples against reference images or statistics.
    EvalFid(PassThrough),
    /// Print the parameter names, shapes and total count of a model preset.
    Inspect(InspectArgs),
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
    /// Continue the run in --out from its latest checkpoint (exactly: same batches and noise).
    #[arg(long)]
    pub resume: bool,
    /// Override train.steps (the total, not the number of additional steps).
    #[arg(long)]
    pub steps: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum SolverArg {
    Euler,
    Heun,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum WeightsArg {
    /// The exponential moving average of the weights (what published results use).
    Ema,
    /// The raw optimised weights.
    Model,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub num: usize,
    /// Solver steps from t = 0 to t = 1.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "heun")]
    pub solver: SolverArg,
    /// Classifier-free guidance scale on all channels (1 = no guidance).
    #[arg(long, default_value_t = 1.0)]
    pub cfg_scale: f64,
    /// Seed of the starting noise; the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class labels, comma separated, repeated to --num (default: all classes in turn).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<u32>>,
    /// Start from this noise (.npy, float, [num, C, H, W]) instead of seeded noise.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Which weights of the checkpoint.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: WeightsArg,
    /// Images integrated at once (memory bound; results do not depend on it).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Images per grid row (default: √num).
    #[arg(long)]
    pub nrow: Option<usize>,
    /// Also write every image as DIR/images/NNNNNN.png.
    #[arg(long)]
    pub individual: bool,
    /// Output directory: grid.png, samples.npz (arr_0 = uint8 [N, H, W, C]), labels.txt
    /// (point models: samples.npz with float32 [N, D] and scatter.png).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Preset name, e.g. sit-xl-2 (see --list).
    #[arg(long, required_unless_present = "list")]
    pub model: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 4)]
    pub in_channels: usize,
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    /// Data dimension (MLP presets).
    #[arg(long, default_value_t = 2)]
    pub dim: usize,
    /// Print JSON: {"parameters": total, "tensors": {name: [dims...]}}.
    #[arg(long)]
    pub json: bool,
    /// List the preset names.
    #[arg(long)]
    pub list: bool,
}

/// Arguments of a stage that this version does not provide yet.
#[derive(Args, Debug)]
pub struct PassThrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}
