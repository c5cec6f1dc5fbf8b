//! `ekphrasis serve`: the JSON API (every endpoint and every bad input), the bounded
//! queue (503 when full), views hidden when their model is missing, and the page driven
//! in headless Chromium through WebDriver (upload, paint, one seed, browse; no console
//! errors). Tiny exports are trained once for all the tests of this file.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Exported models, a unified run and a cycle report, made once.
struct Fixture {
    _dir: tempfile::TempDir,
    models: PathBuf,
    unified: PathBuf,
    report: PathBuf,
    images: Vec<PathBuf>,
    test_ids: usize,
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed: {err}");
    out
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = |n: &str| d.join(n).to_str().unwrap().to_string();
        let data = tiny_dataset(d);
        // The captioner writes whole paragraphs: decoding stops only at max_tokens or
        // the end token, and a few dozen steps do not yet teach it to end early.
        let cap_cfg = write(d, "cap.yaml", format!(
            "data: {}\nseed: 3\nmodel: {{encoder: cnn, channels: [8, 16], dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, dropout: 0.1, image_size: 32}}\ntrain: {{steps: 40, batch_size: 4, lr: 3.0e-3, warmup: 2, eval_every: 40, log_every: 10}}\nloss: {{label_smoothing: 0.1}}\neval: {{subset: 2, decode: {{strategy: greedy, max_tokens: 255}}}}\nbest: {{name: loss}}\n",
            data.display()
        ));
        for (stage, cfg, run) in [
            ("captioner", cap_cfg, "cap_run"),
            ("clip", clip_cfg(d, &data), "clip_run"),
            ("probe", probe_cfg(d, &data), "probe_run"),
            ("t2i", t2i_cfg(d, &data), "t2i_run"),
        ] {
            ok(&["train", stage, "-c", &cfg, "--run", &p(run), "--device", "cpu"]);
        }
        let unified_cfg = write(d, "unified.yaml", format!(
            "data: {}\nseed: 0\nmodel:\n  latent_dim: 32\n  memory_tokens: 4\n  captioner: {{encoder: cnn, channels: [8, 16], dim: 32, layers: 1, heads: 2, mlp: 64, max_len: 256, image_size: 32}}\n  generator: {{z_dim: 32, channels: [16, 16, 8], attention_max_side: 8}}\n  beta_warmup: 2\n  facts: true\n  fact_weight: 10\n  caption_memory: false\ntrain: {{steps: 4, batch_size: 8, lr: 1.0e-3, warmup: 1, eval_every: 4}}\neval:\n  clip: {}\n  probe: {}\n  samples: 6\n  decode: {{strategy: greedy, max_tokens: 24}}\nbest: {{name: attribute_agreement, higher_is_better: true}}\n",
            data.display(), p("clip_run"), p("probe_run")
        ));
        ok(&["train", "unified", "-c", &unified_cfg, "--run", &p("unified_run"), "--device", "cpu"]);
        for (run, name, kind) in [("cap_run", "captioner", "captioner"), ("t2i_run", "t2i", "t2i")] {
            ok(&["export", "--run", &p(run), "--out", &p(&format!("models/{name}")), "--kind", kind, "--device", "cpu"]);
        }
        ok(&[
            "cycle", "--captioner", &p("cap_run"), "--generator", &p("t2i_run"), "--clip",
            &p("clip_run"), "--probe", &p("probe_run"), "--split", "test", "--out",
            &p("report"), "--device", "cpu",
        ]);
        let mut images: Vec<PathBuf> = std::fs::read_dir(data.join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        images.sort();
        let test_ids = std::fs::read_to_string(data.join("splits/test_ids.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        Fixture {
            models: d.join("models"),
            unified: d.join("unified_run"),
            report: d.join("report"),
            images,
            test_ids,
            _dir: dir,
        }
    })
}

/// A running `ekphrasis serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` on a free loopback port with `extra` flags; waits for its address.
fn serve(models: &Path, extra: &[&str]) -> Server {
    let mut child = bin()
        .args([
            "serve",
            "--models",
            models.to_str().unwrap(),
            "--port",
            "0",
            "--device",
            "cpu",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting ekphrasis serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve printed {line:?}, not its address"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    Server { child, base }
}

fn full(f: &Fixture, extra: &[&str]) -> Server {
    let mut args = vec![
        "--unified",
        f.unified.to_str().unwrap(),
        "--report",
        f.report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serve(&f.models, &args)
}

/// (status, JSON body) of a request; error statuses are answers too.
fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value, Option<String>) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("retry-after").map(str::to_string);
    let text = resp.into_string().unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: the body is not JSON: {text:?}"));
    (status, body, retry)
}

/// Fails unless the answer is `status` with a JSON error message holding `needle`.
fn refused(r: Result<ureq::Response, ureq::Error>, status: u16, needle: &str) {
    let (s, body, _) = answer(r);
    assert_eq!(s, status, "{body}");
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
}

/// Sends `head` on a raw connection and returns what the server answers.
fn raw_request(base: &str, head: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn png_side(data_url: &str) -> u32 {
    use base64::Engine;
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| {
            panic!(
                "not a PNG data URL: {}",
                &data_url[..40.min(data_url.len())]
            )
        });
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let img = image::load_from_memory(&bytes).expect("a PNG that decodes");
    assert_eq!(img.width(), img.height());
    img.width()
}

#[test]
fn every_endpoint_answers_and_every_bad_input_is_a_json_4xx() {
    let f = fixture();
    let s = full(f, &["--max-upload-mib", "1", "--max-text-chars", "2000"]);
    let url = |p: &str| format!("{}{p}", s.base);
    let image = std::fs::read(&f.images[0]).unwrap();

    let (st, h, _) = answer(ureq::get(&url("/healthz")).call());
    assert_eq!(st, 200);
    assert_eq!(h["status"], "ok");
    for v in ["describe", "reconstruct", "paint", "one_seed", "browse"] {
        assert_eq!(h["views"][v], true, "{v}: {h}");
    }
    let page = ureq::get(&url("/")).call().unwrap();
    assert!(page.content_type().starts_with("text/html"));
    let html = page.into_string().unwrap();
    assert!(
        html.contains("id=\"view-describe\"")
            && !html.contains("http://")
            && !html.contains("https://"),
        "the page must carry no external asset"
    );

    // Describe: the paragraph, and the picture painted back from it.
    let (st, c, _) = answer(ureq::post(&url("/api/caption?strategy=greedy")).send_bytes(&image));
    assert_eq!(st, 200, "{c}");
    let caption = c["caption"].as_str().unwrap();
    assert!(!caption.trim().is_empty());
    assert_eq!(c["words"], caption.split_whitespace().count());
    assert_eq!(png_side(c["reconstruction"].as_str().unwrap()), 32);
    let (_, beam, _) = answer(
        ureq::post(&url(
            "/api/caption?strategy=beam&beam=2&no_repeat_ngram=3&reconstruct=false",
        ))
        .send_bytes(&image),
    );
    assert!(
        beam["caption"].is_string() && beam["reconstruction"].is_null(),
        "{beam}"
    );
    // The same image and settings give the same paragraph.
    let (_, again, _) = answer(ureq::post(&url("/api/caption?strategy=greedy")).send_bytes(&image));
    assert_eq!(again["caption"], c["caption"]);

    refused(
        ureq::post(&url("/api/caption")).send_bytes(b""),
        400,
        "empty",
    );
    refused(
        ureq::post(&url("/api/caption")).send_bytes(b"not an image at all"),
        422,
        "not a readable image",
    );
    let mut truncated = image.clone();
    truncated.truncate(image.len() / 2);
    refused(
        ureq::post(&url("/api/caption")).send_bytes(&truncated),
        422,
        "uploaded image",
    );
    // A body declared over the limit is refused from its headers, before it is sent.
    let raw = raw_request(
        &s.base,
        "POST /api/caption HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("larger than 1048576 bytes"), "{raw}");
    refused(
        ureq::post(&url("/api/caption?strategy=nonsense")).send_bytes(&image),
        400,
        "strategy",
    );
    refused(
        ureq::post(&url("/api/caption?strategy=sample")).send_bytes(&image),
        400,
        "greedy or beam",
    );
    refused(
        ureq::post(&url("/api/caption?beam=0")).send_bytes(&image),
        400,
        "beam 0",
    );
    refused(
        ureq::post(&url("/api/caption?no_repeat_ngram=99")).send_bytes(&image),
        400,
        "no_repeat_ngram",
    );
    refused(
        ureq::post(&url("/api/caption?colour=red")).send_bytes(&image),
        400,
        "unknown field",
    );

    // Paint: n pictures, the same for the same seed.
    let body = json!({"text": caption, "n": 3, "seed": 7});
    let (st, d, _) = answer(ureq::post(&url("/api/draw")).send_json(body.clone()));
    assert_eq!(st, 200, "{d}");
    let imgs = d["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 3);
    for i in imgs {
        assert_eq!(png_side(i.as_str().unwrap()), 32);
    }
    let (_, d2, _) = answer(ureq::post(&url("/api/draw")).send_json(body));
    assert_eq!(
        d["images"], d2["images"],
        "the same seed paints the same pictures"
    );
    let (_, d3, _) = answer(ureq::post(&url("/api/draw")).send_json(json!({"text": caption})));
    assert_eq!(d3["images"].as_array().unwrap().len(), 4, "n defaults to 4");

    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"text": "   "})),
        400,
        "empty",
    );
    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"text": "a".repeat(2001)})),
        413,
        "2001 characters",
    );
    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"text": "a boat", "n": 0})),
        400,
        "n 0",
    );
    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"text": "a boat", "n": 1000})),
        400,
        "n 1000",
    );
    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"text": "a boat", "seed": -1})),
        400,
        "seed -1",
    );
    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"text": "a boat", "model": "x"})),
        400,
        "unknown field",
    );
    refused(
        ureq::post(&url("/api/draw")).send_json(json!({"n": 2})),
        400,
        "text",
    );
    refused(
        ureq::post(&url("/api/draw"))
            .set("content-type", "application/json")
            .send_string("{not json"),
        400,
        "body",
    );
    refused(
        ureq::post(&url("/api/draw")).send_string("text=hello"),
        415,
        "body",
    );

    // One seed: an image and a paragraph, the same for the same seed.
    let (st, g, _) = answer(ureq::post(&url("/api/generate")).send_json(json!({"seed": 5})));
    assert_eq!(st, 200, "{g}");
    assert_eq!(png_side(g["image"].as_str().unwrap()), 32);
    assert!(g["caption"].is_string());
    let (_, g2, _) = answer(ureq::post(&url("/api/generate")).send_json(json!({"seed": 5})));
    assert_eq!(g["caption"], g2["caption"]);
    assert_eq!(g["image"], g2["image"]);
    refused(
        ureq::post(&url("/api/generate")).send_json(json!({"seed": -3})),
        400,
        "body",
    );

    // Browse: every test image, and a search by caption words.
    let (st, b, _) = answer(ureq::get(&url("/api/browse?limit=100")).call());
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["total"], f.test_ids);
    let first = &b["examples"][0];
    let word = first["caption"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_lowercase();
    let word: String = word.chars().filter(|c| c.is_alphanumeric()).collect();
    let (_, hits, _) = answer(ureq::get(&url(&format!("/api/browse?q={word}&limit=100"))).call());
    let n = hits["total"].as_u64().unwrap();
    assert!(n >= 1 && n <= f.test_ids as u64);
    for e in hits["examples"].as_array().unwrap() {
        let text = format!("{} {} {}", e["id"], e["caption"], e["generated"]).to_lowercase();
        assert!(text.contains(&word), "{word} not in {text}");
    }
    let (_, none, _) = answer(ureq::get(&url("/api/browse?q=zzzqqqxxx")).call());
    assert_eq!(none["total"], 0);
    let (_, paged, _) = answer(ureq::get(&url("/api/browse?limit=1&offset=1")).call());
    assert_eq!(paged["examples"].as_array().unwrap().len(), 1);
    assert_eq!(paged["examples"][0]["id"], b["examples"][1]["id"]);
    refused(
        ureq::get(&url("/api/browse?limit=0")).call(),
        400,
        "limit 0",
    );
    refused(
        ureq::get(&url("/api/browse?offset=-1")).call(),
        400,
        "query",
    );

    // Unknown endpoints and methods.
    refused(
        ureq::get(&url("/api/nothing")).call(),
        404,
        "no such endpoint",
    );
    refused(ureq::get(&url("/api/draw")).call(), 405, "method");
    // The server is still up after all of it.
    assert_eq!(answer(ureq::get(&url("/healthz")).call()).0, 200);
}

#[test]
fn a_full_queue_answers_503_at_once_and_the_server_recovers() {
    let f = fixture();
    let s = full(f, &["--queue", "1"]);
    let url = format!("{}/api/draw", s.base);
    let text = "A large red house stands in the bottom left under a dusk sky. ".repeat(4);
    let clients = 24;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, text, barrier) = (url.clone(), text.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let t0 = Instant::now();
                let (st, body, retry) =
                    answer(ureq::post(&url).send_json(json!({"text": text, "n": 16})));
                (st, body, retry, t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    let done = results.iter().filter(|r| r.0 == 200).count();
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 503),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(
        !busy.is_empty(),
        "{clients} simultaneous requests into a queue of 1 must overflow"
    );
    assert!(done >= 1);
    for (_, body, retry, took) in busy {
        assert!(body["error"].as_str().unwrap().contains("busy"));
        assert_eq!(retry.as_deref(), Some("1"), "a 503 says when to come back");
        assert!(
            *took < Duration::from_secs(5),
            "a 503 is answered at once, not after waiting"
        );
    }
    let (st, _, _) = answer(ureq::post(&url).send_json(json!({"text": text, "n": 1})));
    assert_eq!(st, 200, "the server serves again once the burst is over");
}

#[test]
fn a_request_slower_than_the_timeout_is_answered_504() {
    let f = fixture();
    let s = full(f, &["--timeout", "1"]);
    // Headers promise 100 bytes; 10 arrive, then nothing.
    let t0 = Instant::now();
    let raw = raw_request(
        &s.base,
        "POST /api/caption HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");
    assert!(raw.contains("longer than 1 s"), "{raw}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        answer(ureq::get(&format!("{}/healthz", s.base)).call()).0,
        200
    );
}

#[test]
fn missing_models_hide_their_views_and_nothing_to_serve_is_a_clean_error() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    // Only a generator, and a folder whose manifest names an unknown kind.
    let only = dir.path().join("models");
    std::fs::create_dir_all(only.join("odd")).unwrap();
    copy_dir(&f.models.join("t2i"), &only.join("t2i"));
    let manifest = std::fs::read_to_string(only.join("t2i/manifest.json")).unwrap();
    std::fs::write(
        only.join("odd/manifest.json"),
        manifest.replacen("\"kind\": \"t2i\"", "\"kind\": \"hologram\"", 1),
    )
    .unwrap();
    let s = serve(&only, &[]);
    let (_, h, _) = answer(ureq::get(&format!("{}/healthz", s.base)).call());
    assert_eq!(h["views"]["paint"], true);
    for v in ["describe", "reconstruct", "one_seed", "browse"] {
        assert_eq!(h["views"][v], false, "{v}: {h}");
    }
    assert!(h["skipped"].to_string().contains("odd"), "{h}");
    refused(
        ureq::post(&format!("{}/api/caption", s.base)).send_bytes(b"x"),
        404,
        "describe view is off",
    );
    refused(
        ureq::post(&format!("{}/api/generate", s.base)).send_json(json!({})),
        404,
        "one-seed view is off",
    );
    refused(
        ureq::get(&format!("{}/api/browse", s.base)).call(),
        404,
        "browse view is off",
    );
    drop(s);

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.to_str().unwrap();
    assert_clean_error(
        &["serve", "--models", e, "--port", "0", "--device", "cpu"],
        "nothing to serve",
    );
    assert_clean_error(
        &["serve", "--models", "/no/such/folder", "--port", "0"],
        "no such folder",
    );
    let m = f.models.to_str().unwrap();
    assert_clean_error(
        &[
            "serve", "--models", m, "--queue", "0", "--port", "0", "--device", "cpu",
        ],
        "--queue 0",
    );
    assert_clean_error(
        &["serve", "--models", m, "--timeout", "0", "--port", "0"],
        "--timeout 0",
    );
    assert_clean_error(
        &["serve", "--models", m, "--max-images", "0", "--port", "0"],
        "--max-images 0",
    );
    assert_clean_error(
        &[
            "serve",
            "--models",
            m,
            "--host",
            "256.1.1.1",
            "--port",
            "0",
            "--device",
            "cpu",
        ],
        "binding 256.1.1.1",
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A minimal WebDriver client (W3C protocol, chromedriver) over ureq.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &str, chromedriver: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,1100"]},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (st, v, _) = answer(ureq::post(&format!("{base}/session")).send_json(caps));
        assert_eq!(st, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (st, v, _) = answer(
            ureq::post(&format!("{}/session/{}{path}", self.base, self.session)).send_json(body),
        );
        assert_eq!(st, 200, "{path}: {v}");
        v["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let (st, v, _) =
            answer(ureq::get(&format!("{}/session/{}{path}", self.base, self.session)).call());
        assert_eq!(st, 200, "{path}: {v}");
        v["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.post(&format!("/element/{e}/click"), json!({}));
    }

    fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    /// Waits until `script` returns true (a page that works answers within seconds).
    fn wait(&self, script: &str, what: &str) {
        let t0 = Instant::now();
        while self.js(script) != json!(true) {
            let errors = self.js("return window.__errors");
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; page errors {errors}; status {}",
                self.js("return document.body.innerText.slice(0, 800)")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let b64 = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| {
        std::process::Command::new("which")
            .arg(n)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    })
}

/// The page in headless Chromium: describe an uploaded image (the API's paragraph and a
/// reconstruction that decodes), paint N pictures, one seed, browse; no console error.
/// With EKPHRASIS_SCREENSHOT_MODELS (and _UNIFIED, _REPORT, _IMAGE) it drives the demo
/// exports instead and writes one screenshot per view to EKPHRASIS_SCREENSHOTS.
#[test]
fn the_page_works_in_headless_chromium() {
    let (Some(chromium), Some(driver)) = (
        find(&["chromium", "chromium-browser", "google-chrome"]),
        find(&["chromedriver"]),
    ) else {
        eprintln!("\n*** SKIPPED: no chromium + chromedriver on this machine; the page was not driven ***\n");
        return;
    };
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let shots = var("EKPHRASIS_SCREENSHOTS");
    let (server, image) = match var("EKPHRASIS_SCREENSHOT_MODELS") {
        Some(models) => {
            let mut extra = vec![];
            let unified = var("EKPHRASIS_SCREENSHOT_UNIFIED");
            let report = var("EKPHRASIS_SCREENSHOT_REPORT");
            if let Some(u) = &unified {
                extra.extend(["--unified", u.to_str().unwrap()]);
            }
            if let Some(r) = &report {
                extra.extend(["--report", r.to_str().unwrap()]);
            }
            (
                serve(&models, &extra),
                var("EKPHRASIS_SCREENSHOT_IMAGE").expect("EKPHRASIS_SCREENSHOT_IMAGE"),
            )
        }
        None => {
            let f = fixture();
            (full(f, &[]), f.images[1].clone())
        }
    };
    if let Some(dir) = &shots {
        std::fs::create_dir_all(dir).unwrap();
    }
    let shot = |b: &Browser, name: &str| {
        if let Some(dir) = &shots {
            b.screenshot(&dir.join(format!("{name}.png")));
        }
    };
    let b = Browser::start(&chromium, &driver);
    b.post("/url", json!({"url": server.base}));
    b.wait(
        "return document.getElementById('status').textContent !== 'Loading…'",
        "the page to start",
    );
    let on = |tab: &str| {
        b.js(&format!(
            "return document.querySelector('[data-view={tab}]').hidden"
        )) == json!(false)
    };
    let demo = shots.is_some() && var("EKPHRASIS_SCREENSHOT_MODELS").is_some();
    for tab in ["describe", "paint", "seed", "browse"] {
        // The tiny fixture has every model; the demo exports may lack the unified run.
        assert!(
            on(tab) || (demo && tab != "describe" && tab != "paint"),
            "{tab} tab hidden"
        );
    }

    // Describe: upload through the file input.
    let input = b.element("#describe-file");
    b.post(
        &format!("/element/{input}/value"),
        json!({"text": image.canonicalize().unwrap().to_str().unwrap()}),
    );
    b.wait(
        "return document.getElementById('describe-caption').textContent.length > 0",
        "the paragraph",
    );
    b.wait("const i = document.getElementById('describe-recon'); return i.complete && i.naturalWidth > 0", "the reconstruction");
    // The page shows the paragraph the API gives for the same image and settings (what
    // a tiny test model writes is not yet words, so its length is not checked in words).
    let shown = b.js("return document.getElementById('describe-caption').textContent");
    let setting = |id: &str| b.js(&format!("return document.getElementById('{id}').value"));
    let mut query = vec!["reconstruct=false".to_string()];
    if let Some(s) = setting("describe-strategy")
        .as_str()
        .filter(|s| !s.is_empty())
    {
        query.push(format!("strategy={s}"));
        if s == "beam" {
            query.push(format!(
                "beam={}",
                setting("describe-beam").as_str().unwrap()
            ));
        }
    }
    if let Some(n) = setting("describe-ngram").as_str().filter(|n| *n != "0") {
        query.push(format!("no_repeat_ngram={n}"));
    }
    let (_, api, _) = answer(
        ureq::post(&format!("{}/api/caption?{}", server.base, query.join("&")))
            .send_bytes(&std::fs::read(&image).unwrap()),
    );
    assert_eq!(shown, api["caption"], "the page shows the API's paragraph");
    assert!(
        shown.as_str().unwrap().chars().count() >= 100,
        "the paragraph is {shown}"
    );
    b.wait("const i = document.getElementById('describe-original'); return i.complete && i.naturalWidth > 0", "the original");
    shot(&b, "describe");

    // Paint: N pictures that decode, then a re-roll.
    b.click("[data-view=paint]");
    b.js("document.getElementById('paint-n').value = '3'; return true");
    b.click("#paint-go");
    let three = "const i = [...document.querySelectorAll('.paint-image')]; return i.length === 3 && i.every(x => x.complete && x.naturalWidth > 0)";
    b.wait(three, "three painted pictures");
    let first = b.js("return document.querySelector('.paint-image').src");
    b.click("#paint-reroll");
    b.wait(
        &format!("{three} && document.querySelector('.paint-image').src !== {first}"),
        "re-rolled pictures",
    );
    b.js("document.getElementById('paint-n').value = '4'; return true");
    b.click("#paint-go");
    b.wait("const i = [...document.querySelectorAll('.paint-image')]; return i.length === 4 && i.every(x => x.complete && x.naturalWidth > 0)", "four pictures");
    shot(&b, "paint");

    // One seed.
    if on("seed") {
        b.click("[data-view=seed]");
        b.click("#seed-go");
        b.wait("const i = document.getElementById('seed-image'); return i.complete && i.naturalWidth > 0 && document.getElementById('seed-caption').textContent.length > 0", "the one-seed sample");
        shot(&b, "one_seed");
    }

    // Browse: the report's examples, then a search that narrows them.
    if on("browse") {
        b.click("[data-view=browse]");
        b.wait(
            "return document.querySelectorAll('#browse-rows tr').length > 0",
            "the report's examples",
        );
        b.js("document.getElementById('browse-q').value = 'zzzqqqxxx'; return true");
        b.click("#browse-go");
        b.wait("return document.querySelectorAll('#browse-rows tr').length === 0 && document.getElementById('browse-meta').textContent.startsWith('0 examples')", "an empty search");
        b.js("document.getElementById('browse-q').value = ''; return true");
        b.click("#browse-go");
        b.wait(
            "return document.querySelectorAll('#browse-rows tr').length > 0",
            "the examples again",
        );
        shot(&b, "browse");
    }

    assert_eq!(
        b.js("return window.__errors"),
        json!([]),
        "errors on the page"
    );
    // What the browser itself logged at SEVERE (failed loads, script errors).
    let log = b.post("/se/log", json!({"type": "browser"}));
    let severe: Vec<_> = log
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|e| e["level"] == "SEVERE")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert!(severe.is_empty(), "console errors: {severe:?}");
}
