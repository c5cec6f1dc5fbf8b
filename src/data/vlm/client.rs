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
    /// A failure retrying cannot fix (400, 401, 404, …).
    Fatal(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Exhausted { tries, last } => {
                write!(f, "gave up after {tries} tries; last failure: {last}")
            }
            CallError::Fatal(msg) => write!(f, "{msg}"),
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

impl ChatClient {
    pub fn new(opts: ClientOptions) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(opts.timeout).build();
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
                Ok(c) => return Ok(c),
                Err(Attempt::Fatal(msg)) => return Err(CallError::Fatal(msg)),
                Err(Attempt::Retry { why, after }) => {
                    last = why;
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
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        Err(CallError::Exhausted { tries, last })
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
                return Err(Attempt::Retry {
                    why: format!("transport: {t}"),
                    after: None,
                })
            }
        };
        let text = resp.into_string().map_err(|e| Attempt::Retry {
            why: format!("reading the answer: {e}"),
            after: None,
        })?;
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
