//! The plugin socket: HTTP/1 with hyper, one call per request, bodies capped at
//! [`MAX_BODY`]. Every answer is JSON with the plugin content type; calls that talk to vswitchd
//! run on the blocking pool.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::driver::{Control, Driver};
use super::protocol;

/// The largest request body read.
pub const MAX_BODY: usize = 64 * 1024;

/// Binds the plugin socket at `path`, replacing a stale one, readable by root only.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Serves Docker's calls until the listener fails.
pub async fn serve<C: Control + 'static>(
    driver: Arc<Driver<C>>,
    listener: UnixListener,
) -> anyhow::Result<()> {
    let http = Arc::new(hyper::server::conn::http1::Builder::new());
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting on the plugin socket")?;
        let driver = Arc::clone(&driver);
        let http = Arc::clone(&http);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let driver = Arc::clone(&driver);
                async move { Ok::<_, Infallible>(answer(driver, request).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                warn!("plugin connection: {e}");
            }
        });
    }
}

async fn answer<C: Control + 'static>(
    driver: Arc<Driver<C>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let message =
                format!("{path}: unreadable request body (at most {MAX_BODY} bytes): {e}");
            return respond(StatusCode::BAD_REQUEST, &protocol::error_body(&message));
        }
    };
    let call = match protocol::parse(&path, &body) {
        Ok(call) => call,
        Err(e @ protocol::ProtocolError::UnknownPath(_)) => {
            return respond(StatusCode::NOT_FOUND, &protocol::error_body(&e.to_string()));
        }
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                &protocol::error_body(&e.to_string()),
            );
        }
    };
    let answered = tokio::task::spawn_blocking(move || driver.handle(call)).await;
    match answered {
        Ok(Ok(value)) => respond(StatusCode::OK, &value),
        Ok(Err(message)) => {
            info!(%path, "refused: {message}");
            respond(StatusCode::OK, &protocol::error_body(&message))
        }
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            &protocol::error_body(&format!("{path}: {e}")),
        ),
    }
}

fn respond(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    response
}
