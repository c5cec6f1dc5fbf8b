//! The HTTP side of `ekphrasis serve`: the page, `/healthz` and the JSON API under
//! `/api/`. Handlers only check input and hand jobs to the inference worker; every error
//! is JSON with a message and a 4xx/5xx status, never a dropped connection.

use super::catalog::{Browse, Views};
use super::worker::{Answer, Busy, DecodeChoice, Done, Handle, Job};
use crate::models::captioner::decode::Strategy;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The page: one file, no external assets.
const PAGE: &str = include_str!("page.html");

/// Limits on what one request may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body (an uploaded image), bytes.
    pub body_bytes: usize,
    /// Longest paragraph to paint, characters.
    pub text_chars: usize,
    /// Most pictures per paint request.
    pub max_images: i64,
    /// Longest a request may take, queue and body included.
    pub timeout: Duration,
}

pub struct AppState {
    pub worker: Handle,
    pub views: Views,
    pub skipped: Vec<String>,
    pub browse: Option<Browse>,
    pub limits: Limits,
}

/// An error a client sees: a status and a message, as `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.limits.body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/api/models", get(healthz))
        .route("/api/caption", post(caption))
        .route("/api/draw", post(draw))
        .route("/api/generate", post(generate))
        .route("/api/browse", get(browse))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
        .with_state(state)
}

/// Every request, its body included, must finish within the timeout: a slow upload or a
/// long queue cannot hold a connection forever.
async fn deadline(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // A body declared larger than the limit is refused from its headers, unread.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.limits.body_bytes as u64) {
        return too_large(s.limits.body_bytes).into_response();
    }
    let t = s.limits.timeout;
    match tokio::time::timeout(t, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the request took longer than {:.0} s", t.as_secs_f64()),
        )
        .into_response(),
    }
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {} (see GET /healthz for what this server offers)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} {}: wrong method for this endpoint (GET /healthz lists the API)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn healthz(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "views": s.views,
        "skipped": s.skipped,
        "browse": s.browse.as_ref().map(|b| json!({
            "report": b.report.display().to_string(),
            "examples": b.examples.len(),
        })),
        "limits": {
            "body_bytes": s.limits.body_bytes,
            "text_chars": s.limits.text_chars,
            "max_images": s.limits.max_images,
            "timeout_s": s.limits.timeout.as_secs_f64(),
        },
    }))
}

fn png_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// Hands `job` to the worker and waits for it.
async fn submit(s: &AppState, job: Job) -> Result<(Answer, Value), ApiError> {
    let rx = s.worker.submit(job).map_err(|Busy| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (its queue is full); try again in a moment",
        )
    })?;
    let Done {
        answer,
        queued_ms,
        run_ms,
    } = rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the inference worker stopped",
        )
    })?;
    // Errors from the worker are about the input (an undecodable image, text the model
    // cannot read), so they are the client's to fix.
    let answer =
        answer.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    Ok((answer, json!({ "queued": queued_ms, "run": run_ms })))
}

/// The worker answered a job with another job's kind of answer (a bug, not the client's).
fn mismatched() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the inference worker gave an answer of the wrong kind",
    )
}

fn unavailable(view: &str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("the {view} view is off: {what}"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionQuery {
    strategy: Option<Strategy>,
    beam: Option<usize>,
    no_repeat_ngram: Option<usize>,
    #[serde(default = "yes")]
    reconstruct: bool,
    #[serde(default)]
    seed: i64,
}
fn yes() -> bool {
    true
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {limit} bytes"),
    )
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::new(e.status(), format!("reading the request body: {e}"))
    }
}

/// `POST /api/caption?strategy=greedy|beam&beam=3&no_repeat_ngram=3&reconstruct=true`,
/// the image file as the body → `{"caption", "words", "tokens", "reconstruction"}`.
async fn caption(
    State(s): State<Arc<AppState>>,
    q: Result<Query<CaptionQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    if !s.views.describe {
        return Err(unavailable(
            "describe",
            "no exported captioner under --models",
        ));
    }
    let Query(q) = q.map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))?;
    let body = body.map_err(|e| body_error(e, s.limits.body_bytes))?;
    if body.is_empty() {
        return Err(ApiError::bad(
            "the body is empty: send the image file as the request body",
        ));
    }
    if q.strategy == Some(Strategy::Sample) {
        return Err(ApiError::bad("strategy: greedy or beam"));
    }
    if let Some(b) = q.beam {
        if !(1..=8).contains(&b) {
            return Err(ApiError::bad(format!("beam {b}: give 1 to 8")));
        }
    }
    if let Some(n) = q.no_repeat_ngram {
        if n > 8 {
            return Err(ApiError::bad(format!(
                "no_repeat_ngram {n}: give 0 (off) to 8"
            )));
        }
    }
    let job = Job::Caption {
        image: body.to_vec(),
        decode: DecodeChoice {
            strategy: q.strategy,
            beam: q.beam,
            no_repeat_ngram: q.no_repeat_ngram,
        },
        reconstruct: q.reconstruct,
        seed: q.seed,
    };
    let (answer, ms) = submit(&s, job).await?;
    let Answer::Caption {
        caption,
        tokens,
        reconstruction,
    } = answer
    else {
        return Err(mismatched());
    };
    Ok(Json(json!({
        "words": caption.split_whitespace().count(),
        "caption": caption,
        "tokens": tokens,
        "reconstruction": reconstruction.as_deref().map(png_url),
        "ms": ms,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrawBody {
    text: String,
    #[serde(default = "four")]
    n: i64,
    #[serde(default)]
    seed: i64,
}
fn four() -> i64 {
    4
}

/// `POST /api/draw` `{"text": …, "n": 4, "seed": 0}` → `{"images": [PNG data URLs]}`.
async fn draw(
    State(s): State<Arc<AppState>>,
    body: Result<Json<DrawBody>, JsonRejection>,
) -> ApiResult {
    if !s.views.paint {
        return Err(unavailable("paint", "no exported generator under --models"));
    }
    let Json(b) = body.map_err(json_error)?;
    let chars = b.text.chars().count();
    if b.text.trim().is_empty() {
        return Err(ApiError::bad("text is empty: give a paragraph to paint"));
    }
    if chars > s.limits.text_chars {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "text has {chars} characters; at most {} are read",
                s.limits.text_chars
            ),
        ));
    }
    if !(1..=s.limits.max_images).contains(&b.n) {
        return Err(ApiError::bad(format!(
            "n {}: give 1 to {} pictures",
            b.n, s.limits.max_images
        )));
    }
    if b.seed < 0 {
        return Err(ApiError::bad(format!("seed {}: give 0 or more", b.seed)));
    }
    let (answer, ms) = submit(
        &s,
        Job::Draw {
            text: b.text,
            n: b.n,
            seed: b.seed,
        },
    )
    .await?;
    let Answer::Images(pngs) = answer else {
        return Err(mismatched());
    };
    Ok(Json(json!({
        "images": pngs.iter().map(|p| png_url(p)).collect::<Vec<_>>(),
        "n": b.n,
        "seed": b.seed,
        "ms": ms,
    })))
}

fn json_error(e: JsonRejection) -> ApiError {
    let status = match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("body: {}", e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    #[serde(default)]
    seed: u64,
}

/// `POST /api/generate` `{"seed": 42}` → `{"image", "caption"}` from the unified generator.
async fn generate(
    State(s): State<Arc<AppState>>,
    body: Result<Json<GenerateBody>, JsonRejection>,
) -> ApiResult {
    if !s.views.one_seed {
        return Err(unavailable(
            "one-seed",
            "no unified-generator run was given (--unified RUN)",
        ));
    }
    let Json(b) = body.map_err(json_error)?;
    let (answer, ms) = submit(&s, Job::Generate { seed: b.seed }).await?;
    let Answer::Generated { image, caption } = answer else {
        return Err(mismatched());
    };
    Ok(Json(json!({
        "seed": b.seed,
        "image": png_url(&image),
        "words": caption.split_whitespace().count(),
        "caption": caption,
        "ms": ms,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrowseQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    offset: usize,
    #[serde(default = "page_size")]
    limit: usize,
}
fn page_size() -> usize {
    12
}

/// `GET /api/browse?q=red+house&offset=0&limit=12` → the cycle report's examples whose
/// captions hold every word.
async fn browse(
    State(s): State<Arc<AppState>>,
    q: Result<Query<BrowseQuery>, QueryRejection>,
) -> ApiResult {
    let Some(b) = &s.browse else {
        return Err(unavailable(
            "browse",
            "no cycle report with examples.json was given (--report reports/NAME)",
        ));
    };
    let Query(q) = q.map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))?;
    if q.limit == 0 || q.limit > 100 {
        return Err(ApiError::bad(format!("limit {}: give 1 to 100", q.limit)));
    }
    let (total, page) = b.search(&q.q, q.offset, q.limit);
    Ok(Json(json!({
        "total": total,
        "offset": q.offset,
        "examples": page,
    })))
}
