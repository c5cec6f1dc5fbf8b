//! The command line: `ekphrasis <command>`. The `///` comments are the help text.

use crate::data::layout::Split;
use crate::models::captioner::decode::Strategy;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    /// Experiment config (YAML), e.g. experiments/demo/captioner.yaml.
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. --set train.steps=100 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
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
    /// Train a stage from a config (-c): captioner, clip, probe.
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
    #[command(flatten)]
    pub decode: DecodeArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// `serve` under load: describe (greedy) and paint (4 images) latency, then
    /// --clients concurrent clients for --seconds; prints JSON (make bench-serve).
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        /// The image the describe requests upload (default: the first image of
        /// data/synth/images).
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(long, default_value_t = 30)]
        requests: usize,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// The soak fails when resident memory grows by more than this (MB).
        #[arg(long, default_value_t = 256.0)]
        rss_bound_mb: f64,
    },
    /// Table 1 of Menon et al. 2024: learning and inversion errors of the invertible MLP on sine,
    /// polynomial and exponential functions.
    InvertibleFunctions {
        /// Width of the square layers (the scalar rides in the first coordinate).
        #[arg(long, default_value_t = 8)]
        width: i64,
        #[arg(long, default_value_t = 6)]
        layers: i64,
        #[arg(long, default_value_t = 4000)]
        steps: u64,
        #[arg(long, default_value_t = 1e-2)]
        lr: f64,
        /// Training (and test) points per function.
        #[arg(long, default_value_t = 2048)]
        points: i64,
        /// Where the table goes as JSON.
        #[arg(long, default_value = "bench/invertible_functions.json")]
        out: PathBuf,
    },
    /// Training steps/s of a demo config (-c captioner.yaml or t2i-gan.yaml) on random
    /// batches, split into forward / backward / optimizer; prints JSON (make bench).
    TrainStep {
        /// Vocabulary size of the random token batches.
        #[arg(long, default_value_t = 1000)]
        vocab: i64,
        /// Tokens per paragraph (no padding).
        #[arg(long, default_value_t = 160)]
        seq_len: i64,
        #[arg(long, default_value_t = 10)]
        steps: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// Greedy decoding tokens/s with the KV cache (-c captioner.yaml, random weights);
    /// prints JSON (make bench).
    Greedy {
        #[arg(long, default_value_t = 1000)]
        vocab: i64,
        #[arg(long, default_value_t = 1)]
        batch: i64,
        /// New tokens per image.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Size, load time and captions/s or images/s of every exported model in a folder;
    /// prints JSON (make bench).
    Exported {
        #[arg(long, default_value = "models")]
        models: PathBuf,
        /// Images or captions per timed batch.
        #[arg(long, default_value_t = 32)]
        n: i64,
    },
    /// fp32 matmul GFLOP/s of n×n products (the MFU denominator); prints JSON.
    Matmul {
        #[arg(long, default_value_t = 1024)]
        n: i64,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
    /// Decode + centre-crop + resize every image file of a folder (rayon); prints JSON.
    DecodeFiles {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 64)]
        size: u32,
    },
    /// Decode + resize throughput (all cores) and batches/s from the uint8 cache.
    Loader {
        #[arg(long, default_value = "data/synth")]
        data: PathBuf,
        #[arg(long, default_value_t = 64)]
        size: u32,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
    },
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

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Render the embedded synthetic art dataset (deterministic for a seed).
    Synth {
        /// Output dataset folder.
        #[arg(long, default_value = "data/synth")]
        out: PathBuf,
        /// Number of paintings.
        #[arg(long, default_value_t = 5000)]
        n: usize,
        /// Image side in pixels (16–256).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Replace an existing dataset folder.
        #[arg(long)]
        force: bool,
    },
    /// Bring a real dataset into the common layout: resized images, captions.json,
    /// metadata.csv, splits and rejected.csv (every rejected item with its reason).
    Prepare {
        /// Source format.
        #[arg(long, value_enum)]
        format: crate::data::prepare::Format,
        /// Source folder (art, imagefolder, text-c10) or file (captions-csv, coco).
        #[arg(long)]
        src: PathBuf,
        /// Image folder, for formats that keep images apart from the text.
        #[arg(long)]
        images: Option<PathBuf>,
        /// art: descriptions as captions.json ({id: text}) or .jsonl ({"id", "caption"}).
        #[arg(long)]
        captions: Option<PathBuf>,
        /// Several captions for one image: keep the first, one pair each, or join them.
        #[arg(long, value_enum, default_value = "first")]
        multi: crate::data::prepare::Multi,
        /// Image side in pixels after centre-crop and resize.
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// Output dataset folder.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing dataset folder.
        #[arg(long)]
        force: bool,
        /// A folder of given splits (train/val/test: `<name>_ids.txt` or `<name>.txt`, one
        /// image id or file name per line, e.g. the Karpathy splits) instead of the
        /// seeded 80/10/10.
        #[arg(long)]
        splits: Option<PathBuf>,
    },
    /// Write 100–200-word descriptions of a prepared dataset's images with a
    /// vision-language model behind an OpenAI-compatible API; resumable (captions.jsonl).
    Describe(DescribeArgs),
}

/// Options of `data describe`.
#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Prepared dataset folder (from `data prepare`).
    #[arg(long)]
    pub data: PathBuf,
    /// Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub endpoint: String,
    /// Model name the server knows, e.g. Qwen/Qwen2.5-VL-7B-Instruct.
    #[arg(long)]
    pub model: String,
    /// Environment variable holding the API key (sent as a Bearer token; never printed
    /// or stored). Unset: no key is sent.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds before a request counts as failed (and is retried).
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Retries of a request after 429, 5xx, timeouts or malformed answers.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// First retry delay in seconds, doubled each time (a Retry-After header wins).
    #[arg(long, default_value_t = 1.0)]
    pub backoff: f64,
    /// Shortest acceptable description, in words.
    #[arg(long, default_value_t = 100)]
    pub min_words: usize,
    /// Longest acceptable description, in words.
    #[arg(long, default_value_t = 200)]
    pub max_words: usize,
    /// Requests per image when the length is off (then kept, flagged `length`).
    #[arg(long, default_value_t = 3)]
    pub max_asks: u32,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Describe at most N images not yet described (a trial run).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print the request for one image and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Ask again for images whose answer was a refusal or empty.
    #[arg(long)]
    pub retry_refused: bool,
    /// US dollars per million prompt tokens (for the running cost).
    #[arg(long, default_value_t = 0.0)]
    pub price_in: f64,
    /// US dollars per million completion tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_out: f64,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train byte-level BPE on the training split (config: experiments/demo/tokenizer.yaml).
    Train {
        /// Dataset folder.
        #[arg(long, default_value = "data/synth")]
        data: PathBuf,
        /// Use this existing tokenizer.json (e.g. GPT-2's) instead of training one.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run folder (config.yaml, checkpoints, TensorBoard events). Also `--run-dir`,
    /// which torchrun's own parser does not mistake for its `--run-path`.
    #[arg(long, visible_alias = "run-dir")]
    pub run: PathBuf,
    /// Continue the run in --run from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Image → paragraph captioner (CNN/ViT encoder + Transformer decoder).
    Captioner(RunArgs),
    /// Contrastive image–text embedding (symmetric InfoNCE): the evaluators' encoder.
    Clip(RunArgs),
    /// Attribute probe: a classifier of the embedded set's attributes (grades images).
    Probe(RunArgs),
    /// Text → image generator (model.kind: vae, gan or diffusion) with its own text
    /// encoder.
    T2i(RunArgs),
    /// The invertible bridge (Menon et al. 2024): an image autoencoder, then an invertible MLP
    /// trained on captioning only (image latent → sentence embedding), inverted to paint.
    Invertible(RunArgs),
    /// One seed, two outputs (after the Multimodal Art Generator): a shared latent decoded into an image and,
    /// autoregressively, its caption.
    Unified(RunArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Decoding strategy (default: the run's eval.decode).
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Beam width for --strategy beam.
    #[arg(long, default_value_t = 3)]
    pub beam: usize,
    /// Sampling temperature for --strategy sample.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Nucleus mass for --strategy sample.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f64,
    /// > 1 discourages tokens already written.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f64,
    /// Forbid repeating n-grams of this length (0: off).
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram: usize,
    /// Decode without the KV cache (recompute every prefix; slower, for comparison).
    #[arg(long)]
    pub no_kv_cache: bool,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// BLEU, ROUGE-L, CIDEr-D, perplexity, degeneration and attribute scores.
    Captioner {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        /// Which checkpoint: best or latest.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        /// Evaluate only the first N images of the split.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        decode: DecodeArgs,
    },
    /// Recall@1/5/10 and median rank both ways, R-precision, PCA / t-SNE plots and
    /// TensorBoard projector files.
    Clip {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        /// Use only the first N pairs of the split.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Text → image: CLIP-style score, R-precision, FD-own, KID-own, probe attribute
    /// accuracy, IS-style score and diversity on a split's captions.
    T2i {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The invertible bridge: forward and inversion errors, and the generation scores of
    /// images made by inversion (and from f(E_I(x)) + noise).
    Invertible {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The unified generator's prior samples: image–caption agreement, image and
    /// caption quality, degenerate outputs, diversity.
    Unified {
        #[arg(long)]
        run: PathBuf,
        /// Prior samples (seeds 0..N).
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// How a facts model reads each sample's scene off its latent (default: the
        /// run's `eval.scene`); the scores go to eval_prior/ or eval_prior_<scene>/.
        #[arg(long, value_enum)]
        scene: Option<crate::stages::unified::SceneChoice>,
    },
    /// Attribute accuracy of the probe on real images of a split.
    Probe {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
    },
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
