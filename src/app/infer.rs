//! The inference commands: `caption`, `draw`, `generate` and `cycle` over runs or
//! exports, `embed` and `retrieve`.

use super::*;

pub(super) fn run(cli: &Cli, device: tch::Device) -> Result<()> {
    match &cli.command {
        Command::Generate(a) => {
            use crate::stages::unified::{generate, parse_seeds};
            let seeds = match &a.seeds {
                Some(spec) => parse_seeds(spec)?,
                None => vec![cli.seed.unwrap_or(0)],
            };
            for s in generate(&a.run, &seeds, &a.out, a.scene, device)? {
                println!("seed {}: {}", s.seed, s.caption);
            }
            println!(
                "wrote {} images and metadata.json to {}",
                seeds.len(),
                a.out.display()
            );
        }
        Command::Draw(a) => {
            // Checked before any model loads; the pictures are held in memory at once.
            const MAX_PER_TEXT: i64 = 1024;
            if !(1..=MAX_PER_TEXT).contains(&a.n) {
                bail!("--n {}: give 1 to {MAX_PER_TEXT} images per text", a.n);
            }
            let texts = match (&a.text, &a.captions) {
                (Some(t), None) => vec![t.clone()],
                (None, Some(csv)) => crate::data::ingest::read_caption_column(csv)?,
                _ => bail!("give either a TEXT argument or --captions FILE.csv"),
            };
            let sampling = t2i::SamplingOverrides {
                sampler: a.sampler,
                sample_steps: a.sample_steps,
                guidance: a.guidance,
                eta: a.eta,
            };
            let req = t2i::DrawRequest {
                texts: &texts,
                n: a.n,
                seed: cli.seed.unwrap_or(0) as i64,
                sampling: &sampling,
            };
            let images = match (&a.run, &a.model) {
                (Some(run), _) => t2i::draw(run, &req, device)?,
                (None, Some(dir)) => exported::draw(dir, &req, device)?,
                (None, None) => bail!("give --run RUN or --model EXPORTED"),
            };
            let paths = t2i::write_drawings(&images, a.n, &a.out, a.grid)?;
            println!("wrote {} images to {}", paths.len(), a.out.display());
        }
        Command::Cycle(a) if !a.images.is_empty() => {
            exported::cycle_images(a, cli.seed.unwrap_or(0) as i64, device)?
        }
        Command::Cycle(a) => {
            let args = cycle::CycleArgs {
                captioner: a.captioner.clone(),
                generator: a.generator.clone(),
                clip: a.clip.clone(),
                probe: a.probe.clone(),
                invertible: a.invertible.clone(),
                split: a.split,
                limit: a.limit,
                out: a.out.clone(),
                beside: a.beside.clone(),
                seed: cli.seed.unwrap_or(0),
            };
            let table = cycle::run(&args, device)?;
            for (col, m) in &table {
                println!("{col}");
                print_metrics(m);
            }
            println!("report: {}", a.out.join("index.html").display());
        }
        Command::Caption(CaptionArgs {
            run,
            model,
            images,
            checkpoint,
            decode,
        }) => {
            let captions = match (run, model) {
                (Some(run), _) => {
                    let lc = captioner::load_run(run, checkpoint, device)?;
                    let opts = decode_options(lc.cfg.eval.decode.clone(), decode)?;
                    let t = load_batch(images, lc.cfg.model.image_size as u32)?;
                    captioner::caption_images(&lc.model, &lc.tok, &t, &opts, device, 32)
                }
                (None, Some(dir)) => {
                    let m = ExportedCaptioner::load(dir, device)?;
                    let opts = decode_options(m.decode.clone(), decode)?;
                    let t = load_batch(images, m.manifest.image_size as u32)?;
                    m.caption(&t, &opts, 32)?
                }
                (None, None) => bail!("give --run RUN or --model EXPORTED"),
            };
            for (p, c) in images.iter().zip(captions) {
                println!("{}\t{c}", p.display());
            }
        }
        Command::Embed(a) => exported::embed(a, device)?,
        Command::Retrieve(a) => exported::retrieve(a, device)?,
        _ => unreachable!("app::run dispatches only this module's commands here"),
    }
    Ok(())
}
