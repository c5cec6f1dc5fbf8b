//! `ekphrasis train …` and `ekphrasis eval …`: the arguments every stage's run takes,
//! and the decoding options of the captioner.

use super::*;

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
    /// The general path's conditioning model (AttnGAN's DAMSM: sentence, word and place
    /// matching): its image encoder feeds the captioner, its text side the generators.
    Align(RunArgs),
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
    /// How much of each place's scene facts an align run carries (embedded set only): a
    /// small head trained on the frozen vectors of `--side` reads each cell's kind,
    /// colour and size, scored on the validation split.
    Align {
        #[arg(long)]
        run: PathBuf,
        /// text: the place vectors the generators paint from; image: the true picture's
        /// pooled places they are matched to; words: the word vectors, through a fresh
        /// place reader (whether the text encoder holds the facts at all; slow).
        #[arg(long, value_enum, default_value = "text")]
        side: crate::stages::align_facts::PlaceSide,
        /// Training steps of the head (batches of 256).
        #[arg(long, default_value_t = 1500)]
        steps: u64,
    },
    /// Attribute accuracy of the probe on real images of a split.
    Probe {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: Split,
    },
}
