//! The command line: `ekphrasis <command>`. The `///` comments are the help text.

use crate::data::layout::Split;
use crate::models::captioner::decode::Strategy;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

mod bench;
mod data;
mod runs;
pub use bench::*;
pub use data::*;
pub use runs::*;

/// ekphrasis: learn to describe pictures in paragraphs and to paint pictures from
/// paragraphs, then measure what survives image → caption → image.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Seed for everything random; overrides the config's `seed`.
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Experiment config (YAML), e.g. experiments/general/captioner.yaml.
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. --set train.steps=100 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// CPU threads for libtorch's operators (default: libtorch's choice, one per core).
    #[arg(long, global = true, value_name = "N", conflicts_with = "share_cores")]
    pub threads: Option<usize>,
    /// Split the CPU cores with the other ekphrasis processes given the same folder:
    /// each runs on cores ÷ processes threads, counted again every few seconds while it
    /// trains. `make demo` and `make pipeline` run two stages at once this way.
    #[arg(long, global = true, value_name = "DIR")]
    pub share_cores: Option<PathBuf>,
    /// auto: a bar on a terminal; lines: a line every 30 s with the position and ETA,
    /// every line prefixed with the command (for logs, and for stages run side by side);
    /// off: the log lines alone.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub progress: crate::util::progress::Mode,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Datasets: render the embedded set, prepare real ones, describe artworks.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train the shared BPE tokenizer and write tokenized_captions.json.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Train a stage from a config (-c): captioner, clip, align, probe, t2i, invertible,
    /// unified.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate a trained run on a split and write metrics.json + an HTML page.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Describe image files with a captioner: a run (--run) or an export (--model).
    Caption(CaptionArgs),
    /// Paint images from text with a text → image run (--run) or an export (--model).
    Draw(DrawArgs),
    /// Trace a trained run into TorchScript files + manifest.json (models/<name>), which
    /// `caption`, `draw`, `cycle IMAGE…`, `embed`, `retrieve` and Python load.
    Export(ExportArgs),
    /// Embeddings of images or texts from an exported contrastive model.
    Embed(EmbedArgs),
    /// Rank images for a text (or texts for an image) with an exported contrastive model.
    Retrieve(RetrieveArgs),
    /// An image and its caption from one seed, with a unified-generator run.
    Generate(GenerateArgs),
    /// Score pictures against the captions they were painted from (the Reverse Image
    /// Caption competition's flow): per image the image–text cosine distance under an
    /// exported contrastive model, and over the set a label-free Inception-style score.
    /// Writes a CSV (image, caption, cosine_distance) and a JSON summary beside it.
    Score(ScoreArgs),
    /// Measure things: `bench loader` (decode + resize images/s, batches/s from cache).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// image → caption → image on a split, with floor, ceiling and nearest-neighbour
    /// baselines; writes reports/<name>/index.html and metrics.json. With IMAGE files:
    /// the cycle of those images through exported models (--captioner, --generator).
    Cycle(CycleArgs),
    /// A local web app over the exported models: describe an image (and paint it back),
    /// paint a paragraph, one seed → image + paragraph, browse a cycle report. Prints
    /// `listening on http://HOST:PORT`; Ctrl-C stops it.
    Serve(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Folder of exported models (`make export`); each subfolder with a manifest.json is
    /// one model. A missing kind hides its view.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// A unified-generator run for the one-seed view (e.g. runs/unified/demo).
    #[arg(long)]
    pub unified: Option<PathBuf>,
    /// A cycle report folder with examples.json for the browse view (e.g. reports/demo).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Address to bind; 127.0.0.1 keeps the server to this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests that may wait for the inference thread; more are answered 503.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Longest time a request may take, waiting included (seconds); then 504.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Largest upload (MiB).
    #[arg(long, default_value_t = 16)]
    pub max_upload_mib: usize,
    /// Longest paragraph to paint (characters).
    #[arg(long, default_value_t = 8000)]
    pub max_text_chars: usize,
    /// Most pictures per paint request.
    #[arg(long, default_value_t = 16)]
    pub max_images: i64,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder, runs/<kind>/<name> (its best checkpoint, EMA weights when kept).
    #[arg(long)]
    pub run: PathBuf,
    /// Output folder, e.g. models/captioner (replaced when it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Model kind, when the run folder is not under runs/<kind>/.
    #[arg(long, value_enum)]
    pub kind: Option<crate::export::manifest::ModelKind>,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Exported contrastive model folder.
    #[arg(long, default_value = "models/clip")]
    pub model: PathBuf,
    /// Image files to embed.
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// A CSV file with a `caption` column: texts to embed.
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// Output folder: embeddings.npy (N, E), unit norm, and names.txt (one per row).
    #[arg(long, default_value = "out/embeddings")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RetrieveArgs {
    /// Exported contrastive model folder.
    #[arg(long, default_value = "models/clip")]
    pub model: PathBuf,
    /// A text query: ranks --images.
    #[arg(long)]
    pub query: Option<String>,
    /// An image query: ranks the texts of --captions.
    #[arg(long)]
    pub query_image: Option<PathBuf>,
    /// Image files to rank.
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// A CSV file with a `caption` column: texts to rank.
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// How many results to print.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Folder of the pictures to score (PNG or JPEG).
    #[arg(long)]
    pub images: PathBuf,
    /// CSV with a `caption` column and, optionally, an `image` column naming each row's
    /// file in --images. Without `image`, the pictures in name order go k to a row (as
    /// `ekphrasis draw --captions FILE --n k` writes them).
    #[arg(long)]
    pub captions: PathBuf,
    /// Exported contrastive model (`make export`), trained apart from the generator.
    #[arg(long, default_value = "models/clip")]
    pub model: PathBuf,
    /// The CSV to write; the summary goes beside it as <name>.json.
    #[arg(long, default_value = "score.csv")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Unified-generator run folder.
    #[arg(long, default_value = "runs/unified/demo")]
    pub run: PathBuf,
    /// Seeds: a range `0..30`, `0..=30`, or a list `1,5,9` (default: --seed, else 0).
    #[arg(long)]
    pub seeds: Option<String>,
    /// Output folder: seed<N>.png per sample and metadata.json.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// How a facts model reads each sample's scene off its latent (default: the run's
    /// `eval.scene`).
    #[arg(long, value_enum)]
    pub scene: Option<crate::stages::unified::SceneChoice>,
}

#[derive(Args, Debug)]
pub struct CycleArgs {
    /// Image files to send round the cycle through exported models (then --captioner
    /// and --generator are export folders, e.g. models/captioner and models/t2i).
    pub images: Vec<PathBuf>,
    /// Captioner run folder (or export folder with IMAGE files).
    #[arg(long, default_value = "runs/captioner/demo")]
    pub captioner: PathBuf,
    /// Text → image run folder (or export folder with IMAGE files).
    #[arg(long, default_value = "runs/t2i/demo")]
    pub generator: PathBuf,
    /// Contrastive evaluator run folder.
    #[arg(long, default_value = "runs/clip/demo")]
    pub clip: PathBuf,
    /// An invertible-bridge run (Menon et al. 2024) painting the generated captions too, in a
    /// column of its own.
    #[arg(long)]
    pub invertible: Option<PathBuf>,
    /// Attribute probe run folder, e.g. runs/probe/demo: adds the probe's agreement
    /// (embedded set only; left out, the cycle is graded by the contrastive model).
    #[arg(long)]
    pub probe: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Use only the first N images of the split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Report folder (with IMAGE files: where captions and reconstructions go).
    #[arg(long, default_value = "reports/demo")]
    pub out: PathBuf,
    /// Another cycle report folder (repeatable, e.g. reports/scenes: the
    /// scene-supervised path) whose headline figures (its headline.json) the page shows
    /// beside this run's.
    #[arg(long)]
    pub beside: Vec<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

#[derive(Args, Debug)]
pub struct DrawArgs {
    /// Text → image run folder.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// Exported text → image model folder (from `ekphrasis export`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The paragraph to draw (or use --captions).
    pub text: Option<String>,
    /// A CSV file with a `caption` column: one row per text (e.g. the Reverse Image Caption competition's test captions).
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// Images per text, each from a different noise.
    #[arg(long, default_value_t = 5)]
    pub n: i64,
    /// Output folder.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Also write grid.png (texts × noises).
    #[arg(long)]
    pub grid: bool,
    /// Diffusion: sampler (default: the run's model.diffusion.sampler).
    #[arg(long, value_enum)]
    pub sampler: Option<crate::models::t2i::diffusion::Sampler>,
    /// Diffusion: denoising steps.
    #[arg(long)]
    pub sample_steps: Option<i64>,
    /// Diffusion: classifier-free guidance scale (1 = the conditional model alone).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Diffusion: DDIM's η (0 = deterministic).
    #[arg(long)]
    pub eta: Option<f64>,
}

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// Captioner run folder.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// Exported captioner folder (from `ekphrasis export`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Image files to describe.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

impl Cli {
    /// What `--progress lines` prefixes each line with: the command and its run,
    /// e.g. `train align runs/align/demo` or `eval t2i runs/t2i/demo`.
    pub fn label(&self) -> String {
        let (what, run) = match &self.command {
            Command::Train(t) => {
                let (stage, args) = match t {
                    TrainCommand::Captioner(a) => ("captioner", a),
                    TrainCommand::Clip(a) => ("clip", a),
                    TrainCommand::Align(a) => ("align", a),
                    TrainCommand::Probe(a) => ("probe", a),
                    TrainCommand::T2i(a) => ("t2i", a),
                    TrainCommand::Invertible(a) => ("invertible", a),
                    TrainCommand::Unified(a) => ("unified", a),
                };
                (format!("train {stage}"), Some(&args.run))
            }
            Command::Eval(e) => match e {
                EvalCommand::Captioner { run, .. } => ("eval captioner".into(), Some(run)),
                EvalCommand::Clip { run, .. } => ("eval clip".into(), Some(run)),
                EvalCommand::T2i { run, .. } => ("eval t2i".into(), Some(run)),
                EvalCommand::Invertible { run, .. } => ("eval invertible".into(), Some(run)),
                EvalCommand::Unified { run, .. } => ("eval unified".into(), Some(run)),
                EvalCommand::Probe { run, .. } => ("eval probe".into(), Some(run)),
                EvalCommand::Align { run, .. } => ("eval align".into(), Some(run)),
            },
            Command::Export(a) => ("export".into(), Some(&a.run)),
            Command::Cycle(a) => ("cycle".into(), Some(&a.out)),
            Command::Data(_) => ("data".into(), None),
            Command::Tokenizer(_) => ("tokenizer".into(), None),
            Command::Caption(_) => ("caption".into(), None),
            Command::Draw(_) => ("draw".into(), None),
            Command::Embed(_) => ("embed".into(), None),
            Command::Retrieve(_) => ("retrieve".into(), None),
            Command::Generate(_) => ("generate".into(), None),
            Command::Score(_) => ("score".into(), None),
            Command::Bench(_) => ("bench".into(), None),
            Command::Serve(_) => ("serve".into(), None),
        };
        match run {
            Some(run) => format!("{what} {}", run.display()),
            None => what,
        }
    }
}
