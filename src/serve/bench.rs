//! `ekphrasis bench serve`: the latency of describe and paint, and a soak of concurrent
//! clients, against a server started in this process on a free loopback port.

use super::{bind, ServeOptions};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ServeBench {
    pub serve: ServeOptions,
    /// The image the describe requests upload.
    pub image: Vec<u8>,
    /// Timed requests per endpoint (after a warm-up of 3).
    pub requests: usize,
    pub clients: usize,
    pub seconds: f64,
    /// The soak fails when the server's resident memory grows by more than this.
    pub rss_bound_mb: f64,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Resident memory of this process (server included), MB.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 0.5),
        "p90_ms": percentile(&ms, 0.9),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

/// Times `requests` calls of `call` after 3 untimed ones; each must succeed.
fn timed(requests: usize, mut call: impl FnMut() -> Result<()>) -> Result<Value> {
    for _ in 0..3 {
        call()?;
    }
    let mut ms = vec![];
    for _ in 0..requests {
        let t0 = Instant::now();
        call()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(summary(ms))
}

/// One request's status code (0 when the connection itself failed).
fn status(r: Result<ureq::Response, ureq::Error>) -> u16 {
    match r {
        Ok(resp) => {
            // Read the body so the connection is reused and the work is really done.
            let _ = resp.into_string();
            200
        }
        Err(ureq::Error::Status(code, _)) => code,
        Err(ureq::Error::Transport(_)) => 0,
    }
}

pub fn run(b: &ServeBench, device: tch::Device) -> Result<Value> {
    let server = bind(&b.serve, device)?;
    let base = format!("http://{}", server.addr);
    STOP.store(false, Ordering::SeqCst);
    let handle = std::thread::spawn(move || server.run_until(&STOP));
    let result = measure(b, &base);
    STOP.store(true, Ordering::SeqCst);
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    result
}

fn measure(b: &ServeBench, base: &str) -> Result<Value> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let health: Value = agent
        .get(&format!("{base}/healthz"))
        .call()
        .context("GET /healthz")?
        .into_json()?;
    let views = &health["views"];
    if views["describe"] != true || views["paint"] != true {
        bail!("bench serve needs an exported captioner and generator under --models");
    }
    let caption_url = format!("{base}/api/caption?strategy=greedy&reconstruct=false");
    let mut text = String::new();
    let describe = timed(b.requests, || {
        let v: Value = agent
            .post(&caption_url)
            .send_bytes(&b.image)
            .context("POST /api/caption")?
            .into_json()?;
        text = v["caption"].as_str().unwrap_or_default().to_string();
        Ok(())
    })?;
    let cycle_url = format!("{base}/api/caption?strategy=greedy&reconstruct=true");
    let describe_cycle = timed(b.requests, || {
        agent
            .post(&cycle_url)
            .send_bytes(&b.image)
            .context("POST /api/caption (with reconstruction)")?;
        Ok(())
    })?;
    if text.trim().is_empty() {
        text = "A red house stands under a blue sky.".into();
    }
    let draw_url = format!("{base}/api/draw");
    let draw_body = json!({ "text": text, "n": 4, "seed": 0 });
    let paint = timed(b.requests, || {
        agent
            .post(&draw_url)
            .send_json(draw_body.clone())
            .context("POST /api/draw")?;
        Ok(())
    })?;

    // The soak: every client alternates describe and paint as fast as it is answered.
    let rss_before = rss_mb();
    let counts: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs_f64(b.seconds);
    let mut threads = vec![];
    for c in 0..b.clients {
        let agent = agent.clone();
        let counts = counts.clone();
        let (image, caption_url, draw_url, draw_body) = (
            b.image.clone(),
            caption_url.clone(),
            draw_url.clone(),
            draw_body.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = c;
            while Instant::now() < deadline {
                let code = if i % 2 == 0 {
                    status(agent.post(&caption_url).send_bytes(&image))
                } else {
                    status(agent.post(&draw_url).send_json(draw_body.clone()))
                };
                *counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(code)
                    .or_default() += 1;
                if code == 503 {
                    // What a polite client does with Retry-After.
                    std::thread::sleep(Duration::from_millis(50));
                }
                i += 1;
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let rss_after = rss_mb();
    let counts = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let errors: u64 = counts
        .iter()
        .filter(|(c, _)| **c != 200 && **c != 503)
        .map(|(_, n)| n)
        .sum();
    let growth = rss_after - rss_before;
    Ok(json!({
        "describe_greedy": describe,
        "describe_with_reconstruction": describe_cycle,
        "paint_4": paint,
        "soak": {
            "clients": b.clients,
            "seconds": b.seconds,
            "status_counts": counts.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "errors_other_than_503": errors,
            "rss_before_mb": rss_before,
            "rss_after_mb": rss_after,
            "rss_growth_mb": growth,
            "rss_bound_mb": b.rss_bound_mb,
            "pass": errors == 0 && growth <= b.rss_bound_mb,
        },
        "threads": tch::get_num_threads(),
    }))
}
