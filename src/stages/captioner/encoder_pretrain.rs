//! The scene-supervised captioner's first phase (`pretrain:`): the CNN and the
//! attribute heads learn the scene facts alone, then are frozen for the decoder's phase.

use super::*;

/// The encoder pretraining phase: the CNN and the attribute heads on the facts alone.
struct EncoderPretrain<'a> {
    vs: &'a nn::VarStore,
    model: &'a Captioner,
    images: Tensor,
    targets: Tensor,
    val_images: &'a Tensor,
    val_targets: Vec<Vec<i64>>,
    batch: usize,
    seed: u64,
    device: Device,
}

impl Trainable for EncoderPretrain<'_> {
    fn var_store(&self) -> &nn::VarStore {
        self.vs
    }

    fn groups(&self) -> Vec<Group> {
        vec![Group {
            name: "encoder".into(),
            prefixes: ENCODER_PREFIXES.iter().map(|p| p.to_string()).collect(),
            lr_scale: 1.0,
        }]
    }

    fn loss(&mut self, micro: u64) -> Result<Tensor> {
        let n = self.images.size()[0] as usize;
        let idx = Tensor::from_slice(&batch_indices(n, self.batch, self.seed, micro));
        let x = to_float(&self.images.index_select(0, &idx), self.device);
        let t = self.targets.index_select(0, &idx).to_device(self.device);
        self.model
            .attribute_only_loss(&x, &t, true)
            .context("pretrain needs model.attribute_weight > 0 and the CNN encoder")
    }

    fn evaluate(&mut self, _step: u64, _tb: &mut EventWriter) -> Result<BTreeMap<String, f64>> {
        let pred = head_rows(self.model, self.val_images, self.device)?;
        Ok(BTreeMap::from([(
            "attr_accuracy".into(),
            attribute_accuracy(&pred, &self.val_targets),
        )]))
    }
}

/// Runs (or, on resume, reloads) the encoder pretraining in `<run>/encoder`, then freezes
/// the encoder for the decoder's phase.
pub(super) fn pretrain_encoder(
    stage: &mut CaptionerStage,
    pre: &PretrainConfig,
    opts: &RunOptions,
    resume: bool,
) -> Result<()> {
    if !stage.model.wants_attributes() || stage.truth.is_none() {
        bail!("pretrain needs model.attribute_weight > 0 and the embedded set (its scene facts are the targets)");
    }
    let ds = Dataset::open(&stage.cfg.data)?;
    let phase = crate::stages::FirstPhase {
        folder: "encoder",
        name: "captioner encoder",
        metric: "attr_accuracy",
        trains: &ENCODER_PREFIXES,
        train: &pre.train,
        config_yaml: serde_yaml::to_string(pre)?,
    };
    let s = &*stage;
    crate::stages::run_first_phase(&s.vs, opts, resume, phase, || {
        let (images, targets) = attribute_training_set(
            &ds,
            &s.train,
            s.cfg.seed,
            pre.extra_renders,
            "captioner encoder",
        )?;
        Ok(EncoderPretrain {
            vs: &s.vs,
            model: &s.model,
            images,
            targets,
            val_images: &s.val.images,
            val_targets: scene_targets(&ds, &s.val.ids)?,
            batch: pre.train.batch_size,
            seed: s.cfg.seed,
            device: s.device,
        })
    })?;
    stage.model.freeze_encoder(&stage.vs);
    // The heads are frozen: their loss would only cost time.
    stage.attribute_targets = None;
    Ok(())
}
