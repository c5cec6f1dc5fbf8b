//! The three generators on tiny inputs: shapes, one-batch overfitting, the GAN's
//! discriminator learning to tell matching from mismatched pairs, deterministic DDIM,
//! and guidance scale 1 being the conditional model.

use super::*;
use crate::train::adamw::{AdamW, AdamWConfig};
use tch::nn::VarStore;

const S: i64 = 16;

fn config(kind: T2IKind) -> T2IConfig {
    let yaml = format!(
        "kind: {}\nimage_size: {S}\ntext: {{dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 16, vocab_size: 20}}\n\
         generator: {{z_dim: 8, channels: [32, 16], attention_max_side: 8}}\nencoder_channels: [8, 16]\n\
         gan: {{disc_channels: [16, 32]}}\nunet: {{channels: [16, 32], attention_max_side: 8}}\n\
         diffusion: {{sample_steps: 5}}\n",
        match kind {
            T2IKind::Vae => "vae",
            T2IKind::Gan => "gan",
            T2IKind::Diffusion => "diffusion",
        }
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn build(kind: T2IKind) -> (VarStore, TextToImage) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let m = TextToImage::new(&vs.root(), &config(kind)).unwrap();
    (vs, m)
}

/// Eight distinct captions (token ids 4..19, pad 0) and eight images in [-1, 1] whose
/// colour follows the caption, so matching is learnable.
fn batch() -> (Tensor, Tensor) {
    let tokens = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([8, 1]) * 2 + 4;
    let tokens = Tensor::cat(&[&tokens, &(&tokens + 1), &tokens.zeros_like()], 1);
    let level = Tensor::linspace(-0.9, 0.9, 8, (Kind::Float, Device::Cpu)).view([8, 1, 1, 1]);
    let images = level.expand([8, 3, S, S], false).contiguous();
    (images, tokens)
}

fn opt(vs: &VarStore, prefixes: &[String]) -> AdamW {
    AdamW::for_group(vs, AdamWConfig::default(), "adam", prefixes)
}

#[test]
fn every_kind_samples_images_of_the_configured_size() {
    for kind in [T2IKind::Vae, T2IKind::Gan, T2IKind::Diffusion] {
        let (_vs, m) = build(kind);
        let (_, tokens) = batch();
        let c = m.condition(&tokens.narrow(0, 0, 3), 0, false).repeat(2);
        let z = m.noise(6, Device::Cpu);
        let x = m.sample(&c, &z);
        assert_eq!(x.size(), vec![6, 3, S, S], "{kind:?}");
        assert!(x.abs().max().double_value(&[]) <= 1.0 + 1e-6);
    }
}

#[test]
fn vae_and_diffusion_overfit_one_batch() {
    let (images, tokens) = batch();
    for kind in [T2IKind::Vae, T2IKind::Diffusion] {
        let (vs, m) = build(kind);
        let mut o = opt(&vs, &[]);
        let eval = |m: &TextToImage| {
            // Seeded, and averaged over draws of noise and time step: parallel tests
            // share the global RNG, so one draw can differ between before and after.
            tch::manual_seed(7);
            (0..8)
                .map(|_| {
                    m.loss(&images, &tokens, None, 0, 1000)
                        .unwrap()
                        .double_value(&[])
                })
                .sum::<f64>()
                / 8.0
        };
        let before = eval(&m);
        for _ in 0..120 {
            o.zero_grad();
            m.loss(&images, &tokens, None, 0, 1000).unwrap().backward();
            o.step(3e-3);
        }
        let after = eval(&m);
        // Diffusion keeps an irreducible part (noise at large t cannot be predicted
        // from one batch), so it must fall by 40 %, the VAE by half.
        let bound = if kind == T2IKind::Diffusion { 0.6 } else { 0.5 };
        assert!(after < bound * before, "{kind:?}: {before} → {after}");
    }
}

#[test]
fn the_loss_is_the_sum_of_its_named_terms() {
    let (_vs, m) = facts_model();
    let (images, tokens) = batch();
    let targets = scene_rows();
    let terms = m
        .loss_terms(&images, &tokens, Some(&targets), 0, 1000)
        .unwrap();
    let names: Vec<&str> = terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["pixel", "kl", "facts"]);
    for (name, t) in &terms {
        let v = t.double_value(&[]);
        assert!(v.is_finite() && v >= 0.0, "{name}: {v}");
    }
    let parts: f64 = terms.iter().map(|(_, t)| t.double_value(&[])).sum();
    let total = sum_terms(terms).double_value(&[]);
    assert!(
        (total - parts).abs() < 1e-3 * total.abs(),
        "{total} vs {parts}"
    );
    // Without targets there is no attribute term.
    let (_, diffusion) = build(T2IKind::Diffusion);
    let names: Vec<&str> = diffusion
        .loss_terms(&images, &tokens, None, 0, 0)
        .unwrap()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(names, ["denoise"]);
}

#[test]
fn the_place_by_place_modulation_starts_as_the_identity_and_trains() {
    let (vs, m) = facts_model();
    let (images, tokens) = batch();
    let targets = scene_rows();
    // The modulation starts as the identity (zero projections), so at first the cells'
    // facts change nothing; training must open that path.
    let name = "generator.blocks.0.layout1.weight";
    let vars = vs.variables();
    let start = vars[name].copy();
    assert_eq!(start.abs().sum(Kind::Float).double_value(&[]), 0.0);
    let mut o = opt(&vs, &[]);
    for _ in 0..30 {
        o.zero_grad();
        m.loss(&images, &tokens, Some(&targets), 0, 1000)
            .unwrap()
            .backward();
        o.step(3e-3);
    }
    let moved = (&vars[name] - start).abs().max().double_value(&[]);
    assert!(moved > 1e-4, "{name} did not train: {moved}");
}

#[test]
fn gan_discriminator_separates_real_from_mismatched_pairs() {
    let (vs, m) = build(T2IKind::Gan);
    let (images, tokens) = batch();
    let mut d = opt(&vs, &[DISCRIMINATOR_PREFIX.to_string()]);
    let margin = |m: &TextToImage| {
        tch::no_grad(|| {
            let discriminator = &m.body.gan().expect("a GAN body").discriminator;
            let s = m.condition(&tokens, 0, false).sentence();
            let real = discriminator.forward(&images, &s).mean(Kind::Float);
            let mis = discriminator
                .forward(&images, &s.roll([1], [0]))
                .mean(Kind::Float);
            (real - mis).double_value(&[])
        })
    };
    let before = margin(&m);
    for _ in 0..60 {
        d.zero_grad();
        m.gan_losses(0, &images, &tokens, 0).unwrap().backward();
        d.step(1e-3);
    }
    let after = margin(&m);
    assert!(
        after > 0.3 && after > before,
        "D(real) − D(mismatched): {before} → {after}"
    );
    // The generator's loss reaches the generator and not the discriminator's optimizer.
    let mut g = opt(&vs, &["generator.".into(), "text.".into()]);
    g.zero_grad();
    m.gan_losses(1, &images, &tokens, 0).unwrap().backward();
    assert!(g.clip_grad_norm(0.0) > 0.0);
}

#[test]
fn ddim_with_zero_eta_is_deterministic() {
    let (_vs, m) = build(T2IKind::Diffusion);
    let (_, tokens) = batch();
    let c = m.condition(&tokens.narrow(0, 0, 2), 0, false);
    let z = m.noise(2, Device::Cpu);
    tch::manual_seed(1);
    let a = m.sample(&c, &z);
    tch::manual_seed(2);
    let b = m.sample(&c, &z);
    assert!(a.equal(&b), "DDIM η=0 must not draw noise");
}

#[test]
fn guidance_scale_one_is_the_conditional_model() {
    let (vs, m) = build(T2IKind::Diffusion);
    // Perturb the zero-initialised output layer so predictions are not all zero.
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let _ = v.g_add_(&(v.randn_like() * 0.05));
        }
    });
    let (images, tokens) = batch();
    let c = m.condition(&tokens, 0, false);
    let x = images.randn_like();
    let cond = m.denoise(&x, 500, &c, 1.0).unwrap();
    let uncond = m.denoise(&x, 500, &c, 0.0).unwrap();
    assert!(cond.abs().max().double_value(&[]) > 1e-4);
    assert!(
        (&cond - &uncond).abs().max().double_value(&[]) > 1e-6,
        "the caption matters"
    );
    let w1 = diffusion::guide(&cond, &uncond, 1.0);
    assert!((w1 - &cond).abs().max().double_value(&[]) < 1e-6);
    let w3 = m.denoise(&x, 500, &c, 3.0).unwrap();
    let expect = &uncond + (&cond - &uncond) * 3.0;
    assert!((w3 - expect).abs().max().double_value(&[]) < 1e-5);
}

/// The error text of building a model from `cfg`, which must be refused.
fn config_error(cfg: &T2IConfig) -> String {
    let vs = VarStore::new(Device::Cpu);
    match TextToImage::new(&vs.root(), cfg) {
        Ok(_) => panic!("the config was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_sections_are_config_errors() {
    let mut cfg = config(T2IKind::Diffusion);
    cfg.unet = None;
    let err = config_error(&cfg);
    assert!(err.contains("model.unet"), "{err}");
    let mut cfg = config(T2IKind::Gan);
    cfg.gan.as_mut().unwrap().disc_channels = vec![8, 8, 8, 8, 8];
    let err = config_error(&cfg);
    assert!(err.contains("disc_channels"), "{err}");
    // Cell coordinates are relative to the facts' cells: without them they mean nothing.
    let mut cfg = config(T2IKind::Vae);
    cfg.generator.as_mut().unwrap().cell_coordinates = true;
    let err = config_error(&cfg);
    assert!(err.contains("cell_coordinates"), "{err}");
}

#[test]
fn cell_coordinates_are_offsets_from_each_cells_centre() {
    use generator::{cell_coordinates, COORDINATE_FEATURES};
    // 6 px on a 3×3 grid: two pixels per cell, a quarter cell either side of its centre.
    let f = cell_coordinates(3, 6, Device::Cpu);
    assert_eq!(f.size(), vec![36, COORDINATE_FEATURES]);
    let at = |x: i64, y: i64, k: i64| f.double_value(&[y * 6 + x, k]);
    for (x, u) in [(0, -0.25), (1, 0.25), (2, -0.25), (5, 0.25)] {
        assert!((at(x, 3, 0) - u).abs() < 1e-6, "u at x = {x}");
        assert!((at(3, x, 1) - u).abs() < 1e-6, "v at y = {x}");
    }
    // Every pixel is as far from its own cell's centre: r = √2/4.
    let r = f.select(1, 2);
    assert!((r - 2f64.sqrt() / 4.0).abs().max().double_value(&[]) < 1e-6);
    // On a map the side of the grid every pixel is a cell's centre.
    let centres = cell_coordinates(3, 3, Device::Cpu);
    assert!(centres.narrow(1, 0, 3).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn kl_to_the_standard_normal_matches_the_closed_form() {
    let mu = Tensor::from_slice(&[0.5f32, -1.0]).view([1, 2]);
    let lv = Tensor::from_slice(&[0.2f32, -0.3]).view([1, 2]);
    let kl = vae::kl_to_standard_normal(&mu, &lv).double_value(&[0]);
    // ½ Σ (μ² + σ² − ln σ² − 1).
    let want: f64 = [(0.5f64, 0.2f64), (-1.0, -0.3)]
        .iter()
        .map(|(m, l)| 0.5 * (m * m + l.exp() - l - 1.0))
        .sum();
    assert!((kl - want).abs() < 1e-6, "{kl} vs {want}");
    assert_eq!(
        vae::kl_to_standard_normal(&mu.zeros_like(), &lv.zeros_like()).double_value(&[0]),
        0.0
    );
}

/// Eight one-object scene rows for [`batch`]'s captions (the layout of
/// [`crate::scenes::probe::cell_targets`]): the sky follows the caption, one object in
/// cell 0.
fn scene_rows() -> Tensor {
    let rows: Vec<i64> = (0..8i64)
        .flat_map(|i| {
            let mut r = vec![i % 4, 1, 2, i % 10, (i + 1) % 10, i % 3, -1];
            r.extend([10, -1, -1, -1].repeat(8));
            r
        })
        .collect();
    Tensor::from_slice(&rows).view([8, 39])
}

fn facts_model() -> (VarStore, TextToImage) {
    let mut cfg = config(T2IKind::Vae);
    cfg.generator.as_mut().unwrap().cell_coordinates = true;
    cfg.text.local_layers = 1;
    cfg.text.sentence_ends = vec![19];
    cfg.facts = Some(FactsConfig::default());
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let m = TextToImage::new(&vs.root(), &cfg).unwrap();
    (vs, m)
}

#[test]
fn a_facts_vae_paints_from_the_nine_cells_its_reader_finds() {
    let (vs, mut m) = facts_model();
    let (images, tokens) = batch();
    let targets = scene_rows();
    let c = m.condition(&tokens, 0, false);
    assert_eq!(c.tokens.size(), [8, 9, 32], "one condition token per cell");
    assert_eq!(c.mask.size(), [8, 9]);
    let x = m.sample(&c.repeat(2), &m.noise(16, Device::Cpu));
    assert_eq!(x.size(), [16, 3, S, S]);
    // The facts come from the training paragraph: a batch without them is refused.
    let err = m.loss(&images, &tokens, None, 0, 10).err().unwrap();
    assert!(err.to_string().contains("scene facts"), "{err}");
    // While the text side trains, the reader's loss is a term of its own, and it
    // learns the captions' facts.
    let names = |m: &TextToImage| -> Vec<&str> {
        m.loss_terms(&images, &tokens, Some(&targets), 0, 10)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(names(&m), ["pixel", "kl", "facts"]);
    let read = |m: &TextToImage| m.fact_loss(&tokens, &targets, 0).unwrap().double_value(&[]);
    let before = read(&m);
    let mut o = opt(&vs, &["text.".into()]);
    for _ in 0..60 {
        o.zero_grad();
        m.fact_loss(&tokens, &targets, 0).unwrap().backward();
        o.step(3e-3);
    }
    let after = read(&m);
    assert!(after < 0.2 * before, "fact loss {before} → {after}");
    // Frozen, the text side gets no gradient from the generator's loss.
    o.zero_grad();
    m.freeze_text(&vs);
    assert_eq!(names(&m), ["pixel", "kl"]);
    let mut o = opt(&vs, &[]);
    o.zero_grad();
    m.loss(&images, &tokens, Some(&targets), 0, 10)
        .unwrap()
        .backward();
    for (name, t) in vs.variables() {
        if name.starts_with("text.") {
            assert!(
                !t.grad().defined() || t.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0,
                "{name}"
            );
        }
    }
}

#[test]
fn facts_are_the_vaes_alone() {
    let mut cfg = config(T2IKind::Gan);
    cfg.facts = Some(FactsConfig::default());
    let err = config_error(&cfg);
    assert!(err.contains("implemented for the vae"), "{err}");
}

/// A VAE and a GAN painting from an align model's places, with `match_weight` on, and
/// a tiny random align model of the same vocabulary as their critic.
fn matched(kind: T2IKind) -> (VarStore, TextToImage) {
    matched_with(kind, false, false)
}

/// [`matched`], the VAE's term scoring a prior sample when `match_prior`, the words
/// after the places when `words`.
fn matched_with(kind: T2IKind, match_prior: bool, words: bool) -> (VarStore, TextToImage) {
    use crate::models::align::{AlignConfig, Aligner};
    tch::manual_seed(0);
    let mut cfg = config(kind);
    cfg.align = Some(AlignedText {
        run: "align_run".into(),
        places: 2,
        match_weight: 2.0,
        match_prior,
        words,
    });
    let vs = VarStore::new(Device::Cpu);
    let mut m = TextToImage::new(&vs.root(), &cfg).unwrap();
    assert!(m.wants_critic());
    let align: AlignConfig = serde_yaml::from_str(
        "image_size: 8\nchannels: [8, 16]\nstem: 2\nplaces: 2\n\
         text: {dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 16, vocab_size: 20}\n\
         bag_weight: 1.0\npair_buckets: 8\n",
    )
    .unwrap();
    let weights = VarStore::new(Device::Cpu);
    let aligner = Aligner::new(&weights.root(), &align).unwrap();
    m.attach_critic(critic::MatchCritic::new(
        weights,
        aligner,
        vec![0],
        vec![],
        2.0,
    ))
    .unwrap();
    (vs, m)
}

/// The matching term of a matched VAE's loss on one batch (after the pixel and KL
/// terms), and the model's variables.
fn match_term(match_prior: bool) -> (VarStore, Tensor) {
    let (images, tokens) = batch();
    let (vs, m) = matched_with(T2IKind::Vae, match_prior, false);
    let terms = m.loss_terms(&images, &tokens, None, 0, 1000).unwrap();
    let names: Vec<&str> = terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["pixel", "kl", "match"]);
    let (_, matching) = terms.into_iter().last().unwrap();
    (vs, matching)
}

/// Whether a variable under `prefix` got a nonzero gradient.
fn moved(vs: &VarStore, prefix: &str) -> bool {
    vs.variables().iter().any(|(name, t)| {
        name.starts_with(prefix)
            && t.grad().defined()
            && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0
    })
}

#[test]
fn the_align_models_score_of_the_painted_pictures_trains_the_generator_alone() {
    let (vs, matching) = match_term(false);
    // Two InfoNCE terms over 8 pairs and the words-as-labels term, weighted 2.
    let v = matching.double_value(&[]);
    assert!(v.is_finite() && v > 2.0 * 2.0 * 8f64.ln() * 0.5, "{v}");
    matching.backward();
    assert!(moved(&vs, "generator."), "the term reaches the generator");
    // The GAN's generator loss carries it too (its discriminator's loss does not).
    let (images, tokens) = batch();
    let (vs, m) = matched(T2IKind::Gan);
    m.gan_losses(1, &images, &tokens, 0).unwrap().backward();
    assert!(vs
        .variables()
        .iter()
        .any(|(n, t)| n.starts_with("generator.") && t.grad().defined()));
}

#[test]
fn with_match_prior_the_term_scores_a_prior_sample_and_skips_the_posterior() {
    // Which variables the matching term alone moves.
    let moved_by_match = |prior: bool| {
        let (vs, matching) = match_term(prior);
        assert!(matching.double_value(&[]).is_finite());
        matching.backward();
        (moved(&vs, "generator."), moved(&vs, "posterior."))
    };
    // On the reconstruction the term reaches the posterior through z; on a prior
    // sample only the generator, which must paint the caption from the caption.
    assert_eq!(moved_by_match(false), (true, true));
    assert_eq!(moved_by_match(true), (true, false));
}

#[test]
fn the_match_term_is_refused_for_diffusion_and_below_zero() {
    let mut cfg = config(T2IKind::Diffusion);
    let align = AlignedText {
        run: "align_run".into(),
        places: 2,
        match_weight: 1.0,
        match_prior: false,
        words: false,
    };
    cfg.align = Some(align.clone());
    let err = config_error(&cfg);
    assert!(
        err.contains("match_weight") && err.contains("diffusion"),
        "{err}"
    );
    let mut cfg = config(T2IKind::Vae);
    cfg.align = Some(AlignedText {
        match_weight: -1.0,
        ..align.clone()
    });
    let err = config_error(&cfg);
    assert!(err.contains("match_weight must be 0 or more"), "{err}");
    // A prior sample is the VAE's choice, and only when the term is on.
    for (kind, weight) in [(T2IKind::Gan, 1.0), (T2IKind::Vae, 0.0)] {
        let mut cfg = config(kind);
        cfg.align = Some(AlignedText {
            match_weight: weight,
            match_prior: true,
            ..align.clone()
        });
        let err = config_error(&cfg);
        assert!(err.contains("match_prior"), "{kind:?} {weight}: {err}");
    }
    // A critic of another width than the text side painted from is refused.
    use crate::models::align::{AlignConfig, Aligner};
    let (_vs, mut m) = matched(T2IKind::Vae);
    let other: AlignConfig = serde_yaml::from_str(
        "image_size: 8\nchannels: [8, 16]\nstem: 2\nplaces: 2\n\
         text: {dim: 16, layers: 1, heads: 2, mlp: 32, max_len: 16, vocab_size: 20}\n",
    )
    .unwrap();
    let weights = VarStore::new(Device::Cpu);
    let aligner = Aligner::new(&weights.root(), &other).unwrap();
    let err = m
        .attach_critic(critic::MatchCritic::new(
            weights,
            aligner,
            vec![0],
            vec![],
            1.0,
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be the run of model.align"), "{err}");
}

#[test]
fn the_place_mlp_starts_as_the_identity_and_needs_places() {
    // The same seed draws the same blocks; the MLP's output weights start at zero.
    let painted = |mlp: bool| {
        let mut cfg = config(T2IKind::Vae);
        cfg.align = Some(AlignedText {
            run: "align_run".into(),
            places: 2,
            match_weight: 0.0,
            match_prior: false,
            words: false,
        });
        cfg.generator.as_mut().unwrap().place_mlp = mlp;
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let m = TextToImage::new(&vs.root(), &cfg).unwrap();
        // Its output bias starts random, as every linear layer's here: zeroed, the
        // MLP must be the identity.
        for (name, t) in vs.variables() {
            if name.starts_with("generator.place_mlp.fc2.bias") {
                let _ = tch::no_grad(|| t.shallow_clone().fill_(0.0));
            }
        }
        let (_, tokens) = batch();
        let c = m.condition(&tokens, 0, false);
        let z = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        m.generate(&c, &z).unwrap()
    };
    let diff = (painted(true) - painted(false))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-6, "{diff}");
    let mut cfg = config(T2IKind::Vae);
    cfg.generator.as_mut().unwrap().place_mlp = true;
    let err = config_error(&cfg);
    assert!(err.contains("place_mlp"), "{err}");
}

#[test]
fn with_words_the_generator_attends_to_them_after_the_places() {
    let (images, tokens) = batch();
    let (vs, m) = matched_with(T2IKind::Vae, false, true);
    let c = m.condition(&tokens, 0, false);
    // Four places (a 2×2 grid), then one vector per token.
    let l = tokens.size()[1];
    assert_eq!(c.tokens.size(), [8, 4 + l, 32]);
    let places = c.mask.narrow(1, 0, 4).to_kind(Kind::Int64);
    assert_eq!(places.sum(Kind::Int64).int64_value(&[]), 8 * 4);
    let words = c.mask.narrow(1, 4, l);
    assert!(words.eq_tensor(&tokens.ne(0)).all().int64_value(&[]) == 1);
    // The attention blocks read the words: other word vectors, another picture.
    let z = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
    let painted = m.generate(&c, &z).unwrap();
    let mut shifted = c.shallow();
    let word_part = c.tokens.narrow(1, 4, l) + 1.0;
    shifted.tokens = Tensor::cat(&[c.tokens.narrow(1, 0, 4), word_part], 1);
    let other = m.generate(&shifted, &z).unwrap();
    assert!((painted - other).abs().max().double_value(&[]) > 1e-4);
    // The critic still scores against the places alone, and the loss trains.
    let total = m.loss(&images, &tokens, None, 0, 1000).unwrap();
    assert!(total.double_value(&[]).is_finite());
    total.backward();
    assert!(moved(&vs, "generator.blocks.0.attn"));
}
