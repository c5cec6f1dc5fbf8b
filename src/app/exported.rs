//! The inference commands over exported models: `draw --model`, `cycle IMAGE…`,
//! `embed` and `retrieve` (`caption --model` lives beside `caption --run` in the app).

use crate::cli::{CycleArgs, EmbedArgs, RetrieveArgs};
use crate::data::images::load_batch;
use crate::export::exported::{ExportedCaptioner, ExportedClip, ExportedPainter};
use crate::stages::t2i::{paint_tokens, DrawRequest};
use crate::util::fsio::atomic_write;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Device, Tensor};

/// `draw --model`: the uint8 images of `req` from an exported generator.
pub fn draw(dir: &Path, req: &DrawRequest, device: Device) -> Result<Tensor> {
    let mut p = ExportedPainter::load(dir, device)?;
    req.sampling
        .apply(p.schedule.as_mut().map(|s| &mut s.cfg))?;
    let tokens = p.tokens(req.texts)?;
    paint_tokens(&p, &tokens, p.tok.pad, req.n, req.seed, device)
}

/// A file stem safe to write under (unique by index when stems repeat).
fn stem(i: usize, path: &Path) -> String {
    let s = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{i:03}_{clean}")
}

/// `cycle IMAGE…`: each image → paragraph (exported captioner) → picture (exported
/// generator). Prints the paragraphs; writes `<stem>.txt`, `<stem>_reconstruction.png`
/// and `cycle.json` under --out.
pub fn cycle_images(a: &CycleArgs, seed: i64, device: Device) -> Result<()> {
    let cap = ExportedCaptioner::load(&a.captioner, device)?;
    let painter = ExportedPainter::load(&a.generator, device)?;
    if cap.manifest.tokenizer.as_ref().map(|t| &t.hash)
        != painter.manifest.tokenizer.as_ref().map(|t| &t.hash)
    {
        bail!(
            "{} and {} were trained with different tokenizers (hash mismatch); export models that share one",
            a.captioner.display(),
            a.generator.display()
        );
    }
    let opts = super::decode_options(cap.decode.clone(), &a.decode)?;
    let images = load_batch(&a.images, cap.manifest.image_size as u32)?;
    let captions = cap.caption(&images, &opts, 32)?;
    let tokens = painter.tokens(&captions)?;
    let drawn = paint_tokens(&painter, &tokens, painter.tok.pad, 1, seed, device)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let s = drawn.size()[2] as u32;
    let mut rows = vec![];
    for (i, (path, caption)) in a.images.iter().zip(&captions).enumerate() {
        let name = stem(i, path);
        atomic_write(&a.out.join(format!("{name}.txt")), caption.as_bytes())?;
        let rgb: Vec<u8> = Vec::try_from(
            drawn
                .get(i as i64)
                .permute([1, 2, 0])
                .contiguous()
                .view([-1]),
        )
        .expect("uint8 pixels");
        let png = a.out.join(format!("{name}_reconstruction.png"));
        atomic_write(&png, &crate::report::grid::png(&rgb, s, s)?)?;
        println!("{}\t{caption}", path.display());
        rows.push(serde_json::json!({
            "image": path.display().to_string(),
            "caption": caption,
            "reconstruction": png.display().to_string(),
        }));
    }
    crate::util::fsio::write_json(&a.out.join("cycle.json"), &rows)?;
    eprintln!("reconstructions in {}", a.out.display());
    Ok(())
}

/// `embed`: unit-norm embeddings of images or texts as `embeddings.npy` + `names.txt`.
pub fn embed(a: &EmbedArgs, device: Device) -> Result<()> {
    let m = ExportedClip::load(&a.model, device)?;
    let (emb, names) = match (a.images.is_empty(), &a.captions) {
        (false, None) => (
            m.embed_images(&load_batch(&a.images, m.manifest.image_size as u32)?)?,
            a.images
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        ),
        (true, Some(csv)) => {
            let texts = crate::data::ingest::read_caption_column(csv)?;
            (m.embed_texts(&texts)?, texts)
        }
        _ => bail!("give either --images FILE… or --captions FILE.csv"),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let npy = a.out.join("embeddings.npy");
    let emb = emb.to_device(Device::Cpu);
    crate::util::fsio::atomic_write_with(&npy, |tmp| {
        emb.write_npy(tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })?;
    let lines: String = names
        .iter()
        .map(|n| n.replace(['\n', '\r'], " ") + "\n")
        .collect();
    atomic_write(&a.out.join("names.txt"), lines.as_bytes())?;
    println!(
        "{} embeddings of width {} in {}",
        emb.size()[0],
        emb.size()[1],
        npy.display()
    );
    Ok(())
}

/// `retrieve`: the top-k images for a text query, or texts for an image query, by cosine.
pub fn retrieve(a: &RetrieveArgs, device: Device) -> Result<()> {
    let m = ExportedClip::load(&a.model, device)?;
    let size = m.manifest.image_size as u32;
    let (query, items, names): (Tensor, Tensor, Vec<String>) =
        match (&a.query, &a.query_image, a.images.is_empty(), &a.captions) {
            (Some(q), None, false, None) => (
                m.embed_texts(std::slice::from_ref(q))?,
                m.embed_images(&load_batch(&a.images, size)?)?,
                a.images.iter().map(|p| p.display().to_string()).collect(),
            ),
            (None, Some(img), true, Some(csv)) => {
                let texts = crate::data::ingest::read_caption_column(csv)?;
                (
                    m.embed_images(&load_batch(std::slice::from_ref(img), size)?)?,
                    m.embed_texts(&texts)?,
                    texts,
                )
            }
            _ => bail!(
            "give --query TEXT with --images FILE…, or --query-image FILE with --captions FILE.csv"
        ),
        };
    let scores = items
        .matmul(&query.tr())
        .squeeze_dim(1)
        .to_device(Device::Cpu);
    let k = a.k.min(names.len()) as i64;
    let (top, idx) = scores.topk(k, 0, true, true);
    let top: Vec<f32> = Vec::try_from(top).expect("float scores");
    let idx: Vec<i64> = Vec::try_from(idx).expect("int64 indices");
    for (rank, (s, i)) in top.iter().zip(idx).enumerate() {
        println!("{:>3}  {s:.4}  {}", rank + 1, names[i as usize]);
    }
    Ok(())
}
