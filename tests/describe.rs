//! `data describe` against a local mock of an OpenAI-compatible server that answers,
//! fails with 500 and 429, stalls past the timeout, returns malformed JSON, refuses and
//! writes too-short answers: nothing may be lost, and a rerun finishes the job.

mod common;

use common::{bin, run};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

enum Reply {
    Text(String),
    Status(u16, &'static str),
    Stall,
    Raw(&'static str),
    /// A status, extra header lines and a body of our own.
    Body(u16, &'static str, String),
}

struct Mock {
    url: String,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = vec![];
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((
        head,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
    ))
}

fn respond(s: &mut TcpStream, code: u16, extra: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

/// Starts the mock on an ephemeral port; `script(n, body)` picks the reply to request n.
fn start_mock(script: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(vec![]));
    let script = Arc::new(script);
    let (rq, au) = (requests.clone(), auth.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (rq, au, script) = (rq.clone(), au.clone(), script.clone());
            std::thread::spawn(move || {
                let Some((head, body)) = read_request(&mut s) else {
                    return;
                };
                if let Some(l) = head
                    .lines()
                    .find(|l| l.to_lowercase().starts_with("authorization:"))
                {
                    au.lock().unwrap().push(l.to_string());
                }
                let n = rq.fetch_add(1, Ordering::SeqCst);
                match script(n, &body) {
                    Reply::Text(t) => {
                        let v = serde_json::json!({
                            "choices": [{"message": {"role": "assistant", "content": t}}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 10},
                        });
                        respond(&mut s, 200, "", &v.to_string());
                    }
                    Reply::Status(code, extra) => respond(&mut s, code, extra, "{\"error\":\"x\"}"),
                    Reply::Stall => std::thread::sleep(Duration::from_secs(3)),
                    Reply::Raw(b) => respond(&mut s, 200, "", b),
                    Reply::Body(code, extra, b) => respond(&mut s, code, extra, &b),
                }
            });
        }
    });
    Mock {
        url,
        requests,
        auth,
    }
}

/// The synthetic id named in a request (the metadata title carries it).
fn id_in(body: &str) -> String {
    let i = body.find("synth_").expect("request names its image");
    body[i..i + 11].to_string()
}

fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

/// The scripted server: the first four requests fail in four ways; image 3 is always
/// refused; image 5 always gets a too-short answer; request 4 is short once.
fn flaky_server() -> Mock {
    start_mock(|n, body| {
        let id = id_in(body);
        if id == "synth_00003" {
            return Reply::Text("I'm sorry, but I can't describe this image.".into());
        }
        if id == "synth_00005" {
            return Reply::Text(format!("Short text for {id}. {}", words(20)));
        }
        match n {
            0 => Reply::Status(500, ""),
            1 => Reply::Status(429, "Retry-After: 0\r\n"),
            2 => Reply::Stall,
            3 => Reply::Raw("{\"choices\": [{\"mess"),
            4 if !body.contains("Rewrite it") => Reply::Text(format!("Brief {id}. {}", words(30))),
            _ => Reply::Text(format!("Description of {id}. {}", words(150))),
        }
    })
}

fn synth(dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("data");
    let (ok, _, err) = run(&[
        "data",
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--n",
        &n.to_string(),
        "--size",
        "16",
    ]);
    assert!(ok, "{err}");
    data
}

fn describe(data: &Path, url: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "data",
        "describe",
        "--data",
        data.to_str().unwrap(),
        "--endpoint",
        url,
        "--model",
        "mock-vlm",
        "--api-key-env",
        "EKPHRASIS_TEST_KEY",
        "--timeout",
        "1",
        "--backoff",
        "0.01",
        "--concurrency",
        "2",
    ];
    args.extend_from_slice(extra);
    let out = bin()
        .args(&args)
        .env("EKPHRASIS_TEST_KEY", "sekrit-key")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn journal(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("captions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn flaky_server_loses_nothing_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 12);
    let original: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(data.join("captions.json")).unwrap()).unwrap();
    let mock = flaky_server();

    // A trial of 4 images rides out the 500, the 429, the stall and the malformed answer.
    let (ok, out, err) = describe(&data, &mock.url, &["--limit", "4"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(journal(&data).len(), 4, "{err}");
    assert!(
        err.contains("HTTP 500") && err.contains("HTTP 429"),
        "{err}"
    );
    assert!(err.contains("malformed JSON"), "{err}");

    // The rerun skips finished images and describes the rest.
    let (ok, out, err) = describe(&data, &mock.url, &[]);
    assert!(ok, "{out}\n{err}");
    let lines = journal(&data);
    assert_eq!(lines.len(), 12, "each image answered exactly once: {err}");
    let by_id: BTreeMap<String, &serde_json::Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap().to_string(), l))
        .collect();
    assert_eq!(by_id.len(), 12);
    assert_eq!(by_id["synth_00003"]["status"], "refused");
    assert_eq!(by_id["synth_00005"]["status"], "length");
    assert_eq!(by_id["synth_00005"]["asks"], 3);

    let captions: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(data.join("captions.json")).unwrap()).unwrap();
    assert_eq!(
        captions.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (id, text) in &captions {
        match id.as_str() {
            // A refusal is recorded, never stored as a caption.
            "synth_00003" => assert_eq!(text, &original[id]),
            "synth_00005" => assert!(text.starts_with("Short text for synth_00005")),
            _ => {
                assert!(
                    text.starts_with(&format!("Description of {id}.")),
                    "{id}: {text}"
                );
                assert!((100..=200).contains(&text.split_whitespace().count()));
            }
        }
    }
    // The short first answer was asked again, within the conversation.
    assert!(lines.iter().any(|l| l["asks"] == 2), "{lines:?}");

    // The key went to the server and nowhere else.
    assert!(mock
        .auth
        .lock()
        .unwrap()
        .iter()
        .all(|a| a.ends_with("Bearer sekrit-key")));
    for entry in std::fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).to_string();
            assert!(!text.contains("sekrit"), "key leaked into {}", p.display());
        }
    }
    assert!(!err.contains("sekrit") && !out.contains("sekrit"));

    // A third run has nothing to do (refusals are kept unless --retry-refused).
    let before = mock.requests.load(Ordering::SeqCst);
    let (ok, out, err) = describe(&data, &mock.url, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("described 0 images"), "{out}");
    assert_eq!(mock.requests.load(Ordering::SeqCst), before);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("describe_report.json")).unwrap()).unwrap();
    assert_eq!(report["described_captions"], 11);
}

#[test]
fn unauthorized_stops_cleanly_and_dry_run_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 6);
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(data.join("captions.json")).unwrap()).unwrap()
    };
    let original = read();
    let mock = start_mock(|_, _| Reply::Status(401, ""));

    let (ok, out, _) = describe(&data, &mock.url, &["--dry-run"]);
    assert!(ok);
    assert!(out.contains("/v1/chat/completions") && out.contains("Bearer ***"));
    assert!(out.contains("Title: Synthetic scene") && !out.contains("sekrit"));
    assert_eq!(mock.requests.load(Ordering::SeqCst), 0);

    let (ok, _, err) = describe(&data, &mock.url, &[]);
    assert!(
        !ok && err.contains("HTTP 401") && !err.contains("panicked"),
        "{err}"
    );
    // At most the requests in flight were made, and nothing replaced a caption.
    assert!(mock.requests.load(Ordering::SeqCst) <= 2);
    assert_eq!(read(), original);
}

#[test]
fn ctrl_c_keeps_every_finished_answer_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 30);
    let mock = start_mock(|_, body| {
        std::thread::sleep(Duration::from_millis(150));
        Reply::Text(format!("Description of {}. {}", id_in(body), words(120)))
    });
    let d = data.to_str().unwrap().to_string();
    let child = bin()
        .args([
            "data",
            "describe",
            "--data",
            &d,
            "--endpoint",
            &mock.url,
            "--model",
            "m",
            "--concurrency",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once a few answers are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mock.requests.load(Ordering::SeqCst) < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let answered = mock.requests.load(Ordering::SeqCst);
    let kept = journal(&data).len();
    assert!(kept < 30, "the interrupt stopped new requests");
    // Every answer the server gave was journaled (none in flight were dropped).
    assert_eq!(kept, answered, "{err}");

    let (ok, out, err) = describe(&data, &mock.url, &[]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{kept} were done before")), "{out}");
    assert_eq!(journal(&data).len(), 30);
}

/// What a server does wrong, in four ways, each a clean error: an error body echoing the
/// API key (redacted everywhere), a redirect, an endpoint that cannot work, and answers
/// that all fail (too large to keep).
#[test]
fn echoed_keys_redirects_bad_urls_and_total_failure_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 4);
    let journal_text = || std::fs::read_to_string(data.join("captions.jsonl")).unwrap_or_default();

    let echo =
        start_mock(|_, _| Reply::Body(401, "", "{\"error\": \"invalid key sekrit-key\"}".into()));
    let (ok, out, err) = describe(&data, &echo.url, &["--retries", "0"]);
    assert!(!ok);
    assert!(
        !err.contains("sekrit-key") && !out.contains("sekrit-key"),
        "{err}"
    );
    assert!(err.contains("[redacted]"), "{err}");
    assert!(!journal_text().contains("sekrit-key"));

    let redirect = start_mock(|_, _| {
        Reply::Status(307, "Location: http://127.0.0.1:9/v1/chat/completions\r\n")
    });
    let (ok, _, err) = describe(&data, &redirect.url, &["--retries", "3"]);
    assert!(!ok && err.contains("HTTP 307 redirect"), "{err}");
    // One request per worker (--concurrency 2) before the stop; a retry would send more.
    assert!(
        redirect.requests.load(Ordering::SeqCst) <= 2,
        "a redirect is not retried"
    );

    let t0 = std::time::Instant::now();
    let (ok, _, err) = describe(&data, "file:///etc", &["--retries", "5"]);
    assert!(!ok && err.contains("check --endpoint"), "{err}");
    assert!(
        !err.contains("retry 1/5"),
        "a bad URL is not retried: {err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a bad URL is not retried"
    );

    let huge = start_mock(|_, _| {
        Reply::Body(200, "", format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20)))
    });
    let (ok, _, err) = describe(&data, &huge.url, &["--retries", "0"]);
    assert!(
        !ok && err.contains("every one of the 4 requests failed"),
        "{err}"
    );
    assert!(journal_text().contains("larger than 1024 KiB"));
}
