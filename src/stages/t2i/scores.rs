//! Grading what a generator paints, with the separately trained evaluators: every
//! generation score of `train`'s evaluations and of `eval t2i`, the diversity within a
//! caption's pictures against the data's own, and the mean-training-image baseline.

use super::*;

/// uint8 images `(N, 3, S, S)` resized to side `side` for an evaluator trained at another
/// resolution than the generator draws, by the same filter that loads dataset images
/// (area averaging when shrinking): a drawn image and a real one reach it alike.
pub fn resized(x: &Tensor, side: i64) -> Tensor {
    crate::data::images::resize_batch(x, side as u32)
}

#[allow(clippy::too_many_arguments)] // each input is a distinct role; a struct would only rename them
/// Every generation score for images drawn from `captions` (one per caption), against
/// the real `reference` images of the same split.
pub fn generation_scores(
    images: &Tensor,
    captions: &[String],
    caption_ids: &[String],
    reference: &Tensor,
    clip: &LoadedClip,
    probe: Option<&LoadedProbe>,
    ds: &Dataset,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let tokens = tokenize_batch(&clip.tok, captions, clip.cfg.model.text.max_len as usize)?;
    let txt = embed_tokens(&clip.model, &tokens, clip.tok.pad, device);
    let clip_size = clip.cfg.model.image_size;
    let (img, feat) = embed_images(&clip.model, &resized(images, clip_size), device);
    let (_, real_feat) = embed_images(&clip.model, &resized(reference, clip_size), device);
    let mut m = BTreeMap::new();
    m.insert("clip_score".into(), clip_score(&img, &txt));
    // Another caption of the same picture is not a distractor.
    let groups = crate::data::loader::image_groups(caption_ids, &ds.image_of_items()?);
    m.insert(
        "r_precision".into(),
        r_precision_grouped(&img, &txt, &groups, 99, 0),
    );
    m.insert("fd_own".into(), frechet_distance(&feat, &real_feat));
    m.insert("kid_own".into(), kid(&feat, &real_feat));
    if let Some(p) = probe {
        let truth = scene_targets(ds, caption_ids)?;
        // The probe grades at its own resolution (a generator may draw smaller).
        let images = &resized(images, p.cfg.model.image_size);
        let pred = probe_predict(&p.model, images, device);
        m.insert(
            "probe_attr_accuracy".into(),
            attribute_accuracy(&pred, &truth),
        );
        // Per slot, as `eval probe` reports them, to see which facts the pictures lose.
        for (slot, acc) in slot_accuracies(&pred, &truth) {
            m.insert(format!("probe_acc_{slot}"), acc);
        }
        let post = tch::no_grad(|| p.model.kind_posteriors(&to_float(images, device)));
        m.insert("is_style".into(), inception_style_score(&post));
    }
    Ok(m)
}

/// Mean pairwise distance of the contrastive features within each group of `per`
/// consecutive images, averaged over the groups: 0 when the images of a group are alike.
pub(super) fn group_diversity(images: &Tensor, per: i64, clip: &LoadedClip, device: Device) -> f64 {
    let (_, feats) = embed_images(
        &clip.model,
        &resized(images, clip.cfg.model.image_size),
        device,
    );
    let groups = feats.size()[0] / per;
    (0..groups)
        .map(|i| mean_pairwise_distance(&feats.narrow(0, i * per, per)))
        .sum::<f64>()
        / groups.max(1) as f64
}

/// The embedded set's scenes of `ids` painted again, `per` times each with another seed,
/// at the dataset's size `(ids·per, 3, S, S)`: the renderer varies the stars, the waves
/// and the styles' textures, and keeps every fact. Their [`group_diversity`] is the
/// data's own: what a generator that models all of p(x | t) would reach.
pub(super) fn repainted_scenes(ds: &Dataset, ids: &[String], per: u64) -> Result<Tensor> {
    let scenes = scenes_of(ds, ids)?;
    let side = stored_side(ds, ids.first().context("no images to repaint")?)?;
    let pixels: Vec<u8> = scenes
        .iter()
        .flat_map(|s| (0..per).flat_map(move |seed| paint(s, side as usize, seed)))
        .collect();
    let n = (scenes.len() as u64 * per) as i64;
    Ok(crate::data::images::nchw_batch(&pixels, n, side))
}

/// `eval t2i`: test captions → images → every generation score, plus the "mean
/// training image" baseline for FD-own and a diversity figure.
pub fn evaluate(
    run_dir: &Path,
    split: Split,
    limit: Option<usize>,
    device: Device,
) -> Result<BTreeMap<String, f64>> {
    let lt = load_run(run_dir, device)?;
    let ds = Dataset::open(&lt.cfg.data)?;
    let data = load_split(&ds, split, lt.cfg.model.image_size as u32, limit)?;
    let (clip, probe) = load_evaluators(&lt.cfg.eval, &ds, device)?;
    let tokens = data.tokens.as_ref().context("tokenized captions")?;
    let start = std::time::Instant::now();
    let images = draw_tokens(&lt.model, tokens, lt.tok.pad, 1, 0, device);
    let secs = start.elapsed().as_secs_f64();
    let mut m = generation_scores(
        &images,
        &data.captions,
        &data.ids,
        &data.images,
        &clip,
        probe.as_ref(),
        &ds,
        device,
    )?;
    m.insert("images_per_sec".into(), data.ids.len() as f64 / secs);
    if lt.model.reads_facts() {
        // What the generator was told: the ceiling of its probe accuracy.
        let read = read_facts(&lt.model, tokens, lt.tok.pad, device)?;
        let truth = scene_targets(&ds, &data.ids)?;
        m.insert(
            "reader_fact_accuracy".into(),
            attribute_accuracy(&read, &truth),
        );
    }
    // Diversity: 5 noises for each of the first 20 captions, mean pairwise distance of
    // their contrastive features (0 means the noise is ignored: mode collapse).
    let k = 20.min(tokens.size()[0]);
    let many = draw_tokens(&lt.model, &tokens.narrow(0, 0, k), lt.tok.pad, 5, 7, device);
    m.insert("diversity".into(), group_diversity(&many, 5, &clip, device));
    if probe.is_some() {
        // A probe grades the embedded set alone, whose scenes can be painted again.
        let renders = repainted_scenes(&ds, &data.ids[..k as usize], 5)?;
        m.insert(
            "diversity_data".into(),
            group_diversity(&renders, 5, &clip, device),
        );
    }
    let clip_size = clip.cfg.model.image_size;
    // Baseline: a generator that always draws the mean training image.
    let train = load_split(
        &ds,
        Split::Train,
        lt.cfg.model.image_size as u32,
        Some(1000),
    )?;
    let mean_img = train
        .images
        .to_kind(Kind::Float)
        .mean_dim(0, true, Kind::Float)
        .round()
        .to_kind(Kind::Uint8);
    let constant = mean_img
        .expand([data.ids.len() as i64, -1, -1, -1], false)
        .contiguous();
    let (_, const_feat) = embed_images(&clip.model, &resized(&constant, clip_size), device);
    let (_, real_feat) = embed_images(&clip.model, &resized(&data.images, clip_size), device);
    m.insert(
        "fd_own_mean_image_baseline".into(),
        frechet_distance(&const_feat, &real_feat),
    );
    m.insert("images".into(), data.ids.len() as f64);
    let out = run_dir.join(format!("eval_{}", split.name()));
    crate::util::fsio::write_json(&out.join("metrics.json"), &m)?;
    let (rgb, h, w) = crate::report::grid::grid_rgb(&many.narrow(0, 0, many.size()[0].min(25)), 5);
    crate::util::fsio::atomic_write(
        &out.join("grid_5x5.png"),
        &crate::report::grid::png(&rgb, w, h)?,
    )?;
    Ok(m)
}
