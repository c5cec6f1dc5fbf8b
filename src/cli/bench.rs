//! `ekphrasis bench …`: what make bench times.

use super::*;

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
