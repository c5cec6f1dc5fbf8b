//! TensorBoard projector files (embeddings TSV, metadata TSV, sprite image and the
//! `projector_config.pbtxt` that points at them), so the contrastive space can be
//! explored interactively with `tensorboard --logdir <folder>`.

use crate::data::loader::SplitData;
use crate::util::fsio::atomic_write;
use anyhow::Result;
use std::path::Path;
use tch::{Kind, Tensor};

pub fn write(dir: &Path, embeddings: &Tensor, data: &SplitData, labels: &[String]) -> Result<()> {
    let n = embeddings.size()[0].min(1024) as usize;
    let rows: Vec<Vec<f32>> = Vec::try_from(
        embeddings
            .narrow(0, 0, n as i64)
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu),
    )
    .expect("a tensor of the kind we made");
    let tsv: String = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| format!("{v:.5}"))
                .collect::<Vec<_>>()
                .join("\t")
                + "\n"
        })
        .collect();
    atomic_write(&dir.join("tensors.tsv"), tsv.as_bytes())?;
    let mut meta = String::from("id\tlabel\n");
    for (id, label) in data.ids.iter().zip(labels).take(n) {
        meta.push_str(&format!("{id}\t{}\n", label.replace(['\t', '\n'], " ")));
    }
    atomic_write(&dir.join("metadata.tsv"), meta.as_bytes())?;
    // Sprite: thumbnails in a square grid, row-major, as the projector expects.
    let side = (n as f64).sqrt().ceil() as u32;
    let t = data.size as u32;
    let mut sprite = image::RgbImage::new(side * t, side * t);
    let imgs = data
        .images
        .narrow(0, 0, n as i64)
        .permute([0, 2, 3, 1])
        .contiguous();
    let bytes: Vec<u8> = Vec::try_from(imgs.view([-1])).expect("a tensor of the kind we made");
    let per = (t * t * 3) as usize;
    for i in 0..n {
        let tile = image::RgbImage::from_raw(t, t, bytes[i * per..(i + 1) * per].to_vec())
            .expect("tile size");
        image::imageops::replace(
            &mut sprite,
            &tile,
            ((i as u32 % side) * t) as i64,
            ((i as u32 / side) * t) as i64,
        );
    }
    let mut png = std::io::Cursor::new(Vec::new());
    sprite.write_to(&mut png, image::ImageFormat::Png)?;
    atomic_write(&dir.join("sprite.png"), png.get_ref())?;
    let config = format!(
        "embeddings {{\n  tensor_name: \"clip_images\"\n  tensor_path: \"tensors.tsv\"\n  metadata_path: \"metadata.tsv\"\n  sprite {{\n    image_path: \"sprite.png\"\n    single_image_dim: {t}\n    single_image_dim: {t}\n  }}\n}}\n"
    );
    atomic_write(&dir.join("projector_config.pbtxt"), config.as_bytes())
}
