//! TensorBoard event files. The messages come from the `tensorboard-rs` project: its
//! summary builders make the scalars and histograms, and its generated protobuf types
//! (`tensorboard-proto`) the events, images and the text plugin's tensors, which its
//! builders lack. What stays here is the TFRecord framing and the file: `tensorboard-rs`'s
//! own writer thread panics on a write error (a full disk), and a run must stop with a
//! clear error instead. Its image builder also reads a CHW buffer as HWC, so images are
//! built from the message types too.

use anyhow::{Context, Result};
use protobuf::{Message, RepeatedField};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::{
    Summary, SummaryMetadata, SummaryMetadata_PluginData, Summary_Image, Summary_Value,
};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::tensor_shape::{TensorShapeProto, TensorShapeProto_Dim};
use tensorboard_proto::types::DataType;

/// Buckets of a [`EventWriter::histogram`].
const HISTOGRAM_BUCKETS: usize = 30;

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn now() -> Result<std::time::Duration> {
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?)
}

/// A summary of one value.
fn one_value(value: Summary_Value) -> Summary {
    let mut summary = Summary::new();
    summary.set_value(RepeatedField::from_vec(vec![value]));
    summary
}

pub struct EventWriter {
    /// None on the ranks of a data-parallel job other than 0: they log nothing.
    out: Option<BufWriter<File>>,
}

impl EventWriter {
    /// Opens a new event file in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<Self> {
        if !crate::distributed::is_writer() {
            return Ok(EventWriter { out: None });
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = now()?;
        let name = format!(
            "events.out.tfevents.{}.ekphrasis.{}",
            now.as_secs(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter {
            out: Some(BufWriter::new(file)),
        };
        let mut ev = Event::new();
        ev.set_wall_time(now.as_secs_f64());
        ev.set_file_version("brain.Event:2".into());
        w.record(&ev)?;
        Ok(w)
    }

    /// One TFRecord: length, its masked CRC-32C, the event, its masked CRC-32C.
    fn record(&mut self, ev: &Event) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let data = ev.write_to_bytes()?;
        let len = (data.len() as u64).to_le_bytes();
        out.write_all(&len)?;
        out.write_all(&masked_crc(&len).to_le_bytes())?;
        out.write_all(&data)?;
        out.write_all(&masked_crc(&data).to_le_bytes())?;
        Ok(())
    }

    fn event(&mut self, step: i64, summary: Summary) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        let mut ev = Event::new();
        ev.set_wall_time(now()?.as_secs_f64());
        ev.set_step(step);
        ev.set_summary(summary);
        self.record(&ev)
    }

    pub fn scalar(&mut self, tag: &str, step: i64, v: f64) -> Result<()> {
        self.event(step, tensorboard_rs::summary::scalar(tag, v as f32))
    }

    /// A histogram of `values` (a weight or gradient tensor) in 30 equal buckets between
    /// its minimum and maximum; non-finite values are left out.
    pub fn histogram(&mut self, tag: &str, step: i64, values: &tch::Tensor) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        let v: Vec<f64> = Vec::try_from(
            values
                .detach()
                .to_device(tch::Device::Cpu)
                .to_kind(tch::Kind::Double)
                .reshape([-1]),
        )?;
        let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Ok(());
        }
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let width = ((hi - lo) / HISTOGRAM_BUCKETS as f64).max(f64::MIN_POSITIVE);
        let mut counts = vec![0.0; HISTOGRAM_BUCKETS];
        for x in &v {
            let i = (((x - lo) / width) as usize).min(HISTOGRAM_BUCKETS - 1);
            counts[i] += 1.0;
        }
        // Right edges; the last is the maximum itself.
        let limits: Vec<f64> = (1..=HISTOGRAM_BUCKETS)
            .map(|i| {
                if i == HISTOGRAM_BUCKETS {
                    hi
                } else {
                    lo + width * i as f64
                }
            })
            .collect();
        let summary = tensorboard_rs::summary::histogram_raw(
            tag,
            lo,
            hi,
            v.len() as f64,
            v.iter().sum(),
            v.iter().map(|x| x * x).sum(),
            &limits,
            &counts,
        );
        self.event(step, summary)
    }

    /// An RGB image given as height × width × 3 bytes.
    pub fn image(
        &mut self,
        tag: &str,
        step: i64,
        rgb: &[u8],
        height: u32,
        width: u32,
    ) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_raw(width, height, rgb.to_vec())
            .context("image buffer does not match its size")?
            .write_to(&mut png, image::ImageFormat::Png)?;
        let mut img = Summary_Image::new();
        img.set_height(height as i32);
        img.set_width(width as i32);
        img.set_colorspace(3);
        img.set_encoded_image_string(png.into_inner());
        let mut value = Summary_Value::new();
        value.set_tag(tag.into());
        value.set_image(img);
        self.event(step, one_value(value))
    }

    /// Text shown by TensorBoard's text plugin (markdown): a string tensor of one
    /// element, tagged with the plugin's name.
    pub fn text(&mut self, tag: &str, step: i64, text: &str) -> Result<()> {
        let mut plugin = SummaryMetadata_PluginData::new();
        plugin.set_plugin_name("text".into());
        let mut meta = SummaryMetadata::new();
        meta.set_plugin_data(plugin);
        let mut dim = TensorShapeProto_Dim::new();
        dim.set_size(1);
        let mut shape = TensorShapeProto::new();
        shape.set_dim(RepeatedField::from_vec(vec![dim]));
        let mut tensor = TensorProto::new();
        tensor.set_dtype(DataType::DT_STRING);
        tensor.set_tensor_shape(shape);
        tensor.set_string_val(RepeatedField::from_vec(vec![text.as_bytes().to_vec()]));
        let mut value = Summary_Value::new();
        value.set_tag(tag.into());
        value.set_metadata(meta);
        value.set_tensor(tensor);
        self.event(step, one_value(value))
    }

    pub fn flush(&mut self) -> Result<()> {
        match self.out.as_mut() {
            Some(out) => Ok(out.flush()?),
            None => Ok(()),
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
    }
}
