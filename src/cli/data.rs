//! `ekphrasis data …` and `ekphrasis tokenizer …`: making datasets and the tokenizer.

use super::*;

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
