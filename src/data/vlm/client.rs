//! A blocking client for OpenAI-compatible `POST /chat/completions`, with timeouts and
//! retries (exponential backoff, `Retry-After` honoured) on 429, 5xx, timeouts, dropped
//! connections and malformed answers.

use serde_json::Value;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1`; `/chat/completions` is appended.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer …` when present; never printed.
    pub api_key: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retries after the first try, for retryable failures only.
    pub max_retries: u32,
    /// First backoff; doubled after each retry, capped at 60 s.
    pub backoff: Duration,
}

/// The part of an answer the describer needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why a request finally failed.
#[derive(Debug)]
pub enum CallError {
    /// Gave up after retries on a transient failure (the last one is described).
    Exhausted { tries: u32, last: String },
    /// A failure retrying cannot fix (400, 401, 404, a redirect, a bad URL, …).
    Fatal(String),
    /// Ctrl-C came while waiting to retry: no further request was sent.
    Interrupted,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Exhausted { tries, last } => {
                write!(f, "gave up after {tries} tries; last failure: {last}")
            }
            CallError::Fatal(msg) => write!(f, "{msg}"),
            CallError::Interrupted => write!(f, "interrupted before a retry"),
        }
    }
}

/// One failed try, and whether (and after how long) to try again.
enum Attempt {
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Fatal(String),
}

pub struct ChatClient {
    agent: ureq::Agent,
    url: String,
    opts: ClientOptions,
}

const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Largest answer read: a 200-word paragraph in JSON is a few KiB.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Sleeps `d` in short slices; false when Ctrl-C came meanwhile.
fn sleep_unless_interrupted(d: Duration) -> bool {
    let end = std::time::Instant::now() + d;
    loop {
        if crate::util::signals::interrupted() {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

impl ChatClient {
    pub fn new(opts: ClientOptions) -> Self {
        // Redirects are reported, not followed: a POST must not be re-sent elsewhere.
        let agent = ureq::AgentBuilder::new()
            .timeout(opts.timeout)
            .redirects(0)
            .build();
        let url = format!("{}/chat/completions", opts.endpoint.trim_end_matches('/'));
        ChatClient { agent, url, opts }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `body` (a chat-completions request), retrying transient failures.
    /// `on_retry` hears about each failed try (for the progress line).
    pub fn complete(
        &self,
        body: &Value,
        mut on_retry: impl FnMut(&str),
    ) -> Result<Completion, CallError> {
        let mut backoff = self.opts.backoff;
        let tries = self.opts.max_retries + 1;
        let mut last = String::new();
        for attempt in 1..=tries {
            match self.try_once(body) {
                Ok(mut c) => {
                    c.text = self.redact(&c.text);
                    return Ok(c);
                }
                Err(Attempt::Fatal(msg)) => return Err(CallError::Fatal(self.redact(&msg))),
                Err(Attempt::Retry { why, after }) => {
                    last = self.redact(&why);
                    if attempt == tries {
                        break;
                    }
                    // Retry-After is the server's explicit wish; otherwise back off.
                    let wait = after.unwrap_or(backoff).min(MAX_BACKOFF);
                    on_retry(&format!(
                        "{last}; retry {attempt}/{} in {:.1}s",
                        self.opts.max_retries,
                        wait.as_secs_f64()
                    ));
                    if !sleep_unless_interrupted(wait) {
                        return Err(CallError::Interrupted);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        Err(CallError::Exhausted { tries, last })
    }

    /// `text` with the API key blanked out: servers echo it in error bodies, and
    /// nothing shown or journaled may hold it.
    fn redact(&self, text: &str) -> String {
        match self.opts.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => text.replace(key, "[redacted]"),
            None => text.to_string(),
        }
    }

    fn try_once(&self, body: &Value) -> Result<Completion, Attempt> {
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.opts.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let resp = match req.send_string(&body.to_string()) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let after = r
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64);
                let detail: String = r
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                let why = format!("HTTP {code} {}", detail.trim());
                return if code == 429 || code == 408 || code >= 500 {
                    Err(Attempt::Retry { why, after })
                } else {
                    Err(Attempt::Fatal(format!("{why} from {}", self.url)))
                };
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind::{InvalidProxyUrl, InvalidUrl, UnknownScheme};
                let why = format!("transport: {t}");
                // A URL that cannot work will not start working on a retry.
                return if matches!(t.kind(), InvalidUrl | UnknownScheme | InvalidProxyUrl) {
                    Err(Attempt::Fatal(format!("{why} (check --endpoint)")))
                } else {
                    Err(Attempt::Retry { why, after: None })
                };
            }
        };
        if (300..400).contains(&resp.status()) {
            let to = resp.header("Location").unwrap_or("nowhere").to_string();
            return Err(Attempt::Fatal(format!(
                "HTTP {} redirect from {} to {to}: give the final URL as --endpoint",
                resp.status(),
                self.url
            )));
        }
        let mut raw = vec![];
        std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_reader(), MAX_ANSWER_BYTES + 1),
            &mut raw,
        )
        .map_err(|e| Attempt::Retry {
            why: format!("reading the answer: {e}"),
            after: None,
        })?;
        if raw.len() as u64 > MAX_ANSWER_BYTES {
            return Err(Attempt::Retry {
                why: format!("the answer is larger than {} KiB", MAX_ANSWER_BYTES >> 10),
                after: None,
            });
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        parse_completion(&text).map_err(|why| Attempt::Retry { why, after: None })
    }
}

/// Reads `choices[0].message.content` and `usage` from an answer's JSON.
pub fn parse_completion(text: &str) -> Result<Completion, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        let head: String = text.chars().take(80).collect();
        format!("malformed JSON answer ({e}): {head:?}")
    })?;
    let content = v
        .pointer("/choices/0/message/content")
        .ok_or_else(|| "answer has no choices[0].message.content".to_string())?;
    // Some servers send content as a list of parts; join their text.
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => return Err(format!("unexpected content type: {other}")),
    };
    let usage = |k: &str| {
        v.pointer(&format!("/usage/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Completion {
        text,
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_string_and_part_list_contents() {
        let a = r#"{"choices":[{"message":{"content":"A red house."}}],"usage":{"prompt_tokens":7,"completion_tokens":4}}"#;
        let c = parse_completion(a).unwrap();
        assert_eq!(c.text, "A red house.");
        assert_eq!((c.prompt_tokens, c.completion_tokens), (7, 4));
        let b = r#"{"choices":[{"message":{"content":[{"type":"text","text":"A "},{"type":"text","text":"tree."}]}}]}"#;
        assert_eq!(parse_completion(b).unwrap().text, "A tree.");
        assert!(parse_completion("{not json").is_err());
        assert!(parse_completion(r#"{"choices":[]}"#).is_err());
    }
}
