//! The cycle: image → caption → image with independently trained models,
//! scored against a floor (a random other caption), a ceiling (the true caption) and a
//! nearest-neighbour baseline (the training image whose caption is closest to the
//! generated caption in the contrastive text space), then written up as a report.

use super::captioner::{caption_images, load_run as load_captioner, synth_facts};
use super::evaluators::{
    embed_images, embed_tokens, load_clip, load_probe, probe_predict, scene_targets, tokenize_batch,
};
use super::t2i::{draw_tokens, load_run as load_t2i, resized};
use crate::data::layout::{Dataset, Split};
use crate::data::loader::{load_split, to_float};
use crate::eval::embedding::r_precision;
use crate::eval::image::{histogram_intersection, psnr, ssim};
use crate::eval::text::caption_metrics;
use crate::eval::{mean, standard_error};
use crate::report::headline::Headline;
use crate::scenes::probe::attribute_accuracy;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub struct CycleArgs {
    pub captioner: PathBuf,
    pub generator: PathBuf,
    pub clip: PathBuf,
    pub probe: Option<PathBuf>,
    /// An invertible-bridge run painting the generated captions in a column of its own.
    pub invertible: Option<PathBuf>,
    pub split: Split,
    pub limit: Option<usize>,
    pub out: PathBuf,
    /// Other cycle reports whose headline figures the page shows beside this one's.
    pub beside: Vec<PathBuf>,
    pub seed: u64,
}

/// One column of the table: the images a condition produced.
struct Column {
    name: &'static str,
    images: Tensor,
}

pub fn run(a: &CycleArgs, device: Device) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    // Read before minutes of captioning and drawing: a wrong folder fails at once.
    let beside = a
        .beside
        .iter()
        .map(|dir| Ok((report_name(dir), Headline::read(dir)?)))
        .collect::<Result<Vec<_>>>()?;
    let cap = load_captioner(&a.captioner, "best", device)
        .with_context(|| format!("loading the captioner {}", a.captioner.display()))?;
    let gen = load_t2i(&a.generator, device)
        .with_context(|| format!("loading the generator {}", a.generator.display()))?;
    let clip = load_clip(&a.clip, device)
        .with_context(|| format!("loading the contrastive evaluator {}", a.clip.display()))?;
    // The cycle joins models through text: they must share one tokenizer.
    for (name, hash) in [
        ("generator", &gen.tok.hash),
        ("contrastive evaluator", &clip.tok.hash),
    ] {
        if *hash != cap.tok.hash {
            bail!("the captioner and the {name} were trained with different tokenizers (tokenizer.json hashes differ); retrain one of them on the same dataset");
        }
    }
    let ds = Dataset::open(&cap.cfg.data)?;
    if a.probe.is_some() {
        ds.require_scene_facts("--probe (the attribute probe)")?;
    }
    let probe = a
        .probe
        .as_ref()
        .map(|p| load_probe(p, device))
        .transpose()?;
    // Everything is compared at the contrastive evaluator's resolution; a generator that
    // draws smaller is upsampled to it.
    let size = clip.cfg.model.image_size as u32;
    // Once per picture: with `--multi pairs` an image has one item per caption, and
    // its other captions would be graded against its own reconstruction as distractors.
    let image_of = ds.image_of_items()?;
    let data = load_split(&ds, a.split, size, a.limit)?.one_per_image(&image_of);
    let n = data.ids.len();
    if n < 2 {
        bail!(
            "the {} split has {n} image(s); the cycle needs at least 2",
            a.split.name()
        );
    }
    eprintln!("cycle: {n} {} images", a.split.name());
    let cap_images = if cap.cfg.model.image_size == size as i64 {
        data.images.shallow_clone()
    } else {
        load_split(&ds, a.split, cap.cfg.model.image_size as u32, a.limit)?
            .one_per_image(&image_of)
            .images
    };

    // image → caption → image
    let generated = caption_images(
        &cap.model,
        &cap.tok,
        &cap_images,
        &cap.cfg.eval.decode,
        device,
        64,
    );
    let gmax = gen.cfg.model.text.max_len as usize;
    let recon = draw_at(
        size,
        &gen.model,
        &tokenize_batch(&gen.tok, &generated, gmax)?,
        gen.tok.pad,
        1,
        a.seed as i64,
        device,
    );
    let ceiling = draw_at(
        size,
        &gen.model,
        &tokenize_batch(&gen.tok, &data.captions, gmax)?,
        gen.tok.pad,
        1,
        a.seed as i64,
        device,
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let shuffled: Vec<usize> = {
        // A derangement-ish shuffle: every image gets someone else's caption.
        let mut p: Vec<usize> = (0..n).collect();
        p.shuffle(&mut rng);
        (0..n)
            .map(|i| if p[i] == i { p[(i + 1) % n] } else { p[i] })
            .collect()
    };
    let random_captions: Vec<String> = shuffled.iter().map(|&j| data.captions[j].clone()).collect();
    let floor = draw_at(
        size,
        &gen.model,
        &tokenize_batch(&gen.tok, &random_captions, gmax)?,
        gen.tok.pad,
        1,
        a.seed as i64,
        device,
    );
    // Nearest neighbour: the training image whose caption is closest to the generated one.
    let train = load_split(&ds, Split::Train, size, None)?;
    let cmax = clip.cfg.model.text.max_len as usize;
    let train_txt = embed_tokens(
        &clip.model,
        &tokenize_batch(&clip.tok, &train.captions, cmax)?,
        clip.tok.pad,
        device,
    );
    let gen_txt = embed_tokens(
        &clip.model,
        &tokenize_batch(&clip.tok, &generated, cmax)?,
        clip.tok.pad,
        device,
    );
    let nn_idx = gen_txt
        .matmul(&train_txt.tr())
        .argmax(1, false)
        .to_device(Device::Cpu);
    let nearest = train.images.index_select(0, &nn_idx);

    let bridge = match &a.invertible {
        Some(dir) => {
            let lb = super::invertible::load_run(dir, device)
                .with_context(|| format!("loading the invertible bridge {}", dir.display()))?;
            if lb.embedder.tokenizer().hash != cap.tok.hash {
                bail!("the captioner and the invertible bridge were trained with different tokenizers (tokenizer.json hashes differ)");
            }
            Some(resized(&lb.draw(&generated)?, size as i64))
        }
        None => None,
    };
    let mut columns = vec![
        Column {
            name: "cycle",
            images: recon.shallow_clone(),
        },
        Column {
            name: "ceiling (true caption)",
            images: ceiling.shallow_clone(),
        },
        Column {
            name: "floor (random caption)",
            images: floor,
        },
        Column {
            name: "nearest neighbour",
            images: nearest,
        },
    ];
    if let Some(images) = bridge {
        columns.push(Column {
            name: "cycle (invertible bridge)",
            images,
        });
    }
    let orig_txt = embed_tokens(
        &clip.model,
        &tokenize_batch(&clip.tok, &data.captions, cmax)?,
        clip.tok.pad,
        device,
    );
    let (orig_emb, orig_feat) = embed_images(&clip.model, &data.images, device);
    let truth = match &probe {
        Some(_) => Some(scene_targets(&ds, &data.ids)?),
        None => None,
    };
    let x_orig = to_float(&data.images, Device::Cpu);
    let mut table: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for col in &columns {
        let (emb, feat) = embed_images(&clip.model, &col.images, device);
        let mut m = BTreeMap::new();
        // Each per-image figure with its standard error (`<name>_se`), so the page can
        // show whether two columns differ by more than noise.
        let mut put = |name: &str, per_image: Vec<f64>| {
            m.insert(name.to_string(), mean(&per_image));
            m.insert(format!("{name}_se"), standard_error(&per_image));
        };
        let per_row = |t: Tensor| -> Result<Vec<f64>> {
            Ok(Vec::<f64>::try_from(
                t.to_kind(Kind::Double).to_device(Device::Cpu),
            )?)
        };
        let cos_ii = (&emb * &orig_emb).sum_dim_intlist(1, false, Kind::Float);
        put("clip_image_image", per_row(cos_ii.clamp_min(0.0) * 100.0)?);
        let cos_it = (&emb * &orig_txt).sum_dim_intlist(1, false, Kind::Float);
        put("clip_image_text", per_row(cos_it.clamp_min(0.0) * 100.0)?);
        put(
            "feature_distance",
            per_row((&feat - &orig_feat).norm_scalaropt_dim(2, [1], false))?,
        );
        let x = to_float(&col.images, Device::Cpu);
        put("psnr", psnr(&x_orig, &x));
        put("ssim", ssim(&x_orig, &x));
        put("colour_histogram", histogram_intersection(&x_orig, &x));
        let rp = r_precision(&emb, &orig_txt, 99, a.seed);
        m.insert("r_precision".into(), rp);
        let n = col.images.size()[0].max(1) as f64;
        m.insert("r_precision_se".into(), (rp * (1.0 - rp) / n).sqrt());
        if let (Some(p), Some(t)) = (&probe, &truth) {
            m.insert(
                "probe_attr_agreement".into(),
                attribute_accuracy(
                    &probe_predict(
                        &p.model,
                        &resized(&col.images, p.cfg.model.image_size),
                        device,
                    ),
                    t,
                ),
            );
        }
        table.insert(col.name.to_string(), m);
    }
    // Captions: the original vs the generated one, and vs the caption of the
    // reconstruction (the second pass of the cycle).
    let second = caption_images(
        &cap.model,
        &cap.tok,
        &resized(&recon, cap.cfg.model.image_size),
        &cap.cfg.eval.decode,
        device,
        64,
    );
    let first_pass = caption_metrics(&generated, &data.captions);
    let second_pass = caption_metrics(&second, &data.captions);
    let cycle = table
        .get_mut("cycle")
        .expect("the cycle column was filled above");
    for k in ["bleu4", "rouge_l", "cider_d"] {
        cycle.insert(format!("caption_{k}"), first_pass[k]);
        cycle.insert(format!("second_pass_{k}"), second_pass[k]);
    }
    if let Some(truth) = synth_facts(&ds)? {
        let att = super::captioner::attribute_scores(&generated, &data.ids, &truth);
        cycle.insert("caption_attr_f1".into(), att["attr_f1"]);
    }
    crate::util::fsio::write_json(&a.out.join("metrics.json"), &table)?;
    let headline = Headline::collect(&a.captioner, &a.generator, a.split.name(), &table)?;
    headline.write(&a.out)?;
    // The Reverse Image Caption competition's grid: 5 test captions × 5 noises.
    let grid = data.tokens.as_ref().map(|t| {
        let t = t.narrow(0, 0, 5.min(t.size()[0]));
        draw_tokens(
            &gen.model,
            &t,
            gen.tok.pad,
            5,
            a.seed as i64 + 1,
            gen.vs.device(),
        )
    });
    let page = crate::report::cycle::Page {
        data: &data,
        split: a.split.name(),
        generated: &generated,
        recon: &recon,
        ceiling: &ceiling,
        table: &table,
        headline: crate::report::headline::table_html(&report_name(&a.out), &headline, &beside),
        grid_images: grid.as_ref(),
    };
    crate::report::cycle::write(&a.out, &page)?;
    Ok(table)
}

/// [`draw_tokens`], resized to the side the cycle compares at.
fn draw_at(
    side: u32,
    model: &crate::models::t2i::TextToImage,
    tokens: &Tensor,
    pad: i64,
    per_caption: i64,
    seed: i64,
    device: Device,
) -> Tensor {
    crate::util::cores::rebalance();
    resized(
        &draw_tokens(model, tokens, pad, per_caption, seed, device),
        side as i64,
    )
}

/// A report's name on the page: its folder's (reports/scenes → scenes).
fn report_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

pub fn default_out(name: &str) -> PathBuf {
    Path::new("reports").join(name)
}
