//! `data synth`, `data prepare`, `data describe` and `tokenizer train`.

use super::*;

pub(super) fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Data(DataCommand::Synth {
            out,
            n,
            size,
            force,
        }) => {
            let seed = cli.seed.unwrap_or(0);
            eprintln!(
                "rendering {n} synthetic paintings at {size} px into {}",
                out.display()
            );
            let s = crate::scenes::render_dataset(out, *n, *size, seed, *force)?;
            println!(
                "rendered {} images in {:.2} s ({:.0} images/s); splits train/val/test {}/{}/{}; paragraph words min {} mean {:.1} max {}",
                s.n,
                s.seconds,
                s.n as f64 / s.seconds,
                s.splits[0],
                s.splits[1],
                s.splits[2],
                s.words_min,
                s.words_mean,
                s.words_max
            );
        }
        Command::Data(DataCommand::Prepare {
            format,
            src,
            images,
            captions,
            multi,
            size,
            out,
            force,
            splits,
        }) => {
            let opts = crate::data::prepare::PrepareOptions {
                format: *format,
                src: src.clone(),
                images: images.clone(),
                captions: captions.clone(),
                multi: *multi,
                size: *size,
                seed: cli.seed.unwrap_or(0),
                out: out.clone(),
                force: *force,
                splits: splits.clone(),
            };
            let r = crate::data::prepare::prepare(&opts)?;
            println!(
                "prepared {} of {} items into {} (train/val/test {}/{}/{}); rejected: {:?}; non-UTF-8 texts decoded lossily: {}",
                r.kept, r.candidates, out.display(), r.splits[0], r.splits[1], r.splits[2], r.rejected, r.non_utf8_texts
            );
        }
        Command::Data(DataCommand::Describe(a)) => describe(a)?,
        Command::Tokenizer(TokenizerCommand::Train { data, from }) => {
            let cfg: TokenizerConfig = match &cli.config {
                Some(p) => config::load(p, &cli.overrides)?,
                None => TokenizerConfig {
                    vocab_size: 5000,
                    min_frequency: 2,
                    max_len: 256,
                },
            };
            let ds = Dataset::open(data)?;
            let s = build_for_dataset(&ds, &cfg, from.as_deref())?;
            println!(
                "tokenizer: {} tokens in {}; captions average {:.1} tokens (max {}), {} truncated to {}",
                s.vocab_size,
                ds.tokenizer_path().display(),
                s.tokens_mean,
                s.tokens_max,
                s.truncated,
                cfg.max_len
            );
        }
        _ => unreachable!("app::run dispatches only this module's commands here"),
    }
    Ok(())
}

fn describe(a: &crate::cli::DescribeArgs) -> Result<()> {
    use crate::data::vlm::{client::ClientOptions, describe, DescribeOptions};
    let seconds = |s: f64, what: &str| {
        std::time::Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("--{what} {s}: not a number of seconds"))
    };
    let opts = DescribeOptions {
        data: a.data.clone(),
        model: a.model.clone(),
        client: ClientOptions {
            endpoint: a.endpoint.clone(),
            api_key: std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty()),
            timeout: seconds(a.timeout, "timeout")?,
            max_retries: a.retries,
            backoff: seconds(a.backoff, "backoff")?,
        },
        concurrency: a.concurrency,
        min_words: a.min_words,
        max_words: a.max_words,
        max_asks: a.max_asks.max(1),
        max_tokens: a.max_tokens,
        limit: a.limit,
        dry_run: a.dry_run,
        retry_refused: a.retry_refused,
        price_in: a.price_in,
        price_out: a.price_out,
    };
    let s = describe(&opts)?;
    if !a.dry_run {
        println!(
            "described {} images this run ({:?}); {} were done before; captions.json now has {} of {} captions from the model; tokens {} in / {} out, ${:.4}{}",
            s.attempted,
            s.counts,
            s.already_done,
            s.described_captions,
            s.images,
            s.prompt_tokens,
            s.completion_tokens,
            s.cost_usd,
            if s.interrupted { " (interrupted: run again to continue)" } else { "" }
        );
        println!(
            "retrain the tokenizer on the new captions: ekphrasis tokenizer train --data {}",
            a.data.display()
        );
    }
    Ok(())
}
