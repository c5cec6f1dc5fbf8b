//! The scene-supervised VAE's first phase (`pretrain:`): the text encoder and the fact
//! reader learn the paragraphs' facts alone, then are frozen for the generator's phase.

use super::*;

/// The text side's pretraining phase: the encoder and the fact reader on the facts.
struct TextPretrain<'a> {
    vs: &'a nn::VarStore,
    model: &'a TextToImage,
    tokens: &'a Tensor,
    targets: &'a Tensor,
    val_tokens: &'a Tensor,
    val_truth: Vec<Vec<i64>>,
    pad: i64,
    batch: usize,
    seed: u64,
    device: Device,
}

impl Trainable for TextPretrain<'_> {
    fn var_store(&self) -> &nn::VarStore {
        self.vs
    }

    fn groups(&self) -> Vec<Group> {
        vec![Group {
            name: "text".into(),
            prefixes: vec!["text.".into()],
            lr_scale: 1.0,
        }]
    }

    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let t = trim_padding(
            &batch_rows(self.tokens, self.batch, self.seed, micro, self.device),
            self.pad,
        );
        let a = batch_rows(self.targets, self.batch, self.seed, micro, self.device);
        self.model
            .fact_loss(&t, &a, self.pad)
            .context("pretrain needs model.facts")
    }

    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let pred = read_facts(self.model, self.val_tokens, self.pad, self.device)?;
        Ok(BTreeMap::from([(
            "fact_accuracy".into(),
            attribute_accuracy(&pred, &self.val_truth),
        )]))
    }
}

/// The facts a model's reader takes from caption token rows, as prediction rows in the
/// probe's evaluation layout.
pub fn read_facts(
    model: &TextToImage,
    tokens: &Tensor,
    pad: i64,
    device: Device,
) -> Result<Vec<Vec<i64>>> {
    let mut rows = vec![];
    let n = tokens.size()[0];
    for start in (0..n).step_by(128) {
        let t = trim_padding(
            &tokens
                .narrow(0, start, 128.min(n - start))
                .to_device(device),
            pad,
        );
        let (global, cells) = tch::no_grad(|| model.fact_logits(&t, pad, false))
            .context("the model has no fact reader (model.facts)")?;
        rows.extend(crate::scenes::probe::rows_from_logits(
            &crate::scenes::heads::AttributeLogits {
                hidden: global.zeros_like(),
                global,
                cells,
            },
        ));
    }
    Ok(rows)
}

/// Runs (or, on resume, reloads) the text side's pretraining in `<run>/text`, then
/// freezes it for the generator's phase.
pub(super) fn pretrain_text(
    stage: &mut T2IStage,
    pre: &TextPretrainConfig,
    opts: &RunOptions,
    resume: bool,
) -> Result<()> {
    if !stage.model.reads_facts() {
        bail!("pretrain: trains the fact reader of model.facts, which this model has not");
    }
    let targets = stage
        .attribute_targets
        .as_ref()
        .context("pretrain needs the embedded set's scene facts")?;
    let phase = crate::stages::FirstPhase {
        folder: "text",
        name: "t2i text side",
        metric: "fact_accuracy",
        trains: &["text."],
        train: &pre.train,
        config_yaml: serde_yaml::to_string(pre)?,
    };
    let s = &*stage;
    crate::stages::run_first_phase(&s.vs, opts, resume, phase, || {
        Ok(TextPretrain {
            vs: &s.vs,
            model: &s.model,
            tokens: s.train.tokens.as_ref().context("tokenized captions")?,
            targets,
            val_tokens: s.val.tokens.as_ref().context("tokenized captions")?,
            val_truth: scene_targets(&s.ds, &s.val.ids)?,
            pad: s.tok.pad,
            batch: pre.train.batch_size,
            seed: s.cfg.seed,
            device: s.device,
        })
    })?;
    stage.model.freeze_text(&stage.vs);
    Ok(())
}
