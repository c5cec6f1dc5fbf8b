//! A TensorBoard event-file writer: scalars, histograms, images (PNG) and text (the text plugin),
//! written as TFRecord-framed `Event` protobufs. Hand-encoded because the few messages
//! needed are small and the Rust crates for this lack the text plugin.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Protobuf encoding of the handful of field types the event format uses.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn message(&mut self, field: u32, m: &Proto) -> &mut Self {
        self.bytes(field, &m.0)
    }
    /// A packed repeated double field.
    fn doubles(&mut self, field: u32, v: &[f64]) -> &mut Self {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(field, &bytes)
    }
}

/// Buckets of a [`EventWriter::histogram`].
const HISTOGRAM_BUCKETS: usize = 30;

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
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
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
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
        let mut ev = Proto::default();
        ev.double(1, now.as_secs_f64()).bytes(3, b"brain.Event:2");
        w.record(&ev.0)?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let len = (data.len() as u64).to_le_bytes();
        out.write_all(&len)?;
        out.write_all(&masked_crc(&len).to_le_bytes())?;
        out.write_all(data)?;
        out.write_all(&masked_crc(data).to_le_bytes())?;
        Ok(())
    }

    fn event(&mut self, step: i64, value: Proto) -> Result<()> {
        let mut summary = Proto::default();
        summary.message(1, &value);
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let mut ev = Proto::default();
        ev.double(1, wall.as_secs_f64())
            .int(2, step)
            .message(5, &summary);
        self.record(&ev.0)
    }

    pub fn scalar(&mut self, tag: &str, step: i64, v: f64) -> Result<()> {
        let mut value = Proto::default();
        value.bytes(1, tag.as_bytes()).float(2, v as f32);
        self.event(step, value)
    }

    /// A histogram of `values` (a weight or gradient tensor) in 30 equal buckets between
    /// its minimum and maximum; non-finite values are left out.
    pub fn histogram(&mut self, tag: &str, step: i64, values: &tch::Tensor) -> Result<()> {
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
        let mut h = Proto::default();
        h.double(1, lo)
            .double(2, hi)
            .double(3, v.len() as f64)
            .double(4, v.iter().sum())
            .double(5, v.iter().map(|x| x * x).sum())
            .doubles(6, &limits)
            .doubles(7, &counts);
        let mut value = Proto::default();
        value.bytes(1, tag.as_bytes()).message(5, &h);
        self.event(step, value)
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
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_raw(width, height, rgb.to_vec())
            .context("image buffer does not match its size")?
            .write_to(&mut png, image::ImageFormat::Png)?;
        let mut img = Proto::default();
        img.int(1, height as i64)
            .int(2, width as i64)
            .int(3, 3)
            .bytes(4, png.get_ref());
        let mut value = Proto::default();
        value.bytes(1, tag.as_bytes()).message(4, &img);
        self.event(step, value)
    }

    /// Text shown by TensorBoard's text plugin (markdown).
    pub fn text(&mut self, tag: &str, step: i64, text: &str) -> Result<()> {
        let mut plugin = Proto::default();
        plugin.bytes(1, b"text");
        let mut meta = Proto::default();
        meta.message(1, &plugin);
        let mut dim = Proto::default();
        dim.int(1, 1);
        let mut shape = Proto::default();
        shape.message(2, &dim);
        let mut tensor = Proto::default();
        tensor
            .int(1, 7)
            .message(2, &shape)
            .bytes(8, text.as_bytes()); // DT_STRING
        let mut value = Proto::default();
        value
            .bytes(1, tag.as_bytes())
            .message(9, &meta)
            .message(8, &tensor);
        self.event(step, value)
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
