//! `ekphrasis serve`: a local web app over the exported models. One page (describe,
//! paint, one seed, browse) and a JSON API; the models load once into an inference
//! thread behind a bounded queue, and the HTTP side runs on a small async runtime.

pub mod api;
pub mod bench;
pub mod catalog;
pub mod worker;

use anyhow::{bail, Context, Result};
use api::{AppState, Limits};
use catalog::{Browse, Catalog};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Everything `serve` needs, from the command line or a benchmark.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub models: PathBuf,
    pub unified: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    pub queue: usize,
    pub limits: Limits,
}

/// A server bound to its address, models loaded, ready to run.
pub struct Server {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    runtime: tokio::runtime::Runtime,
}

/// Loads the models and binds the address; fails before binding when nothing can be
/// served or an option is out of range.
pub fn bind(o: &ServeOptions, device: tch::Device) -> Result<Server> {
    if o.queue == 0 {
        bail!("--queue 0: give at least 1 place in the inference queue");
    }
    if o.limits.timeout.is_zero() {
        bail!("--timeout 0: give a positive number of seconds");
    }
    let catalog = Catalog::scan(&o.models, o.unified.as_deref())?;
    for s in &catalog.skipped {
        eprintln!("warning: {s}");
    }
    let browse = match &o.report {
        Some(r) => {
            let b = Browse::open(r)?;
            if b.is_none() {
                eprintln!(
                    "warning: {} has no examples.json (run `ekphrasis cycle` again to write it); the browse view is hidden",
                    r.display()
                );
            }
            b
        }
        None => None,
    };
    let views = catalog.views(browse.is_some());
    if !(views.describe || views.paint || views.one_seed || views.browse) {
        bail!(
            "{}: nothing to serve (no exported captioner or generator, no --unified run, no --report); run `make export` first",
            o.models.display()
        );
    }
    let worker = worker::spawn(&catalog, device, o.queue)?;
    let state = Arc::new(AppState {
        worker,
        views,
        skipped: catalog.skipped.clone(),
        browse,
        limits: o.limits.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let want = format!("{}:{}", o.host, o.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&want))
        .with_context(|| format!("binding {want}"))?;
    let addr = listener.local_addr()?;
    Ok(Server {
        addr,
        listener,
        app: api::router(state),
        runtime,
    })
}

impl Server {
    /// Serves until `stop` is set (Ctrl-C / SIGTERM set the process's interrupt flag);
    /// requests in flight are finished first.
    pub fn run_until(self, stop: &'static std::sync::atomic::AtomicBool) -> Result<()> {
        let Server {
            listener,
            app,
            runtime,
            ..
        } = self;
        runtime.block_on(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .await
                .context("serving HTTP")
        })
    }
}

/// `ekphrasis serve`: prints the address, serves until interrupted.
pub fn serve(o: &ServeOptions, device: tch::Device) -> Result<()> {
    crate::util::signals::stop_gracefully();
    let server = bind(o, device)?;
    if !server.addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, reachable from other machines; the server has no authentication",
            server.addr
        );
    }
    // The first line is what a script waits for (the tests read the port from it).
    println!("listening on http://{}", server.addr);
    server.run_until(&crate::util::signals::INTERRUPTED)?;
    eprintln!("server stopped");
    Ok(())
}
